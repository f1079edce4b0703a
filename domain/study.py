"""The Study aggregate: the PACS side of an exam, the DICOM instances stored under one Study
Instance UID, and which exam (accession) they were linked to and why.

Instances arrive in batches (one per association and study, see interfaces/dicom/storage), so
a study's history holds one event per batch, never one per instance.
"""

from __future__ import annotations

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.commands import StoreInstances
from domain.errors import StudyAlreadyLinked
from domain.provenance import Provenance

STUDY_AGGREGATE_NAMESPACE = uuid5(NAMESPACE_URL, "urn:radflow:pacs-study")


def study_id(study_instance_uid: str) -> UUID:
    return uuid5(STUDY_AGGREGATE_NAMESPACE, study_instance_uid)


class Study(Aggregate):
    @staticmethod
    def create_id(study_instance_uid: str, **_: Any) -> UUID:
        return study_id(study_instance_uid)

    @event("StudyFirstStored")
    def __init__(self, study_instance_uid: str, study: dict[str, Any], provenance: dict[str, Any]) -> None:
        self.study_instance_uid = study_instance_uid
        self.study = study
        self.accession = ""  # the exam it is linked to, once it is
        self.instances: dict[str, dict[str, str]] = {}  # SOP Instance UID -> series, class
        self.applied: list[str] = []

    @classmethod
    def first_stored(cls, command: StoreInstances) -> Study:
        return cls(
            study_instance_uid=command.study_instance_uid,
            study=dict(command.study),
            provenance=command.provenance.as_dict(),
        )

    def has_applied(self, provenance: Provenance) -> bool:
        return provenance.dedupe_key in self.applied

    def store(self, command: StoreInstances) -> None:
        """Record one batch; instances already held are kept under the newest copy's details
        (the storage SCP decided the duplicate policy before the file was written)."""
        self._instances_stored(
            study_instance_uid=self.study_instance_uid,
            study=dict(command.study),
            series=[dict(s) for s in command.series],
            calling_ae=command.calling_ae,
            provenance=command.provenance.as_dict(),
        )

    def link(self, accession: str, reason: str, provenance: Provenance) -> None:
        """Attach to an exam; relinking elsewhere is refused (unlinking is a separate, explicit
        correction that radflow does not offer yet)."""
        if self.accession and self.accession != accession:
            raise StudyAlreadyLinked(self.study_instance_uid, self.accession)
        if self.accession == accession:
            return
        self._linked(
            study_instance_uid=self.study_instance_uid,
            accession=accession,
            reason=reason,
            provenance=provenance.as_dict(),
        )

    def change_patient(self, patient: dict[str, Any], prior_key: str, reason: str, provenance: Provenance) -> bool:
        """Move the study to another patient identity (a merge); False when already there.
        The files keep the Patient ID they were sent with; the index and the history say who."""
        if self.study.get("patient_id") == patient.get("id") and self.study.get("patient_issuer", "") == patient.get(
            "issuer", ""
        ):
            return False
        self._patient_changed(
            study_instance_uid=self.study_instance_uid,
            prior_key=prior_key,
            patient=patient,
            reason=reason,
            provenance=provenance.as_dict(),
        )
        return True

    def series_instances(self) -> dict[str, set[str]]:
        held: dict[str, set[str]] = {}
        for sop_instance_uid, instance in self.instances.items():
            held.setdefault(instance["series_instance_uid"], set()).add(sop_instance_uid)
        return held

    @event("InstancesStored")
    def _instances_stored(
        self,
        study_instance_uid: str,
        study: dict[str, Any],
        series: list[dict[str, Any]],
        calling_ae: str,
        provenance: dict[str, Any],
    ) -> None:
        self.study = {**self.study, **{k: v for k, v in study.items() if v}}
        for item in series:
            for instance in item["instances"]:
                self.instances[instance["sop_instance_uid"]] = {
                    "series_instance_uid": item["series_instance_uid"],
                    "sop_class_uid": instance["sop_class_uid"],
                }
        self.applied.append(Provenance.from_dict(provenance).dedupe_key)

    @event("StudyLinkedToExam")
    def _linked(
        self, study_instance_uid: str, accession: str, reason: str, provenance: dict[str, Any]
    ) -> None:
        self.accession = accession
        self.applied.append(Provenance.from_dict(provenance).dedupe_key)

    @event("StudyPatientChanged")
    def _patient_changed(
        self,
        study_instance_uid: str,
        prior_key: str,
        patient: dict[str, Any],
        reason: str,
        provenance: dict[str, Any],
    ) -> None:
        self.study = {
            **self.study,
            "patient_id": patient.get("id", ""),
            "patient_issuer": patient.get("issuer", ""),
            **({"patient_name": patient["name"]} if patient.get("name") else {}),
        }
        self.applied.append(Provenance.from_dict(provenance).dedupe_key)
