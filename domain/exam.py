"""The Exam aggregate: one requested procedure, from order to bill.

Command methods check the rules and then trigger a past-tense event; the event methods only
change state, because they also run when the exam is rebuilt from the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.commands import PerformedSeries, PlaceOrder, series_as_dicts
from domain.completeness import missing_instances, referenced_instances
from domain.errors import ForcedTransitionRefused, ForeignProcedureStep, IllegalTransition, OrderFrozen
from domain.lifecycle import (
    FORCED_TRANSITIONS,
    TERMINAL_STATES,
    ExamAction,
    ExamState,
    forced_move,
    next_state,
)
from domain.provenance import Provenance, arrived_at, instant

EXAM_NAMESPACE = uuid5(NAMESPACE_URL, "urn:radflow:exam")
STUDY_NAMESPACE = uuid5(NAMESPACE_URL, "urn:radflow:study")


def exam_id(accession: str) -> UUID:
    """Deterministic, so that a retried 'create' collides instead of creating a twin."""
    return uuid5(EXAM_NAMESPACE, accession)


def study_instance_uid(accession: str) -> str:
    """The Study Instance UID radflow assigns when the order carries none: derived from the
    accession (a UUID-based "2.25." UID, PS3.5 B.2), so every replay, retry or second listener
    hands the modality the same study."""
    return f"2.25.{uuid5(STUDY_NAMESPACE, accession).int}"


class Exam(Aggregate):
    @staticmethod
    def create_id(accession: str, **_: Any) -> UUID:
        return exam_id(accession)

    @event("ExamOrdered")
    def __init__(self, accession: str, order: dict[str, Any], provenance: dict[str, Any]) -> None:
        self.accession = accession
        self.order = order
        self.state = ExamState.ORDERED
        self.applied: list[str] = [Provenance.from_dict(provenance).dedupe_key]

    @classmethod
    def place(cls, command: PlaceOrder) -> Exam:
        order = command.as_dict()
        for key in ("kind", "provenance", "accession"):
            order.pop(key)
        if not order["study_instance_uid"]:
            order["study_instance_uid"] = study_instance_uid(command.accession)
        return cls(accession=command.accession, order=order, provenance=command.provenance.as_dict())

    def has_applied(self, provenance: Provenance) -> bool:
        return provenance.dedupe_key in self.applied

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def _check(self, action: ExamAction) -> ExamState:
        target = next_state(self.state, action)
        if target is None:
            raise IllegalTransition(self.accession, self.state.value, action.value)
        return target

    def cancel(self, reason: str, provenance: Provenance) -> None:
        self._check(ExamAction.CANCEL)
        self._cancelled(reason=reason, provenance=provenance.as_dict())

    def schedule(
        self,
        scheduled_at: str,
        provenance: Provenance,
        *,
        appointment_id: str = "",
        location: str = "",
        duration_min: int = 0,
    ) -> None:
        self._check(ExamAction.SCHEDULE)
        self._scheduled(
            scheduled_at=scheduled_at,
            provenance=provenance.as_dict(),
            appointment_id=appointment_id,
            location=location,
            duration_min=duration_min,
        )

    def cancel_appointment(self, reason: str, provenance: Provenance, *, appointment_id: str = "") -> None:
        """The booking is gone, the order is not: back to the scheduler's list."""
        self._check(ExamAction.UNSCHEDULE)
        self._appointment_cancelled(
            reason=reason, appointment_id=appointment_id, provenance=provenance.as_dict()
        )

    # what an order change (ORC-1 XO) may touch: the accession names the exam and the patient
    # moves only by merge
    MODIFIABLE = frozenset(
        {
            "placer_order_number",
            "filler_order_number",
            "requested_procedure_id",
            "study_instance_uid",
            "priority",
            "procedure_code",
            "procedure_text",
            "modality",
            "scheduled_at",
            "referring_physician",
            "reason",
        }
    )

    def modify(self, changes: dict[str, str], provenance: Provenance) -> bool:
        """Apply the fields the placer changed; False when nothing actually differs (no event).
        Once the modality began the exam the order is what was performed: refused."""
        if self.state not in (ExamState.ORDERED, ExamState.SCHEDULED):
            raise OrderFrozen(self.accession, self.state.value)
        changed = {
            key: value
            for key, value in changes.items()
            if key in self.MODIFIABLE and value and self.order.get(key) != value
        }
        if not changed:
            return False
        self._order_modified(changes=changed, provenance=provenance.as_dict())
        return True

    def change_patient(
        self, patient: dict[str, Any], prior_key: str, reason: str, provenance: Provenance
    ) -> bool:
        """Move the exam to another patient identity (a merge): a fact in any state."""
        current = self.order.get("patient", {})
        if (
            f"{current.get('issuer', '')}|{current.get('id', '')}"
            == f"{patient.get('issuer', '')}|{patient.get('id', '')}"
        ):
            return False
        self._patient_changed(
            prior_key=prior_key, patient=patient, reason=reason, provenance=provenance.as_dict()
        )
        return True

    def start(
        self,
        provenance: Provenance,
        *,
        mpps_uid: str = "",
        performed_station_ae: str = "",
        procedure_step_id: str = "",
        started_at: str = "",
        modality: str = "",
        study_instance_uid: str = "",
    ) -> None:
        """The modality began the procedure (MPPS IN PROGRESS); the step's identity is kept so
        that only the same step can end it."""
        self._check(ExamAction.START)
        self._started(
            provenance=provenance.as_dict(),
            mpps_uid=mpps_uid,
            performed_station_ae=performed_station_ae,
            procedure_step_id=procedure_step_id,
            started_at=started_at,
            modality=modality,
            study_instance_uid=study_instance_uid,
        )

    def complete(
        self,
        provenance: Provenance,
        *,
        mpps_uid: str = "",
        ended_at: str = "",
        series: Sequence[PerformedSeries] = (),
    ) -> None:
        self._check(ExamAction.COMPLETE)
        self._check_same_step(mpps_uid)
        self._completed(
            provenance=provenance.as_dict(),
            mpps_uid=mpps_uid,
            ended_at=ended_at,
            series=series_as_dicts(series),
        )

    def discontinue(
        self,
        reason: str,
        provenance: Provenance,
        *,
        mpps_uid: str = "",
        ended_at: str = "",
        series: Sequence[PerformedSeries] = (),
    ) -> None:
        self._check(ExamAction.DISCONTINUE)
        self._check_same_step(mpps_uid)
        self._discontinued(
            reason=reason,
            provenance=provenance.as_dict(),
            mpps_uid=mpps_uid,
            ended_at=ended_at,
            series=series_as_dicts(series),
        )

    def _check_same_step(self, mpps_uid: str) -> None:
        # a step that did not start the exam must not end it; either side without a step
        # (an exam started or ended by a person) cannot disagree
        if mpps_uid and self.mpps_uid and mpps_uid != self.mpps_uid:
            raise ForeignProcedureStep(self.accession, mpps_uid, self.mpps_uid)

    def report(
        self,
        provenance: Provenance,
        *,
        text: str = "",
        result_status: str = "F",
        author: str = "",
        reported_at: str = "",
        source: str = "",
    ) -> None:
        """A final (F) or corrected (C) report moves the exam to reported; a preliminary (P)
        one is kept on the completed exam without moving it, so the final one still counts."""
        details = {
            "text": text,
            "result_status": result_status,
            "author": author,
            "reported_at": reported_at,
            "source": source,
        }
        if result_status.upper() == "P":
            if self.state not in (ExamState.COMPLETED,):
                raise IllegalTransition(self.accession, self.state.value, "record a preliminary report")
            self._preliminary_report(provenance=provenance.as_dict(), **details)
            return
        self._check(ExamAction.REPORT)
        self._reported(provenance=provenance.as_dict(), **details)

    # --- turnaround ---------------------------------------------------------------------------

    completed_at = ""  # when radflow learned the procedure ended: the turnaround clock starts
    turnaround_breached = False

    def turnaround_due(self, target_minutes: float) -> str:
        """When the report is due (completed + target), while it is still awaited; "" else."""
        if (
            self.state != ExamState.COMPLETED
            or self.turnaround_breached
            or not self.completed_at
            or target_minutes <= 0
        ):
            return ""
        return (instant(self.completed_at) + timedelta(minutes=target_minutes)).isoformat()

    def check_turnaround(self, target_minutes: float, provenance: Provenance) -> bool:
        """The target ran out: record the breach once, if no final report came in time."""
        due = self.turnaround_due(target_minutes)
        if not due or instant(due) > instant(provenance.occurred_at):
            return False
        self._turnaround_breached(
            priority=str(self.order.get("priority", "")),
            target_minutes=target_minutes,
            due_at=due,
            provenance=provenance.as_dict(),
        )
        return True

    @event("ReportTurnaroundBreached")
    def _turnaround_breached(
        self, priority: str, target_minutes: float, due_at: str, provenance: dict[str, Any]
    ) -> None:
        self.turnaround_breached = True
        self.applied.append(Provenance.from_dict(provenance).dedupe_key)

    # --- forced transitions (operations) -------------------------------------------------------

    def force_state(self, target: str, reason: str, provenance: Provenance) -> None:
        """Operations move the exam by hand where the lifecycle's table of forced moves allows
        it, with a reason: the event records both states, the reason and the documented case,
        so the history shows a correction, never a rewrite."""
        if not reason.strip():
            raise IllegalTransition(self.accession, self.state.value, "force a state without a reason")
        to_state = ExamState(target) if target in {s.value for s in ExamState} else None
        case = forced_move(self.state, to_state) if to_state is not None else None
        if to_state is None or case is None:
            allowed = sorted(t.value for (s, t) in FORCED_TRANSITIONS if s == self.state)
            raise ForcedTransitionRefused(self.accession, self.state.value, target, allowed)
        self._state_forced(
            from_state=self.state.value,
            to_state=to_state.value,
            reason=reason.strip(),
            case=case,
            provenance=provenance.as_dict(),
        )

    @event("ExamStateForced")
    def _state_forced(
        self, from_state: str, to_state: str, reason: str, case: str, provenance: dict[str, Any]
    ) -> None:
        self.state = ExamState(to_state)
        if to_state == ExamState.COMPLETED:
            self.completed_at = arrived_at(provenance)  # the turnaround clock starts now
        elif from_state == ExamState.COMPLETED:
            self.completed_at = ""
        self.applied.append(Provenance.from_dict(provenance).dedupe_key)

    def bill(self, provenance: Provenance) -> None:
        self._check(ExamAction.BILL)
        self._billed(provenance=provenance.as_dict())

    def _moved(self, action: ExamAction, provenance: dict[str, Any]) -> None:
        target = next_state(self.state, action)
        if target is not None:  # checked before the event was triggered
            self.state = target
        self.applied.append(Provenance.from_dict(provenance).dedupe_key)

    @event("ExamCancelled")
    def _cancelled(self, reason: str, provenance: dict[str, Any]) -> None:
        self._moved(ExamAction.CANCEL, provenance)

    class ExamScheduled(Aggregate.Event):
        # version 2 adds the appointment an SIU booked
        class_version = 2
        scheduled_at: str
        provenance: dict[str, Any]
        appointment_id: str
        location: str
        duration_min: int

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.setdefault("appointment_id", "")
            state.setdefault("location", "")
            state.setdefault("duration_min", 0)

    @event(ExamScheduled)
    def _scheduled(
        self,
        scheduled_at: str,
        provenance: dict[str, Any],
        appointment_id: str,
        location: str,
        duration_min: int,
    ) -> None:
        self.order = {**self.order, "scheduled_at": scheduled_at}
        self._moved(ExamAction.SCHEDULE, provenance)

    @event("AppointmentCancelled")
    def _appointment_cancelled(self, reason: str, appointment_id: str, provenance: dict[str, Any]) -> None:
        self.order = {**self.order, "scheduled_at": ""}
        self._moved(ExamAction.UNSCHEDULE, provenance)

    @event("OrderModified")
    def _order_modified(self, changes: dict[str, str], provenance: dict[str, Any]) -> None:
        self.order = {**self.order, **changes}
        self.applied.append(Provenance.from_dict(provenance).dedupe_key)

    @event("ExamPatientChanged")
    def _patient_changed(
        self, prior_key: str, patient: dict[str, Any], reason: str, provenance: dict[str, Any]
    ) -> None:
        self.order = {**self.order, "patient": dict(patient)}
        self.applied.append(Provenance.from_dict(provenance).dedupe_key)

    # Version 1 of these three events carried only the provenance (and the reason); version 2
    # adds what the MPPS said. The upcasters let exams stored before MPPS existed load.

    class ExamStarted(Aggregate.Event):
        class_version = 2
        provenance: dict[str, Any]
        mpps_uid: str
        performed_station_ae: str
        procedure_step_id: str
        started_at: str
        modality: str
        study_instance_uid: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            for key in (
                "mpps_uid",
                "performed_station_ae",
                "procedure_step_id",
                "started_at",
                "modality",
                "study_instance_uid",
            ):
                state.setdefault(key, "")

    class ExamCompleted(Aggregate.Event):
        class_version = 2
        provenance: dict[str, Any]
        mpps_uid: str
        ended_at: str
        series: list[dict[str, Any]]

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.setdefault("mpps_uid", "")
            state.setdefault("ended_at", "")
            state.setdefault("series", [])

    class ExamDiscontinued(Aggregate.Event):
        class_version = 2
        reason: str
        provenance: dict[str, Any]
        mpps_uid: str
        ended_at: str
        series: list[dict[str, Any]]

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.setdefault("mpps_uid", "")
            state.setdefault("ended_at", "")
            state.setdefault("series", [])

    mpps_uid = ""  # the performed procedure step that started the exam, once one has
    # what the ending MPPS referenced, the studies stored for the exam, and whether every
    # referenced instance is held: "" (nothing to check), awaiting, complete, missing
    performed_series: tuple[dict[str, Any], ...] = ()
    studies: tuple[str, ...] = ()
    images = ""

    @property
    def awaits_images(self) -> bool:
        return self.images == "awaiting"

    def record_images(self, study_instance_uid: str, series: dict[str, int], provenance: Provenance) -> None:
        """A batch of the exam's instances was stored: a fact in any state, not a transition
        (late images for a cancelled exam are kept and shown, not refused)."""
        self._images_stored(
            study_instance_uid=study_instance_uid, series=series, provenance=provenance.as_dict()
        )

    def check_images(
        self, held: dict[str, set[str]], provenance: Provenance, *, deadline_passed: bool
    ) -> None:
        """Compare what the MPPS referenced with what is held. Complete is said as soon as it is
        true; missing only once the wait ran out, with the list."""
        if self.images not in ("awaiting", "missing") or not self.performed_series:
            return
        missing = missing_instances(self.performed_series, held)
        if not missing:
            referenced = sum(len(s.get("instances", ())) for s in self.performed_series)
            self._images_completed(instances=referenced, provenance=provenance.as_dict())
        elif deadline_passed and self.images == "awaiting":
            self._images_missing(missing=missing, provenance=provenance.as_dict())

    @event("ImagesStored")
    def _images_stored(
        self, study_instance_uid: str, series: dict[str, int], provenance: dict[str, Any]
    ) -> None:
        if study_instance_uid not in self.studies:
            self.studies = (*self.studies, study_instance_uid)
        self.applied.append(Provenance.from_dict(provenance).dedupe_key)

    @event("ImagesCompleted")
    def _images_completed(self, instances: int, provenance: dict[str, Any]) -> None:
        self.images = "complete"

    @event("ImagesFoundMissing")
    def _images_missing(self, missing: list[dict[str, str]], provenance: dict[str, Any]) -> None:
        self.images = "missing"
        self.applied.append(Provenance.from_dict(provenance).dedupe_key)

    def _ended_with(self, series: list[dict[str, Any]]) -> None:
        self.performed_series = tuple(series)
        if referenced_instances(series):
            self.images = "awaiting"

    @event(ExamStarted)
    def _started(
        self,
        provenance: dict[str, Any],
        mpps_uid: str,
        performed_station_ae: str,
        procedure_step_id: str,
        started_at: str,
        modality: str,
        study_instance_uid: str,
    ) -> None:
        self.mpps_uid = mpps_uid
        self._moved(ExamAction.START, provenance)

    @event(ExamCompleted)
    def _completed(
        self, provenance: dict[str, Any], mpps_uid: str, ended_at: str, series: list[dict[str, Any]]
    ) -> None:
        self._ended_with(series)
        self.completed_at = arrived_at(provenance)
        self._moved(ExamAction.COMPLETE, provenance)

    @event(ExamDiscontinued)
    def _discontinued(
        self,
        reason: str,
        provenance: dict[str, Any],
        mpps_uid: str,
        ended_at: str,
        series: list[dict[str, Any]],
    ) -> None:
        self._ended_with(series)
        self._moved(ExamAction.DISCONTINUE, provenance)

    class ExamReported(Aggregate.Event):
        # version 2 carries the report itself (an external reporting system's ORU)
        class_version = 2
        provenance: dict[str, Any]
        text: str
        result_status: str
        author: str
        reported_at: str
        source: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            for key in ("text", "author", "reported_at", "source"):
                state.setdefault(key, "")
            state.setdefault("result_status", "F")

    @event(ExamReported)
    def _reported(
        self,
        provenance: dict[str, Any],
        text: str,
        result_status: str,
        author: str,
        reported_at: str,
        source: str,
    ) -> None:
        self._moved(ExamAction.REPORT, provenance)

    @event("PreliminaryReportRecorded")
    def _preliminary_report(
        self,
        provenance: dict[str, Any],
        text: str,
        result_status: str,
        author: str,
        reported_at: str,
        source: str,
    ) -> None:
        self.applied.append(Provenance.from_dict(provenance).dedupe_key)

    @event("ExamBilled")
    def _billed(self, provenance: dict[str, Any]) -> None:
        self._moved(ExamAction.BILL, provenance)
