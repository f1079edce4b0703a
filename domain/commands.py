"""Commands: what the outside world asks of an aggregate, already translated from the wire.

They travel through the message log and Temporal as plain dicts (`as_dict` / `command_from_dict`),
so every field is a JSON scalar.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from domain.provenance import Provenance


@dataclass(frozen=True)
class PatientDemographics:
    id: str
    issuer: str = ""
    name: str = ""  # HL7 XPN as family^given^middle; never logged
    birth_date: str = ""
    sex: str = ""

    @property
    def key(self) -> str:
        return f"{self.issuer}|{self.id}"


@dataclass(frozen=True)
class Command:
    kind: ClassVar[str]
    provenance: Provenance

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind
        return data


@dataclass(frozen=True)
class PlaceOrder(Command):
    kind: ClassVar[str] = "place_order"
    accession: str
    patient: PatientDemographics
    placer_order_number: str = ""
    filler_order_number: str = ""
    requested_procedure_id: str = ""
    study_instance_uid: str = ""
    priority: str = "ROUTINE"
    procedure_code: str = ""
    procedure_text: str = ""
    modality: str = ""
    scheduled_at: str = ""
    referring_physician: str = ""
    reason: str = ""
    referring_service: str = ""  # PV1-10 hospital service of the visit (reading worklist filter)


@dataclass(frozen=True)
class CancelOrder(Command):
    kind: ClassVar[str] = "cancel_order"
    accession: str
    reason: str = ""


@dataclass(frozen=True)
class ReferencedInstance:
    """One image or other composite instance a modality says it produced (MPPS PS3.4 F.7)."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class PerformedSeries:
    """One item of the MPPS Performed Series Sequence: what study completeness is checked against."""

    series_instance_uid: str
    description: str = ""
    protocol_name: str = ""
    retrieve_ae_title: str = ""
    instances: tuple[ReferencedInstance, ...] = ()


@dataclass(frozen=True)
class StartProcedure(Command):
    """MPPS N-CREATE (IN PROGRESS): the modality began the requested procedure."""

    kind: ClassVar[str] = "start_procedure"
    accession: str
    mpps_uid: str
    performed_station_ae: str = ""
    procedure_step_id: str = ""
    started_at: str = ""  # ISO 8601 from Performed Procedure Step Start Date/Time
    modality: str = ""
    study_instance_uid: str = ""


@dataclass(frozen=True)
class CompleteProcedure(Command):
    """MPPS N-SET COMPLETED: the procedure ended and these series were acquired."""

    kind: ClassVar[str] = "complete_procedure"
    accession: str
    mpps_uid: str
    ended_at: str = ""
    series: tuple[PerformedSeries, ...] = ()


@dataclass(frozen=True)
class DiscontinueProcedure(Command):
    """MPPS N-SET DISCONTINUED: the procedure stopped early; what was acquired is kept."""

    kind: ClassVar[str] = "discontinue_procedure"
    accession: str
    mpps_uid: str
    ended_at: str = ""
    series: tuple[PerformedSeries, ...] = ()
    reason: str = ""  # Discontinuation Reason Code Sequence, as "code^meaning^scheme"


@dataclass(frozen=True)
class ForceExamState(Command):
    """Operations move an exam by hand, with a reason, where a documented forced move allows
    it (domain/lifecycle.py FORCED_TRANSITIONS): a compensating event, not an edit."""

    kind: ClassVar[str] = "force_exam_state"
    accession: str
    target: str
    reason: str


@dataclass(frozen=True)
class RegisterPatient(Command):
    kind: ClassVar[str] = "register_patient"
    patient: PatientDemographics
    patient_class: str = ""


@dataclass(frozen=True)
class UpdatePatient(Command):
    kind: ClassVar[str] = "update_patient"
    patient: PatientDemographics
    patient_class: str = ""


@dataclass(frozen=True)
class StoreInstances(Command):
    """One batch of stored DICOM instances of one study (one association's worth, or what a
    long association held when it was flushed). `accession` names the exam the storage SCP
    matched the study to; empty when the study waits for reconciliation.

    `study`: patient and study attributes (patient_id, patient_name, patient_birth_date,
    patient_sex, accession_number, study_id, study_date, study_time, study_description,
    referring_physician). `series`: one dict per series (series_instance_uid, modality,
    series_number, series_description, body_part, instances: [{sop_instance_uid,
    sop_class_uid, instance_number, transfer_syntax, size, path}]).
    """

    kind: ClassVar[str] = "store_instances"
    study_instance_uid: str
    study: dict[str, str]
    series: tuple[dict[str, Any], ...]
    accession: str = ""
    calling_ae: str = ""


@dataclass(frozen=True)
class LinkStudy(Command):
    """A person (or the storage SCP's accession match) attaches a study to an exam."""

    kind: ClassVar[str] = "link_study"
    study_instance_uid: str
    accession: str
    reason: str


@dataclass(frozen=True)
class CheckImages(Command):
    """The exam's wait for the instances its MPPS referenced ran out: record what is missing."""

    kind: ClassVar[str] = "check_images"
    accession: str


@dataclass(frozen=True)
class ModifyOrder(Command):
    """ORM/OMI order control XO: the placer changed an order it sent. `changes` holds only the
    PlaceOrder fields the message carried (field name -> new value), so absent fields keep
    their value."""

    kind: ClassVar[str] = "modify_order"
    accession: str
    changes: dict[str, str]


@dataclass(frozen=True)
class ScheduleExam(Command):
    """An appointment was booked, moved or changed (SIU S12/S13/S14, ORM SC with ORC-5 SC)."""

    kind: ClassVar[str] = "schedule_exam"
    accession: str
    scheduled_at: str  # ISO 8601
    appointment_id: str = ""  # SCH-1 / SCH-2
    location: str = ""  # room or resource (AIL / AIG)
    duration_min: int = 0


@dataclass(frozen=True)
class CancelAppointment(Command):
    """SIU S15: the appointment is cancelled, the order stands (the exam is ordered again)."""

    kind: ClassVar[str] = "cancel_appointment"
    accession: str
    appointment_id: str = ""
    reason: str = ""


@dataclass(frozen=True)
class RecordReport(Command):
    """Inbound ORU^R01 from an external reporting system: the exam's report, as sent."""

    kind: ClassVar[str] = "record_report"
    accession: str
    text: str
    result_status: str = "F"  # OBR-25: P preliminary, F final, C corrected
    author: str = ""  # OBR-32 principal result interpreter
    reported_at: str = ""  # ISO 8601 (OBR-7/OBR-22 or OBX-14)


@dataclass(frozen=True)
class DischargePatient(Command):
    """ADT^A03: the visit ended."""

    kind: ClassVar[str] = "discharge_patient"
    patient: PatientDemographics
    discharged_at: str = ""


@dataclass(frozen=True)
class CancelAdmission(Command):
    """ADT^A11: the admission (or registration) was entered in error."""

    kind: ClassVar[str] = "cancel_admission"
    patient: PatientDemographics


@dataclass(frozen=True)
class MergePatients(Command):
    """ADT^A40 (merge) or A47 (identifier change): `prior` (MRG-1) becomes `patient` (PID-3).
    Routed to the survivor; the message log fans it out to every exam and study of the prior
    patient as ChangeExamPatient / ChangeStudyPatient."""

    kind: ClassVar[str] = "merge_patients"
    patient: PatientDemographics  # the survivor
    prior: PatientDemographics
    how: str = "merge"  # merge | identifier_change


@dataclass(frozen=True)
class ChangeExamPatient(Command):
    """One exam of a merged patient moves to the survivor."""

    kind: ClassVar[str] = "change_exam_patient"
    accession: str
    patient: PatientDemographics
    prior_key: str
    reason: str = ""


@dataclass(frozen=True)
class ChangeStudyPatient(Command):
    """One stored study of a merged patient moves to the survivor."""

    kind: ClassVar[str] = "change_study_patient"
    study_instance_uid: str
    patient: PatientDemographics
    prior_key: str
    reason: str = ""


@dataclass(frozen=True)
class ClaimReading(Command):
    """A radiologist takes the exam to read; the claim expires unless renewed."""

    kind: ClassVar[str] = "claim_reading"
    accession: str
    radiologist: str


@dataclass(frozen=True)
class ReleaseReading(Command):
    kind: ClassVar[str] = "release_reading"
    accession: str
    radiologist: str
    reason: str = ""


@dataclass(frozen=True)
class SaveReportDraft(Command):
    """Autosave of the report being written (section name -> text)."""

    kind: ClassVar[str] = "save_report_draft"
    accession: str
    author: str
    sections: dict[str, str]


@dataclass(frozen=True)
class IssueReport(Command):
    """A revision leaves the radiologist's hands: preliminary, final (signed), addendum or
    correction. `critical` starts the critical-result notification chain."""

    kind: ClassVar[str] = "issue_report"
    accession: str
    author: str
    report_kind: str  # preliminary | final | addendum | correction
    sections: dict[str, str]
    critical: bool = False


@dataclass(frozen=True)
class AcknowledgeCriticalResult(Command):
    kind: ClassVar[str] = "acknowledge_critical_result"
    accession: str
    by: str
    note: str = ""


@dataclass(frozen=True)
class CheckCriticalResult(Command):
    """Timer: the contact at `level` did not acknowledge in time."""

    kind: ClassVar[str] = "check_critical_result"
    accession: str
    level: int


@dataclass(frozen=True)
class CheckTurnaround(Command):
    """Timer: the exam's turnaround target (completed -> final) ran out."""

    kind: ClassVar[str] = "check_turnaround"
    accession: str


READING_COMMANDS = (
    ClaimReading,
    ReleaseReading,
    SaveReportDraft,
    IssueReport,
    AcknowledgeCriticalResult,
    CheckCriticalResult,
    CheckTurnaround,
)
PROCEDURE_COMMANDS = (StartProcedure, CompleteProcedure, DiscontinueProcedure)
COMMANDS: dict[str, type[Command]] = {
    c.kind: c
    for c in (
        PlaceOrder,
        CancelOrder,
        ForceExamState,
        RegisterPatient,
        UpdatePatient,
        *PROCEDURE_COMMANDS,
        StoreInstances,
        LinkStudy,
        CheckImages,
        ModifyOrder,
        ScheduleExam,
        CancelAppointment,
        RecordReport,
        DischargePatient,
        CancelAdmission,
        MergePatients,
        ChangeExamPatient,
        ChangeStudyPatient,
        *READING_COMMANDS,
    )
}
EXAM_COMMANDS = frozenset(
    {
        PlaceOrder.kind,
        CancelOrder.kind,
        ForceExamState.kind,
        *(c.kind for c in PROCEDURE_COMMANDS),
        LinkStudy.kind,
        CheckImages.kind,
        ModifyOrder.kind,
        ScheduleExam.kind,
        CancelAppointment.kind,
        RecordReport.kind,
        ChangeExamPatient.kind,
    }
)
# commands that name an existing exam by accession: refused at once (AE) when no order for it
# was ever accepted
EXAM_REFERENCES = frozenset(EXAM_COMMANDS - {PlaceOrder.kind, CheckImages.kind, LinkStudy.kind})


def command_from_dict(data: dict[str, Any]) -> Command:
    cls = COMMANDS[data["kind"]]
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.name == "provenance":
            value = Provenance.from_dict(value)
        elif f.name in ("patient", "prior"):
            value = PatientDemographics(**value)
        elif f.name in ("changes", "sections"):
            value = {str(k): str(v) for k, v in dict(value).items()}
        elif f.name == "series" and cls is not StoreInstances:
            value = series_from_dicts(value)
        elif f.name == "series":
            value = tuple(value)
        values[f.name] = value
    return cls(**values)


def series_from_dicts(items: list[dict[str, Any]] | tuple[Any, ...]) -> tuple[PerformedSeries, ...]:
    """Series as they come back from JSON (lists of dicts) or as stored in an event."""
    return tuple(
        PerformedSeries(
            **{
                **item,
                "instances": tuple(ReferencedInstance(**i) for i in item.get("instances", ())),
            }
        )
        for item in items
    )


def series_as_dicts(series: Sequence[PerformedSeries]) -> list[dict[str, Any]]:
    """Series as JSON-shaped lists and dicts, the form events and the wire carry them in."""
    return [{**asdict(s), "instances": [asdict(i) for i in s.instances]} for s in series]


def workflow_id_for(command: Command) -> str:
    """One workflow per exam (`exam-<accession>`) and one per patient identity."""
    if isinstance(
        command,
        (
            PlaceOrder,
            CancelOrder,
            ForceExamState,
            *PROCEDURE_COMMANDS,
            LinkStudy,
            CheckImages,
            ModifyOrder,
            ScheduleExam,
            CancelAppointment,
            RecordReport,
            ChangeExamPatient,
            *READING_COMMANDS,
        ),
    ):
        return f"exam-{command.accession}"
    if isinstance(command, ChangeStudyPatient):
        return f"study-{command.study_instance_uid}"
    if isinstance(command, StoreInstances):
        # a matched study joins its exam's queue (ordered with the MPPS); an unmatched one
        # waits in a workflow of its own until a person links it
        return f"exam-{command.accession}" if command.accession else f"study-{command.study_instance_uid}"
    if isinstance(
        command, (RegisterPatient, UpdatePatient, DischargePatient, CancelAdmission, MergePatients)
    ):
        return f"patient-{command.patient.key}"
    raise TypeError(f"no workflow for {type(command).__name__}")
