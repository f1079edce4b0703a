"""The Patient aggregate: one identity (id + assigning authority) as the HIS registers it."""

from __future__ import annotations

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.commands import PatientDemographics
from domain.errors import PatientMergedAway
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

    merged_into = ""  # the survivor's key, once this identity was merged away
    merged: tuple[str, ...] = ()  # the prior identities merged into this one

    def has_applied(self, provenance: Provenance) -> bool:
        return provenance.dedupe_key in self.applied

    def _check_live(self) -> None:
        if self.merged_into:
            raise PatientMergedAway(self.key, self.merged_into)

    def discharge(self, discharged_at: str, provenance: Provenance) -> None:
        self._check_live()
        self._discharged(discharged_at=discharged_at, provenance=provenance.as_dict())

    def cancel_admission(self, provenance: Provenance) -> None:
        self._check_live()
        self._admission_cancelled(provenance=provenance.as_dict())

    def absorb(self, prior: Patient | None, prior_key: str, how: str, provenance: Provenance) -> bool:
        """Merge `prior` into this patient (A40) or take over its identifier (A47). False when
        it is already merged here (a repeated A40); refused when merged into someone else."""
        self._check_live()
        if prior_key == self.key:
            raise PatientMergedAway(prior_key, self.key)
        if prior is not None and prior.merged_into:
            if prior.merged_into == self.key:
                return False
            raise PatientMergedAway(prior_key, prior.merged_into)
        if prior is None and prior_key in self.merged:
            return False
        self._merged(prior_key=prior_key, how=how, provenance=provenance.as_dict())
        if prior is not None:
            prior._merged_into(survivor_key=self.key, how=how, provenance=provenance.as_dict())
        return True

    def update(self, demographics: PatientDemographics, patient_class: str, provenance: Provenance) -> None:
        """Record what changed; empty HL7 fields mean 'not sent', so they keep the old value."""
        self._check_live()
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


    @event("PatientDischarged")
    def _discharged(self, discharged_at: str, provenance: dict[str, Any]) -> None:
        self.patient_class = ""
        self.applied.append(Provenance.from_dict(provenance).dedupe_key)

    @event("AdmissionCancelled")
    def _admission_cancelled(self, provenance: dict[str, Any]) -> None:
        self.patient_class = ""
        self.applied.append(Provenance.from_dict(provenance).dedupe_key)

    @event("PatientsMerged")
    def _merged(self, prior_key: str, how: str, provenance: dict[str, Any]) -> None:
        self.merged = (*self.merged, prior_key)
        self.applied.append(Provenance.from_dict(provenance).dedupe_key)

    @event("PatientMergedInto")
    def _merged_into(self, survivor_key: str, how: str, provenance: dict[str, Any]) -> None:
        self.merged_into = survivor_key
        self.applied.append(Provenance.from_dict(provenance).dedupe_key)


def _as_dict(demographics: PatientDemographics) -> dict[str, Any]:
    return {
        "id": demographics.id,
        "issuer": demographics.issuer,
        "name": demographics.name,
        "birth_date": demographics.birth_date,
        "sex": demographics.sex,
    }
