"""Query/Retrieve SCP (Patient Root and Study Root: C-FIND, C-MOVE, C-GET; IHE RAD-14/16),
answering from the PACS index projection and sending the files as they were received.

C-FIND follows the worklist: the identifier is compiled once (interfaces/dicom/matching), SQL
narrows by indexed columns (interfaces/dicom/pacs_query), the matching rules decide.

C-MOVE and C-GET do their sub-operations themselves rather than through pynetdicom 3.0.4's
Query/Retrieve service class, which re-encodes every data set it sends, opens the C-MOVE
association with Nagle on and its reactor racing for the C-STORE responses (pynetdicom #875),
and answers refusals without an Error Comment. The handler runs inside that service class (the
AE dispatches by SOP class), does all the exchanges, sends the final response itself and then
lets the service class finish with "no sub-operations", whose response is dropped (see `_Muted`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import queue
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext, build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from adapters.dicom_config import DicomConfig, Peer
from adapters.settings import Settings
from adapters.sql import Database
from interfaces.dicom.header import split_part10
from interfaces.dicom.matching import InvalidQuery
from interfaces.dicom.pacs_query import (
    FAILED_SOP_INSTANCE_UID_LIST,
    PATIENT_ROOT,
    STUDY_ROOT,
    candidates,
    compile_find,
    order_instances,
    retrieve_keys,
    select,
    select_instances,
)
from interfaces.dicom.reactor import EventDrivenDul, associate
from interfaces.dicom.server import DicomService, association_id
from interfaces.dicom.status import status
from interfaces.dicom.worklist import character_set, requested_character_sets

log = logging.getLogger("radflow.dicom.qr")

FIND_MODELS = {
    str(PatientRootQueryRetrieveInformationModelFind): PATIENT_ROOT,
    str(StudyRootQueryRetrieveInformationModelFind): STUDY_ROOT,
}
MOVE_MODELS = {
    str(PatientRootQueryRetrieveInformationModelMove): PATIENT_ROOT,
    str(StudyRootQueryRetrieveInformationModelMove): STUDY_ROOT,
}
GET_MODELS = {
    str(PatientRootQueryRetrieveInformationModelGet): PATIENT_ROOT,
    str(StudyRootQueryRetrieveInformationModelGet): STUDY_ROOT,
}
STORAGE_CLASSES = frozenset(str(c.abstract_syntax) for c in AllStoragePresentationContexts)
# what a file held in another uncompressed syntax is converted to when the peer refuses its own
NATIVE = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))
UNCOMPRESSED = frozenset({*NATIVE, "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})

# statuses (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4; PS3.7 C)
SUCCESS = 0x0000
PENDING = 0xFF00
PENDING_WITH_UNSUPPORTED_KEYS = 0xFF01
CANCELLED = 0xFE00
WARNING_SUBOPERATIONS = 0xB000
OUT_OF_RESOURCES_MATCHES = 0xA701
OUT_OF_RESOURCES_SUBOPERATIONS = 0xA702
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000
STORE_FAILED = 0xA700  # recorded for a sub-operation radflow could not even send

STORE_TIMEOUT_S = 30.0  # a peer silent this long after a C-STORE request has gone
MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: odd context ids 1..255


def _peer(assoc: Any) -> dict[str, str]:
    requestor = assoc.requestor
    return {"calling_ae": str(requestor.ae_title).strip(), "peer": f"{requestor.address}:{requestor.port}"}


# --- sending stored files -----------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    status: int
    reason: str = ""

    @property
    def kind(self) -> str:
        if self.status == SUCCESS:
            return "completed"
        if self.status & 0xF000 == 0xB000 or self.status == 0x0001:
            return "warning"
        return "failed"


class PeerGone(Exception):
    """The association carrying the C-STOREs ended: nothing more can be sent on it."""


def read_stored(path: Path) -> tuple[str | None, bytes | memoryview]:
    """A Part-10 file's Transfer Syntax UID and its data set exactly as encoded (what follows
    the meta group). radflow's own files are split at their meta group's length (pydicom's
    parse of the group was 0.26 ms of each C-STORE sub-operation); others are read by pydicom."""
    raw = path.read_bytes()
    try:
        return split_part10(raw)
    except ValueError:
        pass
    with BytesIO(raw) as fp:  # already read: not opened a second time
        read_preamble(fp, False)
        meta = read_dataset(
            fp, is_implicit_VR=False, is_little_endian=True, stop_when=lambda tag, *_: tag.group != 2
        )
        syntax = meta.get("TransferSyntaxUID")
        return (str(syntax) if syntax else None), fp.read()


def _gone(assoc: Any) -> bool:
    return bool(assoc.is_aborted or assoc.is_released or not assoc.dul.is_alive() or assoc.acse.is_aborted())


class StoreSender:
    """C-STORE sub-operations on one association, each file sent byte-exact when the peer
    accepted the syntax it is held in, converted (decoded) only between uncompressed syntaxes.

    Responses are taken from the DIMSE queue by the waiting thread only: for an association
    radflow requested, `guard_reactor` keeps pynetdicom's reactor thread off that queue (#875);
    for C-GET the handler runs on the reactor thread itself. Inside `replies_read_here`, the
    waiting thread also reads them off the socket (EventDrivenDul.lent)."""

    def __init__(self, assoc: Any, originator: tuple[str, int] | None = None) -> None:
        self.assoc = assoc
        self.originator = originator
        self._next_id = 0
        self._dul: EventDrivenDul | None = None  # lent to this thread
        contexts: dict[tuple[str, str], int] = {}
        for context in assoc.accepted_contexts:
            if context.as_scu:
                key = (str(context.abstract_syntax), str(context.transfer_syntax[0]))
                contexts.setdefault(key, int(context.context_id))
        self._contexts = contexts

    def send(self, row: Mapping[str, Any]) -> Outcome:
        sop_class, sop_instance = str(row["sop_class_uid"]), str(row["sop_instance_uid"])
        try:
            stored_syntax, data = read_stored(Path(row["path"]))
        except OSError as error:
            log.error(
                "stored file unreadable", extra={"sop_instance_uid": sop_instance, "error": error.strerror}
            )
            return Outcome(STORE_FAILED, f"stored file unreadable: {error.strerror}")
        except Exception as error:
            log.error("stored file undecodable", extra={"sop_instance_uid": sop_instance})
            return Outcome(STORE_FAILED, f"stored file undecodable: {type(error).__name__}")
        syntax = stored_syntax or str(row["transfer_syntax"])
        context_id = self._contexts.get((sop_class, syntax))
        if context_id is None:
            converted = self._convert(row, syntax)
            if isinstance(converted, Outcome):
                return converted
            context_id, data = converted
        self._next_id = self._next_id % 65535 + 1
        request = C_STORE()
        request.MessageID = self._next_id
        request.AffectedSOPClassUID = UID(sop_class)
        request.AffectedSOPInstanceUID = UID(sop_instance)
        request.Priority = 0x0000
        if self.originator is not None:
            request.MoveOriginatorApplicationEntityTitle = self.originator[0]
            request.MoveOriginatorMessageID = self.originator[1]
        request.DataSet = BytesIO(data)
        self.assoc.dimse.send_msg(request, context_id)
        return self._response(request.MessageID, sop_instance)

    def _convert(self, row: Mapping[str, Any], syntax: str) -> tuple[int, bytes] | Outcome:
        sop_class, sop_instance = str(row["sop_class_uid"]), str(row["sop_instance_uid"])
        target = next(
            ((ts, self._contexts[(sop_class, ts)]) for ts in NATIVE if (sop_class, ts) in self._contexts),
            None,
        )
        if target is None or syntax not in UNCOMPRESSED:
            offered = sorted(ts for cls, ts in self._contexts if cls == sop_class)
            reason = f"peer accepted no context for {sop_class} in {syntax}" + (
                f" (has {', '.join(offered)})" if offered else ""
            )
            log.warning("no presentation context", extra={"sop_instance_uid": sop_instance, "reason": reason})
            return Outcome(STORE_FAILED, reason)
        ts = UID(target[0])
        dataset = dcmread(row["path"])
        encoded = encode(dataset, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
        if encoded is None:
            return Outcome(STORE_FAILED, f"could not convert to {ts}")
        log.info(
            "converted for the peer", extra={"sop_instance_uid": sop_instance, "from": syntax, "to": str(ts)}
        )
        return target[1], encoded

    @contextlib.contextmanager
    def replies_read_here(self) -> Iterator[None]:
        dul = self.assoc.dul
        if not isinstance(dul, EventDrivenDul):
            yield
            return
        with dul.lent() as lent:
            self._dul = dul if lent else None
            try:
                yield
            finally:
                self._dul = None

    def _next_reply(self) -> Any:
        """The next DIMSE message: read here by the DUL's passes when it is lent, else taken
        from the queue the DUL thread fills. queue.Empty after 0.2 s of nothing."""
        replies = self.assoc.dimse.msg_queue
        if self._dul is None:
            return replies.get(timeout=0.2)[1]
        self._dul.serve(lambda: bool(replies.qsize()) or _gone(self.assoc), 0.2)
        return replies.get(block=False)[1]

    def _response(self, message_id: int, sop_instance: str) -> Outcome:
        deadline = time.monotonic() + STORE_TIMEOUT_S
        while True:
            try:
                response = self._next_reply()
            except queue.Empty:
                if _gone(self.assoc):
                    raise PeerGone("the association ended while waiting for a C-STORE response") from None
                if time.monotonic() > deadline:
                    self.assoc.abort()
                    raise PeerGone(f"no C-STORE response within {STORE_TIMEOUT_S:.0f} s") from None
                continue
            if response is None:  # the DUL's signal that the connection closed
                raise PeerGone("the association ended while waiting for a C-STORE response")
            if (
                isinstance(response, C_STORE)
                and response.is_valid_response
                and response.MessageIDBeingRespondedTo == message_id
            ):
                status = int(response.Status or 0)
                comment = str(response.ErrorComment or "")
                if status != SUCCESS:
                    log.warning(
                        "c-store sub-operation refused",
                        extra={
                            "sop_instance_uid": sop_instance,
                            "status": f"0x{status:04X}",
                            "comment": comment,
                        },
                    )
                return Outcome(status, comment or f"peer answered 0x{status:04X}")
            log.warning(
                "unexpected DIMSE message during sub-operations", extra={"type": type(response).__name__}
            )


def guard_reactor(assoc: Any) -> None:
    """Keep pynetdicom's reactor thread from taking C-STORE responses off the DIMSE queue.

    After `send_*()` pauses the reactor, the reactor may already be past its checkpoint and pop
    the peer's reply (pynetdicom #875); with Nagle off and a fast peer that happens, and the
    sender then waits for a reply that never comes. On an association radflow requested only to
    send, the reactor has nothing to take: its non-blocking polls get nothing, always."""
    blocking_get = assoc.dimse.get_msg

    def get_msg(block: bool = False) -> tuple[Any, Any]:
        return blocking_get(block=True) if block else (None, None)

    assoc.dimse.get_msg = get_msg


def _on_connection_open(event: Any) -> None:
    # pynetdicom leaves Nagle on; with delayed ACKs every C-STORE would wait ~40-90 ms
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def storage_contexts(rows: Sequence[Mapping[str, Any]]) -> list[PresentationContext]:
    """Per SOP class: one context per syntax it is held in (the peer can accept each as is) and
    one offering Explicit/Implicit VR Little Endian to convert uncompressed files to."""
    wanted: dict[tuple[str, ...], None] = {}
    for row in rows:
        wanted[(row["sop_class_uid"], row["transfer_syntax"])] = None
    for sop_class in dict.fromkeys(row["sop_class_uid"] for row in rows):
        wanted[(sop_class, *NATIVE)] = None
    contexts = [build_context(key[0], list(key[1:])) for key in wanted]
    if len(contexts) > MAX_CONTEXTS:
        log.warning(
            "too many presentation contexts; some instances may fail", extra={"needed": len(contexts)}
        )
    return contexts[:MAX_CONTEXTS]


# --- C-MOVE / C-GET responses -------------------------------------------------------------------


@dataclass
class Tally:
    remaining: int = 0
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)
    first_failure: str = ""

    def count(self, sop_instance: str, outcome: Outcome) -> None:
        self.remaining -= 1
        kind = outcome.kind
        if kind == "completed":
            self.completed += 1
        elif kind == "warning":
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(sop_instance)
            self.first_failure = self.first_failure or outcome.reason

    def fail_rest(self, uids: Sequence[str], reason: str) -> None:
        self.failed += len(uids)
        self.remaining -= len(uids)
        self.failed_uids += list(uids)
        self.first_failure = self.first_failure or reason


class Responder:
    """Sends the C-MOVE / C-GET responses of one request on the requesting association."""

    def __init__(self, event: Any, primitive: type[C_GET] | type[C_MOVE]) -> None:
        self.assoc = event.assoc
        self.request = event.request
        self.context_id = int(event.context.context_id)
        self.syntax = UID(str(event.context.transfer_syntax))
        self.primitive = primitive
        self.final_sent = False

    def _response(self, status: int) -> Any:
        response = self.primitive()
        response.MessageIDBeingRespondedTo = self.request.MessageID
        response.AffectedSOPClassUID = self.request.AffectedSOPClassUID
        response.Status = status
        return response

    def pending(self, tally: Tally) -> None:
        response = self._response(PENDING)
        response.NumberOfRemainingSuboperations = tally.remaining
        response.NumberOfCompletedSuboperations = tally.completed
        response.NumberOfFailedSuboperations = tally.failed
        response.NumberOfWarningSuboperations = tally.warning
        self.assoc.dimse.send_msg(response, self.context_id)

    def final(
        self, status: int, tally: Tally | None = None, comment: str = "", offending: int | None = None
    ) -> None:
        response = self._response(status)
        if comment and status not in (SUCCESS, WARNING_SUBOPERATIONS, CANCELLED):
            response.ErrorComment = comment[:64]
        if offending is not None:
            response.OffendingElement = [BaseTag(offending)]
        if tally is not None:
            if status == CANCELLED:
                response.NumberOfRemainingSuboperations = tally.remaining
            response.NumberOfCompletedSuboperations = tally.completed
            response.NumberOfFailedSuboperations = tally.failed
            response.NumberOfWarningSuboperations = tally.warning
            if tally.failed_uids:
                identifier = Dataset()
                identifier.add_new(FAILED_SOP_INSTANCE_UID_LIST, "UI", tally.failed_uids)
                encoded = encode(
                    identifier,
                    self.syntax.is_implicit_VR,
                    self.syntax.is_little_endian,
                    self.syntax.is_deflated,
                )
                response.Identifier = BytesIO(encoded or b"")
        self.assoc.dimse.send_msg(response, self.context_id)
        self.final_sent = True


class _Muted:
    """Drops the one response pynetdicom's Query/Retrieve service class sends after the handler
    returned "no sub-operations": the handler has already sent the real final response."""

    def __init__(self, dimse: Any, message_id: int) -> None:
        self.dimse = dimse
        self.message_id = message_id
        self.previous = dimse.__dict__.get("send_msg")
        self.send = self.previous or dimse.send_msg
        dimse.send_msg = self

    def __call__(self, primitive: Any, context_id: int) -> None:
        if isinstance(primitive, (C_GET, C_MOVE)) and primitive.MessageIDBeingRespondedTo == self.message_id:
            if self.previous is None:
                del self.dimse.send_msg
            else:
                self.dimse.send_msg = self.previous
            return
        self.send(primitive, context_id)


# --- the handlers -------------------------------------------------------------------------------


class QueryRetrieve:
    """The EVT_C_FIND / EVT_C_MOVE / EVT_C_GET handlers; one instance per AE, any thread."""

    def __init__(
        self, ae_title: str, config: DicomConfig, db: Database, retrievals: RetrievalLog | None = None
    ) -> None:
        self.ae_title = ae_title
        self.config = config
        self.db = db
        self.retrievals = retrievals

    # C-FIND

    def handle_find(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        peer = _peer(event.assoc)
        model = FIND_MODELS.get(str(event.request.AffectedSOPClassUID))
        if model is None:
            yield (
                status(UNABLE_TO_PROCESS, f"not a Query/Retrieve model: {event.request.AffectedSOPClassUID}"),
                None,
            )
            return
        try:
            identifier = event.identifier
            level, query = compile_find(identifier, model)
            requested = requested_character_sets(identifier)
        except InvalidQuery as error:
            log.info("c-find refused", extra={**peer, "reason": str(error)})
            yield status(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(error), int(error.tag)), None
            return
        except Exception as error:
            log.info("c-find unreadable", extra={**peer, "error": type(error).__name__})
            yield (
                status(UNABLE_TO_PROCESS, f"identifier could not be decoded: {type(error).__name__}"),
                None,
            )
            return
        try:
            items = candidates(level, self.db.query(*select(level, query)), self.ae_title)
        except Exception:
            log.exception("c-find: PACS index unavailable", extra=peer)
            yield status(UNABLE_TO_PROCESS, "PACS index unavailable, try again later"), None
            return
        pending = PENDING_WITH_UNSUPPORTED_KEYS if query.all_unsupported() else PENDING
        matches = 0
        try:
            for item in items:
                if not query.matches(item):
                    continue
                if event.is_cancelled:
                    log.info("c-find cancelled", extra={**peer, "level": level, "matches": matches})
                    yield CANCELLED, None
                    return
                response = query.respond(item)
                response.QueryRetrieveLevel = level
                if "RetrieveAETitle" not in response:
                    response.RetrieveAETitle = self.ae_title
                charset = character_set(requested, response)
                if charset is not None:
                    response.SpecificCharacterSet = charset
                matches += 1
                yield pending, response
        except Exception:
            log.exception("c-find failed", extra={**peer, "level": level, "matches": matches})
            yield status(UNABLE_TO_PROCESS, "a match could not be answered"), None
            return
        log.info(
            "c-find",
            extra={**peer, "model": model, "level": level, "candidates": len(items), "matches": matches},
        )

    # C-MOVE / C-GET

    def handle_move(self, event: Any) -> Iterator[Any]:
        self._retrieve(event, C_MOVE, MOVE_MODELS)
        # the service class now wants a destination and a number of sub-operations: zero makes it
        # answer at once, without associating, and that answer is muted
        return iter([("127.0.0.1", 0), 0])

    def handle_get(self, event: Any) -> Iterator[Any]:
        self._retrieve(event, C_GET, GET_MODELS)
        return iter([0])

    def _retrieve(self, event: Any, primitive: type[C_GET] | type[C_MOVE], models: dict[str, str]) -> None:
        responder = Responder(event, primitive)
        try:
            self._run(event, responder, models)
        except Exception:
            log.exception("retrieve failed", extra=_peer(event.assoc))
            if not responder.final_sent:
                responder.final(UNABLE_TO_PROCESS, comment="internal error while retrieving")
        finally:
            if not responder.final_sent:  # cannot happen; never leave the requester waiting
                responder.final(UNABLE_TO_PROCESS, comment="retrieve ended without an answer")
            _Muted(event.assoc.dimse, int(event.request.MessageID))

    def _run(self, event: Any, responder: Responder, models: dict[str, str]) -> None:
        peer = _peer(event.assoc)
        request = event.request
        name = "c-move" if isinstance(request, C_MOVE) else "c-get"
        model = models.get(str(request.AffectedSOPClassUID))
        if model is None:
            responder.final(UNABLE_TO_PROCESS, comment=f"not a retrieve model: {request.AffectedSOPClassUID}")
            return
        try:
            keys = retrieve_keys(event.identifier, model)
        except InvalidQuery as error:
            log.info(f"{name} refused", extra={**peer, "reason": str(error)})
            responder.final(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, comment=str(error), offending=int(error.tag))
            return
        except Exception as error:
            log.info(f"{name} unreadable", extra={**peer, "error": type(error).__name__})
            responder.final(
                UNABLE_TO_PROCESS, comment=f"identifier could not be decoded: {type(error).__name__}"
            )
            return
        destination: Peer | None = None
        if isinstance(request, C_MOVE):
            title = str(request.MoveDestination or "").strip()
            destination = self.config.peers.get(title)
            if destination is None:
                log.warning("c-move to an unknown destination", extra={**peer, "destination": title})
                responder.final(
                    MOVE_DESTINATION_UNKNOWN, comment=f"move destination {title!r} is not configured"
                )
                return
        try:
            rows = order_instances(self.db.query(*select_instances(keys)))
        except Exception:
            log.exception(f"{name}: PACS index unavailable", extra=peer)
            responder.final(UNABLE_TO_PROCESS, comment="PACS index unavailable, try again later")
            return
        tally = Tally(remaining=len(rows))
        if not rows:
            log.info(name, extra={**peer, "level": keys.level, "instances": 0})
            responder.final(SUCCESS, tally)
            return
        if len(rows) > 65535:  # the counts are US
            responder.final(
                OUT_OF_RESOURCES_MATCHES, comment=f"{len(rows)} instances: more than one retrieve can count"
            )
            return
        started = time.perf_counter()
        if destination is None:
            sender = StoreSender(event.assoc)
            with sender.replies_read_here():
                self._send_all(event, responder, tally, sender, rows)
        else:
            self._move(event, responder, tally, destination, rows)
        self._record(event, name, destination, rows, tally)
        log.info(
            name,
            extra={
                **peer,
                "level": keys.level,
                "destination": destination.ae_title if destination else "",
                "completed": tally.completed,
                "failed": tally.failed,
                "warning": tally.warning,
                "ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )

    def _record(self, event: Any, name: str, destination: Peer | None, rows: list[Any], tally: Tally) -> None:
        """Which instances this retrieve sent (or failed to), on the requesting association's
        audit row: an auditor asks what left the PACS, not only how many."""
        if self.retrievals is None:
            return
        failed = set(tally.failed_uids)
        sent = [
            (
                str(r["study_instance_uid"]),
                str(r["sop_instance_uid"]),
                "failed" if r["sop_instance_uid"] in failed else "sent",
            )
            for r in rows[: len(rows) - tally.remaining]
        ]
        target = destination.ae_title if destination else str(event.assoc.requestor.ae_title).strip()
        try:
            self.retrievals.record_retrieval(association_id(event.assoc), name, target, sent)
        except Exception:  # the answer went out already; a lost audit row is logged, not raised
            log.exception("recording a retrieve failed", extra=_peer(event.assoc))

    def _move(
        self, event: Any, responder: Responder, tally: Tally, destination: Peer, rows: list[Any]
    ) -> None:
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = 10
        ae.dimse_timeout = STORE_TIMEOUT_S
        ae.network_timeout = 60
        assoc = associate(
            ae,
            destination.host,
            destination.port,
            contexts=storage_contexts(rows),
            ae_title=destination.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, _on_connection_open)],
        )
        if not assoc.is_established:
            reason = f"could not associate with {destination.ae_title}"
            log.warning("c-move destination unreachable", extra={"destination": destination.ae_title})
            tally.fail_rest([r["sop_instance_uid"] for r in rows], reason)
            responder.final(OUT_OF_RESOURCES_SUBOPERATIONS, tally, comment=reason)
            return
        guard_reactor(assoc)
        originator = (str(event.assoc.requestor.ae_title).strip(), int(event.request.MessageID))
        sender = StoreSender(assoc, originator)
        try:
            with sender.replies_read_here():
                self._send_all(event, responder, tally, sender, rows)
        finally:
            if assoc.is_established:
                assoc.release()

    def _send_all(
        self, event: Any, responder: Responder, tally: Tally, sender: StoreSender, rows: list[Any]
    ) -> None:
        for index, row in enumerate(rows):
            if event.is_cancelled:
                log.info("retrieve cancelled", extra={**_peer(event.assoc), "remaining": tally.remaining})
                responder.final(CANCELLED, tally)
                return
            try:
                outcome = sender.send(row)
            except PeerGone as gone:
                log.warning("c-store association lost", extra={"reason": str(gone)})
                tally.fail_rest([r["sop_instance_uid"] for r in rows[index:]], str(gone))
                break
            tally.count(row["sop_instance_uid"], outcome)
            if tally.remaining:
                responder.pending(tally)
        if not tally.failed and not tally.warning:
            responder.final(SUCCESS, tally)
        elif tally.completed or tally.warning:
            responder.final(WARNING_SUBOPERATIONS, tally)
        else:
            responder.final(
                OUT_OF_RESOURCES_SUBOPERATIONS, tally, comment=f"no instance sent: {tally.first_failure}"
            )

    # C-GET role negotiation

    def handle_requested(self, event: Any) -> None:
        """Let a C-GET requester take the Storage SCP role it proposed (PS3.7 D.3.3.4), on this
        association's own copies of the AE's contexts (the list the association starts with
        holds the server's own: server._copy_contexts). Explicit VR Little Endian goes first,
        so a file received in it (the usual case) goes back unchanged."""
        assoc = event.assoc
        proposed = {str(c.abstract_syntax) for c in assoc.requestor.requested_contexts}
        if not proposed & set(GET_MODELS):
            return
        roles = {str(uid): item for uid, item in assoc.requestor.role_selection.items()}
        wanted = [uid for uid, item in roles.items() if item.scp_role and uid in STORAGE_CLASSES]
        if not wanted:
            return
        supported = {str(c.abstract_syntax): c for c in assoc.acceptor.supported_contexts}
        for uid in wanted:
            context = supported.get(uid)
            if context is None:
                # no storage service on this AE: the requester may not store to radflow here
                context = build_context(uid, ALL_TRANSFER_SYNTAXES)
                context.scu_role, context.scp_role = False, True
                supported[uid] = context
            else:
                context = copy.copy(context)
                context.scu_role, context.scp_role = True, True
                supported[uid] = context
            # reordered in place: the setter validates every UID again with a regular
            # expression, 15 ms for the ~120 storage classes getscu proposes
            syntaxes = context._transfer_syntax
            context._transfer_syntax = [
                *(ts for native in NATIVE for ts in syntaxes if ts == native),
                *(ts for ts in syntaxes if ts not in NATIVE),
            ]
        assoc.acceptor.supported_contexts = list(supported.values())


class RetrievalLog(Protocol):
    def record_retrieval(
        self, association_id: int, operation: str, destination: str, sent: list[tuple[str, str, str]]
    ) -> None: ...


def query_retrieve_service(
    settings: Settings,
    config: DicomConfig,
    db: Database | None = None,
    retrievals: RetrievalLog | None = None,
) -> DicomService:
    """Query/Retrieve as one service of radflow's AE, reading the PACS index projection."""
    # pynetdicom decodes and logs every identifier at INFO, patient names included
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    qr = QueryRetrieve(
        settings.ae_title,
        config,
        db or Database.for_file(settings, settings.projections_sqlite_path),
        retrievals,
    )
    return DicomService(
        "query-retrieve",
        [*FIND_MODELS, *MOVE_MODELS, *GET_MODELS],
        [
            (evt.EVT_C_FIND, qr.handle_find),
            (evt.EVT_C_MOVE, qr.handle_move),
            (evt.EVT_C_GET, qr.handle_get),
            (evt.EVT_REQUESTED, qr.handle_requested),
        ],
    )
