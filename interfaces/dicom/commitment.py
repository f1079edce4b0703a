"""Storage Commitment Push Model SCP (IHE RAD-10, PS3.4 Annex J): a modality's N-ACTION asks
radflow to take responsibility for instances; an N-EVENT-REPORT answers which it holds.

An instance is committed only when the storage SCP's row for it exists (committed after the
fsync'd file, before the C-STORE success), its SOP class is the one requested, and its file is
on disk with the recorded size. The request and the answer are durable (`CommitmentLog`) before
the N-ACTION success goes out.

The report goes on the requesting association while it is open, and only once the N-ACTION
response has been handed to the connection: pynetdicom sends the response after the handler
returns, and a report sent from another thread before that either overtakes the response or
interleaves its P-DATA fragments with it (the modality then decodes neither). Otherwise it goes
on a new association to the requesting AE (configured peers), with the SCP role negotiated,
retried with back-off in a background thread; a report nobody can take is marked undeliverable.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.dimse_primitives import N_ACTION
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT, A_RELEASE
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from adapters.commitment_log import CommitmentLog
from adapters.dicom_config import DicomConfig
from adapters.settings import Settings
from adapters.storage_log import StorageLog
from interfaces.dicom.reactor import associate
from interfaces.dicom.server import DicomService, association_id
from interfaces.dicom.status import status

log = logging.getLogger("radflow.dicom.commitment")

WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"  # PS3.4 J.3.5: the one Storage Commitment instance
REQUEST_STORAGE_COMMITMENT = 1  # Action Type ID (PS3.4 J.3.2)
ALL_COMMITTED, SOME_FAILED = 1, 2  # Event Type ID (PS3.4 J.3.3)

SUCCESS = 0x0000
# N-ACTION statuses (PS3.7 C) and Failure Reasons (PS3.3 C.14.1.1, used by PS3.4 J.3.3)
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
INVALID_ARGUMENT_VALUE = 0x0115
INVALID_OBJECT_INSTANCE = 0x0117
CLASS_INSTANCE_CONFLICT = 0x0119
MISSING_ATTRIBUTE = 0x0120
NO_SUCH_ACTION = 0x0123

TRANSACTION_UID_TAG = 0x00081195
REFERENCED_SOP_SEQUENCE_TAG = 0x00081199

RETRY_DELAYS_S = (2.0, 10.0, 30.0, 60.0)  # between attempts on new associations
RESPONSE_WAIT_S = 10.0  # how long a report waits for its N-ACTION response to go out
RELEASE_GRACE_S = 0.1  # after the response, before the report on the same association
RESUME_WINDOW = timedelta(hours=24)  # owed reports a starting listener still sends
TIMEOUT_S = 30.0  # ACSE / DIMSE / network timeouts of the associations radflow opens

_message_ids = itertools.count(1)


class BadRequest(Exception):
    """An N-ACTION refused with a DIMSE failure status and an Error Comment."""

    def __init__(self, code: int, comment: str, offending: int | None = None) -> None:
        super().__init__(comment)
        self.code = code
        self.comment = comment
        self.offending = offending


class UnknownPeer(LookupError):
    """No address for the requesting AE: retrying cannot help until the configuration changes."""


@dataclass(frozen=True)
class Report:
    """The N-EVENT-REPORT owed for one Transaction UID."""

    transaction_uid: str
    calling_ae: str
    event_type: int
    result: dict[str, Any]  # {"committed": [...], "failed": [... with failure_reason, why]}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Report:
        return cls(row["transaction_uid"], row["calling_ae"], int(row["event_type"]), row["result"])

    def information(self, retrieve_ae_title: str) -> Dataset:
        """Event Information (PS3.4 Table J.3-2): each sequence only when it has items."""
        info = Dataset()
        info.TransactionUID = self.transaction_uid
        info.RetrieveAETitle = retrieve_ae_title
        if self.result["committed"]:
            info.ReferencedSOPSequence = [_reference(item) for item in self.result["committed"]]
        if self.result["failed"]:
            info.FailedSOPSequence = [
                _reference(item, int(item["failure_reason"])) for item in self.result["failed"]
            ]
        return info


def _reference(item: dict[str, Any], failure_reason: int | None = None) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = item["sop_class_uid"]
    ref.ReferencedSOPInstanceUID = item["sop_instance_uid"]
    if failure_reason is not None:
        ref.FailureReason = failure_reason
    return ref


def requested_instances(request: Any, information: Dataset | None) -> tuple[str, list[dict[str, str]]]:
    """(Transaction UID, [{sop_class_uid, sop_instance_uid}]) of a valid N-ACTION; else BadRequest."""
    if str(request.RequestedSOPInstanceUID or "") != WELL_KNOWN_INSTANCE:
        raise BadRequest(INVALID_OBJECT_INSTANCE, f"Requested SOP Instance must be {WELL_KNOWN_INSTANCE}")
    if int(request.ActionTypeID or 0) != REQUEST_STORAGE_COMMITMENT:
        raise BadRequest(NO_SUCH_ACTION, f"Action Type ID {request.ActionTypeID} is not 1 (commit)")
    information = information if information is not None else Dataset()
    transaction = str(information.get("TransactionUID", "") or "").strip()
    if not transaction:
        raise BadRequest(MISSING_ATTRIBUTE, "Transaction UID is missing", TRANSACTION_UID_TAG)
    items = information.get("ReferencedSOPSequence")
    if not items:
        raise BadRequest(
            MISSING_ATTRIBUTE, "Referenced SOP Sequence missing or empty", REFERENCED_SOP_SEQUENCE_TAG
        )
    requested = []
    for number, item in enumerate(items, start=1):
        sop_class = str(item.get("ReferencedSOPClassUID", "") or "").strip()
        sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "").strip()
        if not sop_class or not sop_instance:
            raise BadRequest(
                INVALID_ARGUMENT_VALUE,
                f"Referenced SOP item {number} lacks a UID",
                REFERENCED_SOP_SEQUENCE_TAG,
            )
        requested.append({"sop_class_uid": sop_class, "sop_instance_uid": sop_instance})
    return transaction, requested


def judge(storage_log: StorageLog, requested: list[dict[str, str]]) -> dict[str, Any]:
    """Which requested instances radflow holds durably, and for each other one the Failure Reason
    (PS3.4 J.3.3: 0112 not available, 0119 stored under another SOP class) and why, for operations."""
    held = storage_log.durable(sorted({item["sop_instance_uid"] for item in requested}))
    committed: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for item in requested:
        row = held.get(item["sop_instance_uid"])
        if row is None:
            failed.append({**item, "failure_reason": NO_SUCH_OBJECT_INSTANCE, "why": "not stored"})
        elif row["sop_class_uid"] != item["sop_class_uid"]:
            why = f"stored as {row['sop_class_uid']}"
            failed.append({**item, "failure_reason": CLASS_INSTANCE_CONFLICT, "why": why})
        elif problem := _file_problem(str(row["path"]), int(row["size"])):
            # the row says stored but the bytes are not there as stored: not available, so the
            # modality sends it again (the storage SCP replaces the row)
            log.warning(
                "committed instance damaged on disk",
                extra={"sop_instance_uid": item["sop_instance_uid"], "problem": problem},
            )
            failed.append({**item, "failure_reason": NO_SUCH_OBJECT_INSTANCE, "why": problem})
        else:
            committed.append(item)
    return {"committed": committed, "failed": failed}


def _file_problem(path: str, size: int) -> str:
    try:
        actual = os.stat(path).st_size
    except OSError as error:
        return f"file unreadable: {type(error).__name__}"
    return "" if actual == size else f"file has {actual} bytes, stored {size}"


def _nodelay(event: Any) -> None:
    # pynetdicom leaves Nagle on; each report would wait for the peer's delayed ACK
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_guard_lock = threading.Lock()


def _guard_replies(assoc: Any) -> dict[int, threading.Event]:
    """Prepare an association for a send_*() from a thread other than its reactor; returns the
    N-ACTION message ids whose response is awaited, each with the event set once the response
    is queued on the connection.

    Also closes the window of pynetdicom issue #875 (DESIGN.md): the reactor tests its pause
    checkpoint, then reads the DIMSE queue; a sender that paused it in between finds its reply
    taken ("Received unexpected ... service message") and aborts after the DIMSE timeout. With
    Nagle off the reply can be that fast, so the reactor's non-blocking read yields nothing
    while a sender holds the pause (the same guard as the Orthanc bench's PYN_PATCH, on this
    association only)."""
    with _guard_lock:
        pending: dict[int, threading.Event] | None = assoc.__dict__.get("radflow_commitment_pending")
        if pending is not None:
            return pending
        awaited: dict[int, threading.Event] = {}
        dimse = assoc.dimse
        get_msg, send_msg = dimse.get_msg, dimse.send_msg
        checkpoint: threading.Event = assoc._reactor_checkpoint

        def guarded_get_msg(block: bool = False) -> Any:
            if not block and not checkpoint.is_set():
                return None, None
            return get_msg(block)

        def announcing_send_msg(primitive: Any, context_id: int) -> None:
            send_msg(primitive, context_id)
            responded = getattr(primitive, "MessageIDBeingRespondedTo", None)
            if isinstance(primitive, N_ACTION) and responded is not None:
                sent = awaited.pop(int(responded), None)
                if sent is not None:
                    sent.set()

        dimse.get_msg = guarded_get_msg
        dimse.send_msg = announcing_send_msg
        assoc.radflow_commitment_pending = awaited
        return awaited


def _ending(assoc: Any) -> str:
    """Why the association can no longer carry a report ('' when it can). A peer that asked to
    release is answered by the reactor, which a report would hold paused until its DIMSE
    timeout: such a peer gets its report on a new association."""
    if not assoc.is_established:
        return "the requesting association has ended"
    waiting = assoc.dul.peek_next_pdu()
    if isinstance(waiting, A_RELEASE):
        return "the requester is releasing the association"
    if isinstance(waiting, A_ABORT | A_P_ABORT):
        return "the requesting association is being aborted"
    return ""


def _wake_on_release(assoc: Any, stop: threading.Event) -> None:
    """While a report waits for its response: a peer that started to release ignores the report
    (pynetdicom: "received during association release, ignoring"), and the paused reactor leaves
    its A-RELEASE-RQ unanswered, so both sides would sit out the DIMSE timeout. Wake the sender
    instead; pynetdicom then aborts the association (as after a timeout) and the report goes on
    a new one."""
    while not stop.wait(0.005):
        if isinstance(assoc.dul.peek_next_pdu(), A_RELEASE | A_ABORT | A_P_ABORT):
            assoc.dimse.msg_queue.put((None, None))
            return


def _answered(answer: Dataset, how: str) -> str:
    if "Status" not in answer:
        raise TimeoutError(f"no N-EVENT-REPORT response ({how})")
    if int(answer.Status) != SUCCESS:
        raise RuntimeError(f"N-EVENT-REPORT answered 0x{int(answer.Status):04X} ({how})")
    return how


class StorageCommitmentScp:
    def __init__(
        self,
        settings: Settings,
        config: DicomConfig,
        storage_log: StorageLog,
        commitments: CommitmentLog,
        retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.ae_title = settings.ae_title
        self.config = config
        self.storage_log = storage_log
        self.commitments = commitments
        self.retry_delays_s = tuple(retry_delays_s)
        self.timeout_s = timeout_s

    # --- the N-ACTION, on the association's reactor thread ---------------------------------

    def handle_n_action(self, event: Any) -> tuple[Dataset, None]:
        requestor = event.assoc.requestor
        calling_ae = str(requestor.ae_title).strip()
        peer = f"{requestor.address}:{requestor.port}"
        try:
            try:
                information = event.action_information
            except Exception as error:  # undecodable Action Information
                raise BadRequest(INVALID_ARGUMENT_VALUE, f"Action Information unreadable: {error}") from error
            transaction, requested = requested_instances(event.request, information)
        except BadRequest as refused:
            log.warning(
                "n-action refused",
                extra={
                    "calling_ae": calling_ae,
                    "peer": peer,
                    "status": f"0x{refused.code:04X}",
                    "reason": refused.comment,
                },
            )
            return status(refused.code, refused.comment, refused.offending), None
        try:
            result = judge(self.storage_log, requested)
            event_type = SOME_FAILED if result["failed"] else ALL_COMMITTED
            self.commitments.record_request(
                transaction, calling_ae, peer, association_id(event.assoc), requested, result, event_type
            )
        except Exception:
            log.exception("storage commitment not recorded", extra={"transaction_uid": transaction})
            return status(PROCESSING_FAILURE, "request not recorded; please ask again"), None
        log.info(
            "storage commitment requested",
            extra={
                "transaction_uid": transaction,
                "calling_ae": calling_ae,
                "peer": peer,
                "committed": len(result["committed"]),
                "failed": len(result["failed"]),
            },
        )
        sent = threading.Event()
        _guard_replies(event.assoc)[int(event.request.MessageID)] = sent
        self._start(Report(transaction, calling_ae, event_type, result), event.assoc, sent)
        return status(SUCCESS), None

    # --- delivery, on a thread of its own ------------------------------------------------------

    def resume(self) -> int:
        """Send the reports a previous run owed but neither delivered nor gave up on."""
        since = (datetime.now(UTC) - RESUME_WINDOW).isoformat(timespec="microseconds")
        owed = self.commitments.owed(since)
        for row in owed:
            self._start(Report.from_row(row), None, None)
        if owed:
            log.info("resuming owed commitment reports", extra={"count": len(owed)})
        return len(owed)

    def _start(self, report: Report, assoc: Any | None, sent: threading.Event | None) -> None:
        threading.Thread(
            target=self._deliver,
            args=(report, assoc, sent),
            name=f"commitment-{report.transaction_uid[-12:]}",
            daemon=True,
        ).start()

    def _deliver(self, report: Report, assoc: Any | None, sent: threading.Event | None) -> None:
        """Same association first (when there is one), then new associations with back-off."""
        try:
            if assoc is not None and sent is not None:
                try:
                    self._delivered(report, self._on_same_association(report, assoc, sent))
                    return
                except Exception as same_failure:
                    self._attempt_failed(report, same_failure)
            error: Exception | None = None
            for delay in (0.0, *self.retry_delays_s):
                time.sleep(delay)
                try:
                    self._delivered(report, self._on_new_association(report))
                    return
                except UnknownPeer as unknown:
                    self._attempt_failed(report, unknown)
                    error = unknown
                    break
                except Exception as failure:
                    self._attempt_failed(report, failure)
                    error = failure
            self._give_up(report, error)
        except Exception:
            # a delivery thread must not die silently: the row still shows the report as owed
            log.exception("commitment delivery failed", extra={"transaction_uid": report.transaction_uid})
        finally:
            self.commitments.db.close()  # this thread's connection

    def _on_same_association(self, report: Report, assoc: Any, sent: threading.Event) -> str:
        deadline = time.monotonic() + RESPONSE_WAIT_S
        while not sent.wait(0.01):
            if not assoc.is_established or time.monotonic() > deadline:
                raise ConnectionError("the N-ACTION response did not go out on the requesting association")
        # a modality that will not wait for the report releases as soon as it has the response;
        # give its A-RELEASE-RQ a moment to arrive rather than send into the release
        time.sleep(RELEASE_GRACE_S)
        if why := _ending(assoc):
            raise ConnectionError(why)
        stop_watching = threading.Event()
        threading.Thread(
            target=_wake_on_release, args=(assoc, stop_watching), name="commitment-watch", daemon=True
        ).start()
        try:
            answer, _ = assoc.send_n_event_report(
                report.information(self.ae_title),
                report.event_type,
                StorageCommitmentPushModel,
                WELL_KNOWN_INSTANCE,
                msg_id=next(_message_ids) % 65535 + 1,
            )
        finally:
            stop_watching.set()
        return _answered(answer, "same association")

    def _on_new_association(self, report: Report) -> str:
        peer = self.config.peers.get(report.calling_ae)
        if peer is None:
            raise UnknownPeer(f"{report.calling_ae!r} is not a configured peer and its association has ended")
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(StorageCommitmentPushModel)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        # PS3.4 J.3.3: on a new association the SCP is the requestor and proposes the SCP role
        assoc = associate(
            ae,
            peer.host,
            peer.port,
            ae_title=peer.ae_title,
            ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)],
            evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)],
        )
        where = f"new association to {peer.ae_title}@{peer.host}:{peer.port}"
        if not assoc.is_established:
            raise ConnectionError(f"{where} not established")
        try:
            _guard_replies(assoc)
            answer, _ = assoc.send_n_event_report(
                report.information(self.ae_title),
                report.event_type,
                StorageCommitmentPushModel,
                WELL_KNOWN_INSTANCE,
                msg_id=next(_message_ids) % 65535 + 1,
            )
            return _answered(answer, where)
        finally:
            if assoc.is_established:
                assoc.release()

    def _delivered(self, report: Report, how: str) -> None:
        self.commitments.record_delivered(report.transaction_uid, how)
        log.info("commitment report delivered", extra={"transaction_uid": report.transaction_uid, "how": how})

    def _attempt_failed(self, report: Report, error: Exception) -> None:
        reason = f"{type(error).__name__}: {error}"
        log.warning(
            "commitment report not delivered",
            extra={
                "transaction_uid": report.transaction_uid,
                "calling_ae": report.calling_ae,
                "reason": reason,
            },
        )
        try:
            self.commitments.record_attempt_failed(report.transaction_uid, reason)
        except Exception:
            log.exception(
                "could not record a delivery failure", extra={"transaction_uid": report.transaction_uid}
            )

    def _give_up(self, report: Report, error: Exception | None) -> None:
        reason = f"{type(error).__name__}: {error}" if error else "no attempt left"
        log.error(
            "commitment report undeliverable",
            extra={
                "transaction_uid": report.transaction_uid,
                "calling_ae": report.calling_ae,
                "reason": reason,
            },
        )
        self.commitments.record_undeliverable(report.transaction_uid, reason)


def storage_commitment_service(
    settings: Settings,
    config: DicomConfig,
    storage_log: StorageLog,
    *,
    retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
    timeout_s: float = TIMEOUT_S,
    resume: bool = True,
) -> DicomService:
    """The Storage Commitment SCP for `start_dicom_server`; with `resume`, also resumes reports
    a previous run still owed (the requests are in the storage log's database): one process of
    those sharing the port does that."""
    commitments = CommitmentLog(storage_log.db)
    commitments.create_schema()
    scp = StorageCommitmentScp(settings, config, storage_log, commitments, retry_delays_s, timeout_s)
    if resume:
        scp.resume()
    return DicomService(
        "storage-commitment", [StorageCommitmentPushModel], [(evt.EVT_N_ACTION, scp.handle_n_action)]
    )
