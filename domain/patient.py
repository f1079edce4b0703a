"""The Patient aggregate: one identity (id + assigning authority) as the HIS registers it."""

from __future__ import annotations

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.commands import PatientDemographics
from domain.provenance import Provenance

PATIENT_NAMESPACE = uuid5(NAMESPACE_URL, "urn:radflow:patient")


def patient_id(key: str) -> UUID:
    return uuid5(PATIENT_NAMESPACE, key)


class Patient(Aggregate):
    @staticmethod
    def create_id(key: str, **_: Any) -> UUID:
        return patient_id(key)

    @event("PatientRegistered")
    def __init__(
        self,
        key: str,
        demographics: dict[str, Any],
        patient_class: str,
        provenance: dict[str, Any],
    ) -> None:
        self.key = key
        self.demographics = demographics
        self.patient_class = patient_class
        self.applied: list[str] = [Provenance.from_dict(provenance).dedupe_key]

    @classmethod
    def register(
        cls, demographics: PatientDemographics, patient_class: str, provenance: Provenance
    ) -> Patient:
        return cls(
            key=demographics.key,
            demographics=_as_dict(demographics),
            patient_class=patient_class,
            provenance=provenance.as_dict(),
        )

    def has_applied(self, provenance: Provenance) -> bool:
        return provenance.dedupe_key in self.applied

    def update(self, demographics: PatientDemographics, patient_class: str, provenance: Provenance) -> None:
        """Record what changed; empty HL7 fields mean 'not sent', so they keep the old value."""
        changes = {k: v for k, v in _as_dict(demographics).items() if v and self.demographics.get(k) != v}
        if patient_class and patient_class != self.patient_class:
            changes["patient_class"] = patient_class
        self._updated(changes=changes, provenance=provenance.as_dict())

    @event("PatientUpdated")
    def _updated(self, changes: dict[str, Any], provenance: dict[str, Any]) -> None:
        changes = dict(changes)
        self.patient_class = changes.pop("patient_class", self.patient_class)
        self.demographics = {**self.demographics, **changes}
        self.applied.append(Provenance.from_dict(provenance).dedupe_key)


def _as_dict(demographics: PatientDemographics) -> dict[str, Any]:
    return {
        "id": demographics.id,
        "issuer": demographics.issuer,
        "name": demographics.name,
        "birth_date": demographics.birth_date,
        "sex": demographics.sex,
    }
