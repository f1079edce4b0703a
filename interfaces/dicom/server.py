"""radflow's DICOM AE: one pynetdicom server whose services (verification, worklist, MPPS,
storage, query/retrieve, storage commitment) each contribute presentation contexts and handlers.

The server itself logs every association (calling AE, peer, what was exchanged, how it ended)
and enforces the calling-AE allow-list with a proper A-ASSOCIATE-RJ.
"""

from __future__ import annotations

import copy
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydicom import config as pydicom_config
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt, transport
from pynetdicom import _config as pynetdicom_config
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from adapters.dicom_config import DicomConfig
from adapters.settings import Settings
from interfaces.dicom import identifier_encoding
from interfaces.dicom.reactor import EventDrivenRequestHandler

log = logging.getLogger("radflow.dicom")


@dataclass
class DicomService:
    """What one service adds to the AE: SCP SOP classes and event handlers."""

    name: str
    sop_classes: Sequence[Any]
    handlers: Sequence[tuple[Any, Any]] = field(default_factory=list)
    transfer_syntaxes: Sequence[str] | None = None
    # called with the association's log id and the DIMSE requests it carried, by name
    on_association_end: Callable[[int, dict[str, int]], None] | None = None


class AssociationLog(Protocol):
    def association_opened(
        self, calling_ae: str, called_ae: str, peer: str, status: str, reason: str = ""
    ) -> int: ...

    def association_closed(self, association_id: int, status: str, exchanged: dict[str, int]) -> None: ...


# writes association log rows beside the associations (AssociationTracker._accepted); one
# per process, shared by its servers
LOG_WRITER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="association-log")
# an ended association's closing row and end hooks (storage batches what it received, in one
# transaction over all its instances): apart, so that they never hold up a new association's
# opened row, which its first C-STORE waits for
ENDINGS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="association-end")


def association_id(assoc: Any) -> int:
    """The association's row in the association log (0 when none is kept). The row is written
    while the association gets going (AssociationTracker._accepted): the first caller that
    needs its id waits for that write."""
    opened: Future[int] | None = getattr(assoc, "radflow_opened", None)
    if opened is not None and not hasattr(assoc, "radflow_id"):
        try:
            assoc.radflow_id = opened.result()
        except Exception:
            log.exception("could not log the association")
            assoc.radflow_id = 0
    return int(getattr(assoc, "radflow_id", 0))


class _GatedAE(AE):
    """An AE whose calling-AE allow-list is decided per association (title and host): the
    EVT_REQUESTED handler runs in the association's thread right before pynetdicom checks
    `require_calling_aet`, so a thread-local answer gives a standard A-ASSOCIATE-RJ."""

    _decision = threading.local()

    @property  # type: ignore[override]
    def require_calling_aet(self) -> list[str]:
        return list(getattr(self._decision, "allowed", None) or [])

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        del ae_titles  # decided per association by `decide`

    def decide(self, allowed: list[str] | None) -> None:
        self._decision.allowed = allowed


def _on_echo(event: Any) -> int:
    requestor = event.assoc.requestor
    log.info(
        "c-echo", extra={"calling_ae": requestor.ae_title, "peer": f"{requestor.address}:{requestor.port}"}
    )
    return 0x0000


def _on_open(event: Any) -> None:
    # pynetdicom leaves Nagle on; with delayed ACKs every reply would wait ~40-90 ms
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


VERIFICATION = DicomService("verification", [Verification], [(evt.EVT_C_ECHO, _on_echo)])


_CONTEXT_RESULTS = {
    0x01: "user rejection",
    0x02: "no reason",
    0x03: "SOP class not supported",
    0x04: "transfer syntaxes not supported",
}


def rejected_contexts(assoc: Any) -> str:
    """The presentation contexts negotiation turned down, named with the reason (PS3.8 9.3.3.2)."""
    parts = []
    for context in assoc.rejected_contexts:
        name = getattr(context.abstract_syntax, "name", "") or str(context.abstract_syntax)
        parts.append(f"{name} ({_CONTEXT_RESULTS.get(context.result, context.result)})")
    return "; ".join(parts)[:1000]


def route_interventions(services: Sequence[DicomService]) -> list[tuple[Any, Any]]:
    """Each service's handlers, with one change: pynetdicom keeps a single handler per
    intervention event (C-FIND, N-ACTION, ...), so where several services answer the same event
    (the worklist and Query/Retrieve both answer C-FIND) one handler picks the service by the
    SOP class of the presentation context the request came on."""
    by_event: dict[Any, list[tuple[frozenset[str], Any]]] = {}
    routed: list[tuple[Any, Any]] = []
    for service in services:
        for event_type, handler in service.handlers:
            if isinstance(event_type, evt.InterventionEvent):
                by_event.setdefault(event_type, []).append(
                    (frozenset(map(str, service.sop_classes)), handler)
                )
            else:
                routed.append((event_type, handler))
    for event_type, candidates in by_event.items():
        if len(candidates) == 1:
            routed.append((event_type, candidates[0][1]))
            continue

        def dispatch(event: Any, candidates: list[tuple[frozenset[str], Any]] = candidates) -> Any:
            syntax = str(event.context.abstract_syntax)
            for sop_classes, handler in candidates:
                if syntax in sop_classes:
                    return handler(event)
            raise LookupError(f"no service for {syntax}")  # contexts come from the same lists

        routed.append((event_type, dispatch))
    return routed


class AssociationTracker:
    """Opens a log row per association, closes it with the DIMSE messages it carried and tells
    the services when it ended (storage batches what it received then)."""

    def __init__(
        self,
        ae: _GatedAE,
        config: DicomConfig,
        association_log: AssociationLog | None,
        on_end: Sequence[Callable[[int, dict[str, int]], None]],
    ) -> None:
        self._ae = ae
        self._config = config
        self._log = association_log
        self._on_end = list(on_end)

    def handlers(self) -> list[tuple[Any, Any]]:
        return [
            (evt.EVT_REQUESTED, self._requested),
            (evt.EVT_ACCEPTED, self._accepted),
            (evt.EVT_REJECTED, self._rejected),
            (evt.EVT_RELEASED, self._released),
            (evt.EVT_ABORTED, self._aborted),
        ]

    def _requested(self, event: Any) -> None:
        requestor = event.assoc.requestor
        calling = str(event.assoc.requestor.primitive.calling_ae_title).strip()
        why = self._config.refusal(calling, str(requestor.address))
        event.assoc.radflow_refusal = why
        # pynetdicom rejects when the list is non-empty and lacks the caller
        self._ae.decide(["-- refused --"] if why else None)

    def _accepted(self, event: Any) -> None:
        requestor = event.assoc.requestor
        peer = f"{requestor.address}:{requestor.port}"
        calling = str(requestor.ae_title).strip()
        refused = rejected_contexts(event.assoc)
        log.info("association accepted", extra={"calling_ae": calling, "peer": peer})
        if refused:
            # an SOP class or transfer syntax we do not serve: the peer will abort or skip
            # those objects, so say which, where operations look
            log.warning("presentation contexts rejected", extra={"calling_ae": calling, "contexts": refused})
        if self._log is None:
            return
        # written beside the association, not before its first request: the commit (an fsync)
        # was 2.5 ms of every association's first reply (py-spy, 30 x echoscu)
        event.assoc.radflow_opened = LOG_WRITER.submit(
            self._log.association_opened,
            calling,
            str(event.assoc.acceptor.ae_title).strip(),
            peer,
            "open",
            f"rejected presentation contexts: {refused}" if refused else "",
        )

    def _rejected(self, event: Any) -> None:
        requestor = event.assoc.requestor
        calling = str(requestor.primitive.calling_ae_title).strip() if requestor.primitive else ""
        peer = f"{requestor.address}:{requestor.port}"
        reason = getattr(event.assoc, "radflow_refusal", "") or "rejected during negotiation"
        log.warning("association rejected", extra={"calling_ae": calling, "peer": peer, "reason": reason})
        if self._log is not None:
            LOG_WRITER.submit(self._log_rejected, self._log, calling, str(self._ae.ae_title), peer, reason)

    @staticmethod
    def _log_rejected(
        association_log: AssociationLog, calling: str, called: str, peer: str, reason: str
    ) -> None:
        try:
            association_log.association_opened(calling, called, peer, "rejected", reason)
        except Exception:
            log.exception("could not log the rejected association")

    def _released(self, event: Any) -> None:
        self._ended(event, "released")

    def _aborted(self, event: Any) -> None:
        self._ended(event, "aborted")

    def _ended(self, event: Any, status: str) -> None:
        """Handed to ENDINGS: pynetdicom counts an association against maximum_associations
        until its thread ends, and this thread would wait for the log row's commits (fsyncs,
        behind other writers). Eight findscu at a time on a slow disk then met 'local limit
        exceeded' with 32 allowed, all of them released."""
        # counted by the association's DIMSE provider (command_set.DirectDimse), by message type
        exchanged = dict(getattr(event.assoc.dimse, "received", None) or {})
        ENDINGS.submit(self._close, event.assoc, status, exchanged)

    def _close(self, assoc: Any, status: str, exchanged: dict[str, int]) -> None:
        assoc_id = association_id(assoc)  # waits for LOG_WRITER to write the opened row
        if not assoc_id:
            return
        if self._log is not None:
            try:
                self._log.association_closed(assoc_id, status, exchanged)
            except Exception:
                log.exception("could not close the association's log row")
        for callback in self._on_end:
            try:
                callback(assoc_id, exchanged)
            except Exception:
                log.exception("association end hook failed")


class DispatchingServer(transport.ThreadedAssociationServer):
    """A server that may hand an accepted connection to another process: `dispatch` returns
    True when it passed the socket on (api/dicom_processes.py), False to serve it here."""

    dispatch: Callable[[socket.socket, Any], bool] | None = None
    accepting = True  # False: no listening socket, no serve_forever loop to stop

    def shutdown(self) -> None:
        if self.accepting:
            super().shutdown()
        else:
            self.ae._servers.remove(self)

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.dispatch is not None and self.dispatch(request, client_address):
            request.close()  # only our descriptor: shutdown() would end the receiver's connection
            return
        super().process_request(request, client_address)


def _copy_contexts(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """What pynetdicom's acceptor does with the server's presentation contexts for every new
    association (`deepcopy`), done as a new list of the same contexts: negotiation only reads
    them, and the one handler that changes an association's contexts (C-GET role selection,
    query_retrieve.handle_requested) replaces those it changes with copies. With ~200 storage
    SOP classes deepcopy cost 65-80 ms per association, copying each context 1 ms."""
    if isinstance(value, list) and all(isinstance(c, PresentationContext) for c in value):
        return list(value)
    return copy.deepcopy(value, memo)


def start_dicom_server(
    settings: Settings,
    services: Sequence[DicomService] = (),
    port: int | None = None,
    *,
    config: DicomConfig | None = None,
    association_log: AssociationLog | None = None,
    accept: bool = True,
) -> DispatchingServer:
    """Start the AE in a background thread; returns the server (call `.shutdown()`).
    `accept=False`: listen on no port; connections come through `process_request` (a receiver
    process of api/dicom_processes.py)."""
    transport.deepcopy = _copy_contexts  # type: ignore[assignment]  # see _copy_contexts
    # pynetdicom's "standard" handlers format every DIMSE message and PDU for its DEBUG log,
    # read off pydicom datasets, whether DEBUG is on or not; radflow logs associations itself.
    # Without them bound, replies are sent without a DIMSEMessage (command_set.py)
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    identifier_encoding.install()  # C-FIND responses encoded without pydicom's writer
    # pydicom checks every value it reads against its VR (a regular expression per UID) and,
    # in its default mode, only warns. pynetdicom makes a pydicom UID of every UID in every
    # A-ASSOCIATE-RQ and DIMSE message: 16 of 41 ms of CPU for a C-GET association proposing
    # 120 storage classes (py-spy). radflow checks what it relies on itself (storage's UIDs,
    # MPPS attributes) and answers with a status, so the warnings go
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    ae = _GatedAE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.dicom_max_associations
    # the largest P-DATA PDU a peer may send us: at pynetdicom's 16 KB a 525 KB image came in
    # 33 PDUs, each a pass of the DUL loop and of its state machine; 1 MiB: 213 -> 241 images/s
    # over one association (3 runs each), small ones unchanged
    ae.maximum_pdu_size = 1024 * 1024
    tracker = AssociationTracker(
        ae,
        config or DicomConfig(),
        association_log,
        [s.on_association_end for s in services if s.on_association_end is not None],
    )
    handlers: list[tuple[Any, Any]] = [(evt.EVT_CONN_OPEN, _on_open), *tracker.handlers()]
    for service in (VERIFICATION, *services):
        for sop_class in service.sop_classes:
            ae.add_supported_context(sop_class, service.transfer_syntaxes or ALL_TRANSFER_SYNTAXES)
    handlers += route_interventions((VERIFICATION, *services))
    address = (
        (settings.bind_host, settings.dicom_port if port is None else port) if accept else ("127.0.0.1", 0)
    )
    server = ae.make_server(
        address,
        evt_handlers=handlers,  # type: ignore[arg-type]
        server_class=DispatchingServer,
        request_handler=EventDrivenRequestHandler,  # acceptors that wait, not poll: reactor.py
    )
    assert isinstance(server, DispatchingServer)
    ae._servers.append(server)  # what start_server does: server.shutdown() takes it off again
    names = ["verification", *(s.name for s in services)]
    if not accept:  # pynetdicom binds in the constructor: let go of that socket at once
        server.accepting = False
        server.server_close()
        log.info(
            "dicom ready for handed-over connections",
            extra={"ae_title": settings.ae_title, "services": names},
        )
        return server
    threading.Thread(target=server.serve_forever, name="dicom-acceptor", daemon=True).start()
    log.info(
        "dicom listening",
        extra={"ae_title": settings.ae_title, "port": server.server_address[1], "services": names},
    )
    return server
