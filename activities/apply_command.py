"""apply_command: load the aggregate, let the domain decide, append its events.

Idempotent: the aggregate remembers the message ids it has applied, and aggregate ids and
versions are deterministic, so a retry after a crash either finds the events already stored
or collides with them (and is then reloaded and found applied).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any, Protocol

from eventsourcing.persistence import IntegrityError
from temporalio import activity

from adapters.event_store import EventStore
from adapters.message_log import MessageLog
from adapters.reporting_config import ReportingRules
from domain.commands import (
    READING_COMMANDS,
    AcknowledgeCriticalResult,
    CancelAdmission,
    CancelAppointment,
    CancelOrder,
    ChangeExamPatient,
    ChangeStudyPatient,
    CheckCriticalResult,
    CheckImages,
    CheckTurnaround,
    ClaimReading,
    Command,
    CompleteProcedure,
    DischargePatient,
    DiscontinueProcedure,
    ForceExamState,
    IssueReport,
    LinkStudy,
    MergePatients,
    ModifyOrder,
    PlaceOrder,
    RecordReport,
    RegisterPatient,
    ReleaseReading,
    SaveReportDraft,
    ScheduleExam,
    StartProcedure,
    StoreInstances,
    UpdatePatient,
    command_from_dict,
)
from domain.errors import DomainError, ExamAlreadyOrdered, UnknownExam, UnknownStudy
from domain.exam import Exam, exam_id
from domain.patient import Patient, patient_id
from domain.provenance import Provenance
from domain.report import Report, current_text, report_id
from domain.study import Study, study_id

log = logging.getLogger("radflow.apply")

APPLIED, DUPLICATE, REFUSED = "applied", "duplicate", "refused"

ExamCommand = (
    PlaceOrder
    | CancelOrder
    | ForceExamState
    | StartProcedure
    | CompleteProcedure
    | DiscontinueProcedure
    | ModifyOrder
    | ScheduleExam
    | CancelAppointment
    | RecordReport
    | ChangeExamPatient
)
EXAM_COMMAND_TYPES = (
    PlaceOrder,
    CancelOrder,
    ForceExamState,
    StartProcedure,
    CompleteProcedure,
    DiscontinueProcedure,
    ModifyOrder,
    ScheduleExam,
    CancelAppointment,
    RecordReport,
    ChangeExamPatient,
)
PatientCommand = RegisterPatient | UpdatePatient | DischargePatient | CancelAdmission
ReadingCommand = (
    ClaimReading
    | ReleaseReading
    | SaveReportDraft
    | IssueReport
    | AcknowledgeCriticalResult
    | CheckCriticalResult
    | CheckTurnaround
)


class OutcomeLog(Protocol):
    """An inbound log that keeps what applying its rows did; each ignores ids not its own."""

    def record_outcome(
        self, message_id: str, status: str, reason: str, events: Sequence[dict[str, Any]] = ()
    ) -> None: ...


class CommandActivities:
    def __init__(
        self,
        store: EventStore,
        message_log: MessageLog | None,
        on_saved: Callable[[], None] = lambda: None,
        other_logs: Sequence[OutcomeLog] = (),
        images_timeout_s: float = 900.0,
        reporting: ReportingRules | None = None,
    ) -> None:
        self._images_timeout_s = images_timeout_s
        self._rules = reporting or ReportingRules()
        self._store = store
        self._logs: list[OutcomeLog] = [*([message_log] if message_log is not None else []), *other_logs]
        self._on_saved = on_saved
        self._recorded: list[dict[str, Any]] = []  # the events the current command caused

    def _save(self, *aggregates: Any) -> None:
        """Save in one transaction and remember the events, so that the inbound record can
        link to what it caused (and each event already links back by its provenance)."""
        for recording in self._store.save(*aggregates):
            event = recording.domain_event
            self._recorded.append(
                {
                    "aggregate_id": str(event.originator_id),
                    "version": event.originator_version,
                    "type": type(event).__qualname__.rsplit(".", 1)[-1],
                }
            )

    @activity.defn(name="apply_command")
    def apply_command(self, data: dict[str, Any]) -> dict[str, Any]:
        command = command_from_dict(data)
        for attempt in range(3):
            self._recorded = []
            try:
                outcome = self._apply(command)
                break
            except IntegrityError:  # a concurrent or earlier attempt stored this version
                if attempt == 2:
                    raise
        for outcome_log in self._logs:
            outcome_log.record_outcome(
                command.provenance.source.message_id,
                outcome["status"],
                outcome.get("reason", ""),
                self._recorded,
            )
        if outcome["status"] == REFUSED:
            log.warning(
                "command refused",
                extra={
                    "kind": command.kind,
                    "message_id": command.provenance.source.message_id,
                    "reason": outcome["reason"],
                },
            )
        return outcome

    def _apply(self, command: Command) -> dict[str, Any]:
        if isinstance(command, EXAM_COMMAND_TYPES):
            return self._apply_to_exam(command)
        if isinstance(command, (RegisterPatient, UpdatePatient, DischargePatient, CancelAdmission)):
            return self._apply_to_patient(command)
        if isinstance(command, MergePatients):
            return self._merge_patients(command)
        if isinstance(command, ChangeStudyPatient):
            return self._change_study_patient(command)
        if isinstance(command, StoreInstances):
            return self._store_instances(command)
        if isinstance(command, LinkStudy):
            return self._link_study(command)
        if isinstance(command, CheckImages):
            return self._check_images(command)
        if isinstance(command, READING_COMMANDS):
            return self._apply_reading(command)
        raise TypeError(f"unknown command {type(command).__name__}")

    def _apply_to_exam(self, command: ExamCommand) -> dict[str, Any]:
        exam: Exam | None = self._store.get_or_none(exam_id(command.accession))
        if exam is not None and exam.has_applied(command.provenance):
            return {"status": DUPLICATE, "state": exam.state.value}
        try:
            if isinstance(command, PlaceOrder):
                if exam is not None:
                    raise ExamAlreadyOrdered(command.accession)
                exam = Exam.place(command)
            else:
                if exam is None:
                    raise UnknownExam(command.accession)
                if _perform(exam, command) is False:
                    return {"status": APPLIED, "state": exam.state.value, "reason": "nothing changed"}
        except DomainError as refusal:
            state = exam.state.value if exam is not None else None
            return {"status": REFUSED, "state": state, "reason": str(refusal)}
        if isinstance(command, (CompleteProcedure, DiscontinueProcedure)):
            # the images may have come before the modality said which it made
            exam.check_images(self._held(exam), command.provenance, deadline_passed=False)
        self._save(exam)
        self._on_saved()
        return self._exam_outcome(exam)

    # --- images -------------------------------------------------------------------------------

    def _exam_outcome(self, exam: Exam, status: str = APPLIED, report: Report | None = None) -> dict[str, Any]:
        """What the exam's workflow keeps: the state, the timers it must run (images awaited,
        the report's turnaround target, a critical result's acknowledgement) and the reading
        summary its update validator answers from."""
        outcome: dict[str, Any] = {"status": status, "state": exam.state.value}
        if exam.awaits_images:
            # the workflow starts its timer from this; the check comes back as CheckImages
            outcome["awaiting_images_s"] = self._images_timeout_s
        if report is None and exam.state.value in ("completed", "reported"):
            report = self._store.get_or_none(report_id(exam.accession))
        reading = report.summary(exam.state.value) if report is not None else {"exam_state": exam.state.value}
        outcome["reading"] = reading
        outcome["timers"] = {
            "turnaround": exam.turnaround_due(self._rules.turnaround_for(str(exam.order.get("priority", "")))),
            "critical": reading.get("critical_due_at", ""),
        }
        return outcome

    def _held(self, exam: Exam, *extra: Study) -> dict[str, set[str]]:
        held: dict[str, set[str]] = {}
        studies = {s.study_instance_uid: s for s in extra}
        for uid in exam.studies:
            if uid not in studies:
                loaded: Study | None = self._store.get_or_none(study_id(uid))
                if loaded is not None:
                    studies[uid] = loaded
        for study in studies.values():
            for series, sops in study.series_instances().items():
                held.setdefault(series, set()).update(sops)
        return held

    def _store_instances(self, command: StoreInstances) -> dict[str, Any]:
        study: Study | None = self._store.get_or_none(study_id(command.study_instance_uid))
        if study is not None and study.has_applied(command.provenance):
            return {"status": DUPLICATE, "state": "stored"}
        if study is None:
            study = Study.first_stored(command)
        study.store(command)
        if not command.accession:  # waits in its own workflow for reconciliation
            self._save(study)
            self._on_saved()
            return {"status": APPLIED, "state": "unlinked" if not study.accession else "linked"}
        exam: Exam | None = self._store.get_or_none(exam_id(command.accession))
        if exam is None:
            # matched against the HL7 log, yet no exam: keep the images, let a person decide
            self._save(study)
            self._on_saved()
            return {"status": REFUSED, "state": None, "reason": str(UnknownExam(command.accession))}
        try:
            study.link(command.accession, "accession number matched the order", command.provenance)
        except DomainError as refusal:
            self._save(study)
            self._on_saved()
            return {"status": REFUSED, "state": exam.state.value, "reason": str(refusal)}
        return self._attach(exam, study, command)

    def _attach(self, exam: Exam, study: Study, command: StoreInstances | LinkStudy) -> dict[str, Any]:
        counts = {series: len(sops) for series, sops in study.series_instances().items()}
        exam.record_images(study.study_instance_uid, counts, command.provenance)
        exam.check_images(self._held(exam, study), command.provenance, deadline_passed=False)
        self._save(exam, study)  # one transaction: both or neither
        self._on_saved()
        return self._exam_outcome(exam)

    def _link_study(self, command: LinkStudy) -> dict[str, Any]:
        exam: Exam | None = self._store.get_or_none(exam_id(command.accession))
        if exam is None:
            return {"status": REFUSED, "state": None, "reason": str(UnknownExam(command.accession))}
        if exam.has_applied(command.provenance):
            return {"status": DUPLICATE, "state": exam.state.value}
        study: Study | None = self._store.get_or_none(study_id(command.study_instance_uid))
        if study is None:
            # the study's own workflow has not stored its first batch yet: retry, it will
            raise RuntimeError(f"study {command.study_instance_uid} not stored yet")
        try:
            study.link(command.accession, command.reason, command.provenance)
        except DomainError as refusal:
            return {"status": REFUSED, "state": exam.state.value, "reason": str(refusal)}
        return self._attach(exam, study, command)

    def _check_images(self, command: CheckImages) -> dict[str, Any]:
        exam: Exam | None = self._store.get_or_none(exam_id(command.accession))
        if exam is None:
            return {"status": REFUSED, "state": None, "reason": str(UnknownExam(command.accession))}
        if exam.has_applied(command.provenance):
            return {"status": DUPLICATE, "state": exam.state.value}
        exam.check_images(self._held(exam), command.provenance, deadline_passed=True)
        self._save(exam)
        self._on_saved()
        return self._exam_outcome(exam)

    # --- reading and reporting --------------------------------------------------------------

    def _apply_reading(self, command: ReadingCommand) -> dict[str, Any]:
        """A radiologist's action (or a reading timer): the Report decides, and a revision that
        is issued moves the exam in the same transaction (preliminary kept, final -> reported)."""
        exam: Exam | None = self._store.get_or_none(exam_id(command.accession))
        if exam is None:
            return {"status": REFUSED, "state": None, "reason": str(UnknownExam(command.accession))}
        report: Report | None = self._store.get_or_none(report_id(command.accession))
        if exam.has_applied(command.provenance) or (report is not None and report.has_applied(command.provenance)):
            return self._exam_outcome(exam, DUPLICATE, report)
        if isinstance(command, CheckTurnaround):
            target = self._rules.turnaround_for(str(exam.order.get("priority", "")))
            if exam.check_turnaround(target, command.provenance):
                self._save(exam)
                self._on_saved()
            return self._exam_outcome(exam, APPLIED, report)
        opened = report or Report.open(command.accession, command.provenance)
        try:
            changed = self._perform_reading(command, exam, opened)
        except DomainError as refusal:
            outcome = self._exam_outcome(exam, REFUSED, report)
            return {**outcome, "reason": str(refusal)}
        if changed:
            self._save(exam, opened)  # one transaction: the report and the exam's move
            self._on_saved()
        return self._exam_outcome(exam, APPLIED, opened if changed else report)

    def _perform_reading(self, command: ReadingCommand, exam: Exam, report: Report) -> bool:
        rules, state, provenance = self._rules, exam.state.value, command.provenance
        match command:
            case ClaimReading():
                report.claim(command.radiologist, rules.claim_minutes, state, provenance)
            case ReleaseReading():
                report.release(command.radiologist, command.reason, state, provenance)
            case SaveReportDraft():
                return report.save_draft(command.author, command.sections, rules.claim_minutes, state, provenance)
            case IssueReport():
                self._issue(command, exam, report, provenance)
            case AcknowledgeCriticalResult():
                report.acknowledge_critical(command.by, command.note, state, provenance)
            case CheckCriticalResult():
                return report.check_critical(command.level, rules.critical_ack_minutes, provenance)
        return True

    def _issue(self, command: IssueReport, exam: Exam, report: Report, provenance: Provenance) -> None:
        referring = str(exam.order.get("referring_physician", ""))
        revision = report.issue(
            command.report_kind,
            command.author,
            command.sections,
            exam={
                **exam.order,
                "accession": exam.accession,
                "state": exam.state.value,
                "completed_at": exam.completed_at,
            },
            exam_state=exam.state.value,
            minutes=self._rules.claim_minutes,
            provenance=provenance,
            critical_contacts=self._rules.critical_contacts(referring) if command.critical else None,
            ack_minutes=self._rules.critical_ack_minutes,
        )
        exam.report(
            provenance,
            text=current_text(report.revisions),
            result_status=revision["result_status"],
            author=command.author,
            reported_at=revision["signed_at"],
            source="radflow",
        )

    def _apply_to_patient(self, command: PatientCommand) -> dict[str, Any]:
        patient: Patient | None = self._store.get_or_none(patient_id(command.patient.key))
        if patient is not None and patient.has_applied(command.provenance):
            return {"status": DUPLICATE, "state": "registered"}
        try:
            if isinstance(command, (DischargePatient, CancelAdmission)):
                if patient is None:
                    # the HIS is the master: a visit we never saw still names a real patient
                    patient = Patient.register(command.patient, "", command.provenance)
                if isinstance(command, DischargePatient):
                    patient.discharge(command.discharged_at, command.provenance)
                else:
                    patient.cancel_admission(command.provenance)
            elif patient is None:
                # an update for an identity we never saw registers it: the HIS is the master
                patient = Patient.register(command.patient, command.patient_class, command.provenance)
            else:
                patient.update(command.patient, command.patient_class, command.provenance)
        except DomainError as refusal:
            return {"status": REFUSED, "state": None, "reason": str(refusal)}
        self._save(patient)
        self._on_saved()
        return {"status": APPLIED, "state": "registered"}

    def _merge_patients(self, command: MergePatients) -> dict[str, Any]:
        """Survivor and prior change in one transaction; the exams and studies of the prior
        move by their own commands (the message log fanned them out)."""
        survivor: Patient | None = self._store.get_or_none(patient_id(command.patient.key))
        if survivor is not None and survivor.has_applied(command.provenance):
            return {"status": DUPLICATE, "state": "registered"}
        prior: Patient | None = self._store.get_or_none(patient_id(command.prior.key))
        if survivor is None:
            survivor = Patient.register(command.patient, "", command.provenance)
        try:
            if not survivor.absorb(prior, command.prior.key, command.how, command.provenance):
                return {"status": DUPLICATE, "state": "merged", "reason": "already merged"}
        except DomainError as refusal:
            return {"status": REFUSED, "state": None, "reason": str(refusal)}
        self._save(*(p for p in (survivor, prior) if p is not None))
        self._on_saved()
        return {"status": APPLIED, "state": "merged"}

    def _change_study_patient(self, command: ChangeStudyPatient) -> dict[str, Any]:
        study: Study | None = self._store.get_or_none(study_id(command.study_instance_uid))
        if study is None:
            return {"status": REFUSED, "state": None, "reason": str(UnknownStudy(command.study_instance_uid))}
        if study.has_applied(command.provenance):
            return {"status": DUPLICATE, "state": "stored"}
        if not study.change_patient(_patient_dict(command), command.prior_key, command.reason, command.provenance):
            return {"status": APPLIED, "state": "stored", "reason": "nothing changed"}
        self._save(study)
        self._on_saved()
        return {"status": APPLIED, "state": "stored"}


def _patient_dict(command: ChangeExamPatient | ChangeStudyPatient) -> dict[str, Any]:
    return asdict(command.patient)


def _perform(exam: Exam, command: ExamCommand) -> bool | None:
    """Call the exam's method for a command on an existing exam; the exam decides. False:
    nothing to record (e.g. an order change that changes nothing)."""
    match command:
        case ModifyOrder():
            return exam.modify(command.changes, command.provenance)
        case ScheduleExam():
            exam.schedule(
                command.scheduled_at,
                command.provenance,
                appointment_id=command.appointment_id,
                location=command.location,
                duration_min=command.duration_min,
            )
        case CancelAppointment():
            exam.cancel_appointment(command.reason, command.provenance, appointment_id=command.appointment_id)
        case RecordReport():
            exam.report(
                command.provenance,
                text=command.text,
                result_status=command.result_status,
                author=command.author,
                reported_at=command.reported_at,
                source="external",
            )
        case ChangeExamPatient():
            return exam.change_patient(_patient_dict(command), command.prior_key, command.reason, command.provenance)
        case CancelOrder():
            exam.cancel(command.reason, command.provenance)
        case ForceExamState():
            exam.force_state(command.target, command.reason, command.provenance)
        case StartProcedure():
            exam.start(
                command.provenance,
                mpps_uid=command.mpps_uid,
                performed_station_ae=command.performed_station_ae,
                procedure_step_id=command.procedure_step_id,
                started_at=command.started_at,
                modality=command.modality,
                study_instance_uid=command.study_instance_uid,
            )
        case CompleteProcedure():
            exam.complete(
                command.provenance,
                mpps_uid=command.mpps_uid,
                ended_at=command.ended_at,
                series=command.series,
            )
        case DiscontinueProcedure():
            exam.discontinue(
                command.reason,
                command.provenance,
                mpps_uid=command.mpps_uid,
                ended_at=command.ended_at,
                series=command.series,
            )
    return None
