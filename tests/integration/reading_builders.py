"""A department for the reading worklist tests: orders, procedures, images, merges and the
radiologist's actions applied the way the worker applies them (CommandActivities over the real
Exam, Report and Study aggregates, saved to a real event store)."""

from __future__ import annotations

import itertools
import zlib
from typing import Any

from activities.apply_command import CommandActivities
from adapters.event_store import EventStore
from adapters.reporting_config import ReportingRules
from domain.commands import (
    AcknowledgeCriticalResult,
    ChangeExamPatient,
    CheckCriticalResult,
    CheckTurnaround,
    ClaimReading,
    Command,
    CompleteProcedure,
    DiscontinueProcedure,
    IssueReport,
    ModifyOrder,
    PatientDemographics,
    PlaceOrder,
    RecordReport,
    ReleaseReading,
    SaveReportDraft,
    StartProcedure,
    StoreInstances,
    UpdatePatient,
)
from domain.provenance import Provenance, Source

DAY = "2024-03-15"


def mpps_uid(accession: str) -> str:
    return f"2.25.{zlib.crc32(accession.encode())}"


def at(clock: str) -> str:
    """A time of the test day, e.g. at("10:05") -> 2024-03-15T10:05:00+00:00."""
    return f"{DAY}T{clock}:00+00:00"


class Department:
    def __init__(self, store: EventStore, uid: str, rules: ReportingRules | None = None) -> None:
        self.uid = uid
        self.rules = rules or ReportingRules()
        self.activities = CommandActivities(store, None, reporting=self.rules)
        self._numbers = itertools.count(1)
        self.service = f"SVC{uid}"

    def _provenance(self, actor: str, kind: str, when: str) -> Provenance:
        number = next(self._numbers)
        return Provenance(
            actor=actor,
            source=Source(
                kind=kind,
                application=actor,
                control_id=f"{self.uid}-{number}",
                message_id=f"{kind}:{self.uid}:{number}",
            ),
            occurred_at=when,
        )

    def apply(self, command: Command) -> dict[str, Any]:
        outcome = self.activities.apply_command(command.as_dict())
        assert outcome["status"] == "applied", outcome
        return outcome

    def patient(self, name: str) -> PatientDemographics:
        return PatientDemographics(id=f"{name}{self.uid}", issuer="HOSP", name=f"{name}^PAT", sex="F")

    def order(
        self,
        accession: str,
        patient: PatientDemographics,
        *,
        priority: str = "ROUTINE",
        modality: str = "CT",
        code: str = "CTCHEST",
        text: str = "CT chest",
        service: str | None = None,
        when: str = "07:00",
    ) -> str:
        accession = f"{accession}{self.uid}"
        self.apply(
            PlaceOrder(
                provenance=self._provenance("HIS", "hl7", at(when)),
                accession=accession,
                patient=patient,
                priority=priority,
                procedure_code=code,
                procedure_text=text,
                modality=modality,
                referring_physician="WELBY^MARCUS",
                referring_service=self.service if service is None else service,
            )
        )
        return accession

    def perform(self, accession: str, completed: str, started: str = "") -> None:
        """The modality starts and completes the procedure (MPPS IN PROGRESS, COMPLETED)."""
        self.apply(
            StartProcedure(
                provenance=self._provenance("CT01", "dicom", at(started or completed)),
                accession=accession,
                mpps_uid=mpps_uid(accession),
            )
        )
        self.apply(
            CompleteProcedure(
                provenance=self._provenance("CT01", "dicom", at(completed)),
                accession=accession,
                mpps_uid=mpps_uid(accession),
            )
        )

    def discontinue(self, accession: str, when: str) -> None:
        mpps = mpps_uid(accession)
        self.apply(
            StartProcedure(
                provenance=self._provenance("CT01", "dicom", at(when)), accession=accession, mpps_uid=mpps
            )
        )
        self.apply(
            DiscontinueProcedure(
                provenance=self._provenance("CT01", "dicom", at(when)), accession=accession, mpps_uid=mpps
            )
        )

    def images(self, accession: str, body_part: str, when: str = "10:00", study_uid: str = "") -> str:
        """One stored series with BodyPartExamined, matched to the exam by its accession; with
        `study_uid` stored under that study and left unmatched (no accession)."""
        linked = not study_uid
        study_uid = study_uid or f"{mpps_uid(accession)}9"
        self.apply(
            StoreInstances(
                provenance=self._provenance("CT01", "dicom", at(when)),
                study_instance_uid=study_uid,
                study={"patient_id": "X", "accession_number": accession},
                series=(
                    {
                        "series_instance_uid": f"{study_uid}.1",
                        "modality": "CT",
                        "series_number": "1",
                        "body_part": body_part,
                        "instances": [
                            {
                                "sop_instance_uid": f"{study_uid}.1.1",
                                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                            }
                        ],
                    },
                ),
                accession=accession if linked else "",
            )
        )
        return study_uid

    def rename(self, patient: PatientDemographics, name: str, when: str) -> None:
        renamed = PatientDemographics(id=patient.id, issuer=patient.issuer, name=name, sex=patient.sex)
        self.apply(UpdatePatient(provenance=self._provenance("HIS", "hl7", at(when)), patient=renamed))

    def modify(self, accession: str, when: str, **changes: str) -> None:
        self.apply(
            ModifyOrder(
                provenance=self._provenance("HIS", "hl7", at(when)), accession=accession, changes=changes
            )
        )

    def merge(
        self, accession: str, survivor: PatientDemographics, prior: PatientDemographics, when: str
    ) -> None:
        self.apply(
            ChangeExamPatient(
                provenance=self._provenance("HIS", "hl7", at(when)),
                accession=accession,
                patient=survivor,
                prior_key=prior.key,
                reason="A40 merge",
            )
        )

    def external_report(self, accession: str, text: str, when: str, status: str = "F") -> None:
        self.apply(
            RecordReport(
                provenance=self._provenance("OLDRIS", "hl7", at(when)),
                accession=accession,
                text=text,
                result_status=status,
                author="OLD^READER",
                reported_at=at(when),
            )
        )

    # --- the radiologist --------------------------------------------------------------------

    def claim(self, accession: str, who: str, when: str) -> None:
        self.apply(
            ClaimReading(
                provenance=self._provenance(who, "api", at(when)), accession=accession, radiologist=who
            )
        )

    def release(self, accession: str, who: str, when: str) -> None:
        self.apply(
            ReleaseReading(
                provenance=self._provenance(who, "api", at(when)),
                accession=accession,
                radiologist=who,
                reason="lunch",
            )
        )

    def draft(self, accession: str, who: str, when: str, **sections: str) -> None:
        self.apply(
            SaveReportDraft(
                provenance=self._provenance(who, "api", at(when)),
                accession=accession,
                author=who,
                sections=sections,
            )
        )

    def issue(
        self, accession: str, kind: str, who: str, when: str, critical: bool = False, **sections: str
    ) -> None:
        self.apply(
            IssueReport(
                provenance=self._provenance(who, "api", at(when)),
                accession=accession,
                author=who,
                report_kind=kind,
                sections=sections,
                critical=critical,
            )
        )

    def check_turnaround(self, accession: str, when: str) -> None:
        self.apply(
            CheckTurnaround(provenance=self._provenance("timer", "system", at(when)), accession=accession)
        )

    def check_critical(self, accession: str, level: int, when: str) -> None:
        self.apply(
            CheckCriticalResult(
                provenance=self._provenance("timer", "system", at(when)), accession=accession, level=level
            )
        )

    def acknowledge(self, accession: str, who: str, when: str) -> None:
        self.apply(
            AcknowledgeCriticalResult(
                provenance=self._provenance(who, "api", at(when)),
                accession=accession,
                by=who,
                note="called back",
            )
        )
