"""MPPS SCP (Modality Performed Procedure Step SOP Class, PS3.4 F.7): N-CREATE and N-SET.

Each message is decided and recorded in one transaction of the MPPS log (raw dataset, peer,
DIMSE status, the commands for the exam's workflow) and only then answered: a success status
means the relay will deliver the command even if this process dies right after answering.

What can be known at once is refused at once, with the status PS3.4 / PS3.7 give it and an
Error Comment: an unknown instance, a step already ended, a duplicate instance, missing
required attributes, a start on an exam that the log knows cannot start. A step for an
accession nobody ordered (or none at all) is accepted and put in the reconciliation queue: the
modality has performed it, and refusing would only lose what it tells us next.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import evt
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

from adapters.message_log import utcnow
from adapters.mpps_log import (
    ACCEPTED,
    DUPLICATE,
    LINKED,
    PREFIX,
    QUEUED,
    REFUSED,
    MppsInbound,
    MppsLog,
    MppsRecords,
)
from domain.commands import (
    Command,
    CompleteProcedure,
    DiscontinueProcedure,
    StartProcedure,
    series_from_dicts,
    workflow_id_for,
)
from domain.lifecycle import ExamAction, ExamState, next_state
from domain.provenance import Provenance, Source
from interfaces.dicom.mpps_dataset import (
    COMPLETED,
    DISCONTINUED,
    FINAL,
    IN_PROGRESS,
    STATUSES,
    Missing,
    ended_at,
    missing_on_create,
    missing_when_final,
    read_create,
    read_set,
    started_at,
)
from interfaces.dicom.server import DicomService

log = logging.getLogger("radflow.dicom.mpps")

SUCCESS = 0x0000
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_SOP_INSTANCE = 0x0112
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121
# Error ID that goes with 0x0110 when the step is already final (PS3.4 Table F.7.2-2)
MAY_NO_LONGER_BE_UPDATED = 0xA710
NO_LONGER_UPDATABLE = "Performed Procedure Step Object may no longer be updated"

STEP_STATE = {
    IN_PROGRESS: ExamState.IN_PROGRESS,
    COMPLETED: ExamState.COMPLETED,
    DISCONTINUED: ExamState.DISCONTINUED,
}


@dataclass(frozen=True)
class Answer:
    """The DIMSE status of one message and what the log made of it."""

    status: int
    comment: str = ""
    error_id: int | None = None
    outcome: str = REFUSED
    row_id: int | None = None
    relay: bool = False  # commands are waiting in the outbox

    def as_dataset(self) -> Dataset:
        ds = Dataset()
        ds.Status = self.status
        if self.comment:
            ds.ErrorComment = self.comment[:64]  # LO: at most 64 characters
        if self.error_id is not None:
            ds.ErrorID = self.error_id
        return ds


class MppsScp:
    def __init__(self, mpps_log: MppsLog, on_accepted: Callable[[], None] = lambda: None) -> None:
        self._log = mpps_log
        self._on_accepted = on_accepted

    # --- pynetdicom handlers ----------------------------------------------------------------

    def handle_n_create(self, event: Any) -> tuple[Dataset, Dataset | None]:
        request = event.request
        uid = str(request.AffectedSOPInstanceUID or "")
        assigned = not uid
        if assigned:  # PS3.7 10.1.5: the SCP assigns the instance UID when the SCU did not
            uid = generate_uid(prefix=None)  # "2.25." + a random UUID: no registered root needed
        answer = self.create(_inbound(event, "N-CREATE", uid, request.AttributeList), lambda: event.attribute_list)
        reply = None
        if assigned and answer.status == SUCCESS:
            reply = Dataset()
            reply.AffectedSOPInstanceUID = uid
        return answer.as_dataset(), reply

    def handle_n_set(self, event: Any) -> tuple[Dataset, Dataset | None]:
        request = event.request
        uid = str(request.RequestedSOPInstanceUID or "")
        answer = self.set(_inbound(event, "N-SET", uid, request.ModificationList), lambda: event.modification_list)
        return answer.as_dataset(), None

    # --- decisions --------------------------------------------------------------------------

    def create(self, inbound: MppsInbound, read: Callable[[], Dataset]) -> Answer:
        try:
            ds = read()
            missing = missing_on_create(ds)
            step = read_create(ds)
        except Exception as error:  # pydicom parses lazily: a bad element fails here
            comment = _unreadable(error)
            return self._decide(inbound, lambda records: _refuse(records, inbound, PROCESSING_FAILURE, comment))
        return self._decide(inbound, lambda records: _create(records, inbound, step, missing))

    def set(self, inbound: MppsInbound, read: Callable[[], Dataset]) -> Answer:
        try:
            changes = read_set(read())
        except Exception as error:
            comment = _unreadable(error)
            return self._decide(inbound, lambda records: _refuse(records, inbound, PROCESSING_FAILURE, comment))
        return self._decide(inbound, lambda records: _set(records, inbound, changes))

    def _decide(self, inbound: MppsInbound, decide: Callable[[MppsRecords], Answer]) -> Answer:
        try:
            with self._log.transaction() as records:
                answer = decide(records)
        except Exception:  # nothing is durable, so nothing may be acknowledged
            log.exception("mpps log write failed", extra={"peer": inbound.peer, "sop_instance_uid": inbound.sop_instance_uid})
            return Answer(PROCESSING_FAILURE, "could not be stored; please send again")
        log.info(
            "mpps message",
            extra={
                "dimse": inbound.dimse,
                "id": answer.row_id,
                "calling_ae": inbound.calling_ae,
                "peer": inbound.peer,
                "sop_instance_uid": inbound.sop_instance_uid,
                "outcome": answer.outcome,
                "status": f"0x{answer.status:04X}",
                "comment": answer.comment,
            },
        )
        if answer.relay:
            self._on_accepted()
        return answer


def _create(records: MppsRecords, inbound: MppsInbound, step: dict[str, Any], missing: Missing) -> Answer:
    uid = inbound.sop_instance_uid
    if missing:
        status = MISSING_ATTRIBUTE if missing.absent else MISSING_ATTRIBUTE_VALUE
        return _refuse(records, inbound, status, missing.comment, detail=missing.detail)
    if step["status"] != IN_PROGRESS:
        comment = f"N-CREATE status must be IN PROGRESS, not {step['status']}"
        return _refuse(records, inbound, INVALID_ATTRIBUTE_VALUE, comment)
    existing = records.step(uid)
    if existing is not None:
        return _refuse(records, inbound, DUPLICATE_SOP_INSTANCE, f"instance exists ({existing.status})")
    accessions: list[str] = step["accessions"]
    if len(accessions) == 1:
        accession = accessions[0]
        state = known_exam_state(records, accession)
        if state is not None:
            if next_state(state, ExamAction.START) is None:
                return _refuse(records, inbound, PROCESSING_FAILURE, f"exam {accession}: cannot start while {state.value}")
            row_id = records.insert(inbound, ACCEPTED, SUCCESS, accession=accession)
            records.create_step(inbound, accession, IN_PROGRESS, step, row_id)
            provenance = dicom_provenance(inbound, row_id, started_at(step))
            records.attach_commands(row_id, [_entry(start_command(step, accession, uid, provenance))])
            return Answer(SUCCESS, outcome=ACCEPTED, row_id=row_id, relay=True)
        reason = f"unknown accession {accession}"
    elif accessions:
        reason = f"several accessions in one step (group case): {', '.join(accessions)}"
    else:
        reason = "no accession number (unscheduled procedure)"
    row_id = records.insert(inbound, QUEUED, SUCCESS, accession=",".join(accessions))
    records.create_step(inbound, None, IN_PROGRESS, step, row_id)
    records.queue(uid, reason, ",".join(accessions), inbound.received_at)
    return Answer(SUCCESS, comment="", outcome=QUEUED, row_id=row_id)


def _set(records: MppsRecords, inbound: MppsInbound, changes: dict[str, Any]) -> Answer:
    uid = inbound.sop_instance_uid
    existing = records.step(uid)
    if existing is None:
        return _refuse(records, inbound, NO_SUCH_SOP_INSTANCE, "no such MPPS instance")
    if existing.status in FINAL:
        if {**existing.step, **changes, "status": changes.get("status") or existing.status} == existing.step:
            # the modality resent the N-SET that ended the step (its reply got lost): the same
            # answer again, and no second effect
            row_id = records.insert(inbound, DUPLICATE, SUCCESS, accession=existing.accession or "")
            return Answer(SUCCESS, outcome=DUPLICATE, row_id=row_id)
        return _refuse(records, inbound, PROCESSING_FAILURE, NO_LONGER_UPDATABLE, MAY_NO_LONGER_BE_UPDATED)
    status = changes.get("status") or existing.status
    if status not in STATUSES:
        return _refuse(records, inbound, INVALID_ATTRIBUTE_VALUE, f"unknown PerformedProcedureStepStatus {status}")
    step = {**existing.step, **changes, "status": status}
    if status in FINAL and (missing := missing_when_final(step)):
        comment, detail = (f"{status}: {text}" for text in (missing.comment, missing.detail))
        return _refuse(records, inbound, MISSING_ATTRIBUTE_VALUE, comment, detail=detail)
    accession = existing.accession
    row_id = records.insert(inbound, ACCEPTED if accession else QUEUED, SUCCESS, accession=accession or "")
    records.update_step(uid, status, step, inbound.received_at, row_id)
    if accession is None or status not in FINAL:
        # still in progress, or waiting in the queue: the step is kept, the exam does not move
        return Answer(SUCCESS, outcome=ACCEPTED if accession else QUEUED, row_id=row_id)
    provenance = dicom_provenance(inbound, row_id, ended_at(step))
    records.attach_commands(row_id, [_entry(end_command(step, accession, uid, provenance))])
    return Answer(SUCCESS, outcome=ACCEPTED, row_id=row_id, relay=True)


def _refuse(
    records: MppsRecords,
    inbound: MppsInbound,
    status: int,
    comment: str,
    error_id: int | None = None,
    detail: str = "",
) -> Answer:
    """Record the refusal with its full explanation (`detail`) and answer with `comment`."""
    row_id = records.insert(inbound, REFUSED, status, detail or comment)
    return Answer(status, comment, error_id, REFUSED, row_id)


def _unreadable(error: Exception) -> str:
    return f"dataset could not be read: {type(error).__name__}"


def _inbound(event: Any, dimse: str, uid: str, raw: Any) -> MppsInbound:
    requestor = event.assoc.requestor
    return MppsInbound(
        dimse=dimse,
        sop_instance_uid=uid,
        raw=raw.getvalue() if raw is not None else b"",
        received_at=utcnow(),
        calling_ae=str(requestor.ae_title).strip(),
        called_ae=str(event.assoc.acceptor.ae_title).strip(),
        peer=f"{requestor.address}:{requestor.port}",
        transfer_syntax=str(event.context.transfer_syntax),
    )


# --- commands ---------------------------------------------------------------------------------


def known_exam_state(records: MppsRecords, accession: str) -> ExamState | None:
    """The exam's state as far as the log knows it without asking the workflow: a step
    already attached decides, else the HL7 order (and its cancel). None: never ordered."""
    steps = records.steps_of(accession)
    if steps:
        return STEP_STATE[steps[0]]
    state = records.order_state(accession)
    return None if state is None else ExamState(state)


def dicom_provenance(inbound: MppsInbound, row_id: int, occurred_at: str) -> Provenance:
    return Provenance(
        actor=inbound.calling_ae,
        source=Source(
            kind="dicom",
            application=inbound.calling_ae,
            control_id=inbound.sop_instance_uid,
            message_id=f"{PREFIX}{row_id}",
        ),
        occurred_at=occurred_at or inbound.received_at,
        extra={
            "dimse": inbound.dimse,
            "peer": inbound.peer,
            "called_ae": inbound.called_ae,
            "received_at": inbound.received_at,  # occurred_at is the modality's local clock
        },
    )


def start_command(step: dict[str, Any], accession: str, uid: str, provenance: Provenance) -> StartProcedure:
    return StartProcedure(
        provenance=provenance,
        accession=accession,
        mpps_uid=uid,
        performed_station_ae=step["station_ae"],
        procedure_step_id=step["step_id"],
        started_at=started_at(step),
        modality=step["modality"],
        study_instance_uid=step["study_instance_uid"],
    )


def end_command(
    step: dict[str, Any], accession: str, uid: str, provenance: Provenance
) -> CompleteProcedure | DiscontinueProcedure:
    series = series_from_dicts(step["series"])
    if step["status"] == COMPLETED:
        return CompleteProcedure(
            provenance=provenance, accession=accession, mpps_uid=uid, ended_at=ended_at(step), series=series
        )
    return DiscontinueProcedure(
        provenance=provenance,
        accession=accession,
        mpps_uid=uid,
        ended_at=ended_at(step),
        series=series,
        reason=step["discontinuation_reason"],
    )


def _entry(command: Command) -> dict[str, Any]:
    return {"workflow_id": workflow_id_for(command), "command": command.as_dict()}


# --- reconciliation ---------------------------------------------------------------------------


class LinkRefused(Exception):
    """A link that cannot be made; the message says why, for the person who asked."""


class NotQueued(LinkRefused):
    pass


class AlreadyLinked(LinkRefused):
    pass


class UnknownAccession(LinkRefused):
    pass


class IllegalLink(LinkRefused):
    pass


def link(mpps_log: MppsLog, uid: str, accession: str, reason: str, user: str) -> list[int]:
    """Attach a queued step to an exam: the step's start (and its end, if it has ended) go to
    the exam's workflow through the outbox, with the person, the reason and the original
    DICOM messages in their provenance. Returns the outbox rows."""
    now = utcnow()
    with mpps_log.transaction() as records:
        entry = records.queued(uid)
        stored = records.step(uid)
        if entry is None or stored is None:
            raise NotQueued(f"MPPS {uid} is not in the reconciliation queue")
        if entry["linked_at"]:
            raise AlreadyLinked(f"MPPS {uid} was already linked to exam {entry['linked_accession']}")
        state = known_exam_state(records, accession)
        if state is None:
            raise UnknownAccession(f"no order with accession {accession}")
        if next_state(state, ExamAction.START) is None:
            raise IllegalLink(f"exam {accession}: cannot start while {state.value}")
        replayed = [f"{PREFIX}{i}" for i in records.message_ids(uid)]
        inbound = MppsInbound(
            dimse="LINK",
            sop_instance_uid=uid,
            raw=json.dumps({"accession": accession, "reason": reason, "user": user}).encode(),
            received_at=now,
            calling_ae=stored.calling_ae,
        )
        builders: list[Callable[[Provenance], Command]] = [
            lambda p: start_command(stored.step, accession, uid, p)
        ]
        if stored.status in FINAL:
            builders.append(lambda p: end_command(stored.step, accession, uid, p))
        rows = []
        for build in builders:  # one row per command: each needs its own message id
            row_id = records.insert(inbound, LINKED, SUCCESS, accession=accession)
            provenance = Provenance(
                actor=user,
                source=Source(kind="api", application="reconciliation", control_id=uid, message_id=f"{PREFIX}{row_id}"),
                occurred_at=now,
                extra={"reason": reason, "mpps_calling_ae": stored.calling_ae, "mpps_messages": replayed},
            )
            records.attach_commands(row_id, [_entry(build(provenance))])
            rows.append(row_id)
        records.mark_linked(uid, accession, reason, user, now)
    log.info("mpps linked", extra={"sop_instance_uid": uid, "accession": accession, "user": user, "rows": rows})
    return rows


def mpps_service(mpps_log: MppsLog, on_accepted: Callable[[], None] = lambda: None) -> DicomService:
    """The MPPS SOP class and its two handlers, for `start_dicom_server`."""
    scp = MppsScp(mpps_log, on_accepted)
    return DicomService(
        "mpps",
        [ModalityPerformedProcedureStep],
        [(evt.EVT_N_CREATE, scp.handle_n_create), (evt.EVT_N_SET, scp.handle_n_set)],
    )
