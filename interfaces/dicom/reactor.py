"""Association threads that wait for work instead of polling for it.

pynetdicom 3.0 runs two loops per accepted association. The association thread sleeps 1 ms
before each look at its DIMSE queue, and the DUL thread sleeps between polls of the socket.
On one association, where the modality sends the next C-STORE only after the last response,
those sleeps were 38% of the acceptor's wall time per instance (py-spy, bench/dicom.py
--profile): every request waited for a sleep to end before it was handled, and every response
for another before it was sent.

Here both threads block on what they wait for. The DUL thread waits in select() on the socket
and on a wake-up socket that `send_pdu` pokes; the association thread waits on an Event set by
every put into its DIMSE message queue and the DUL's to-user queue (release and abort requests
arrive there). Both still wake every few milliseconds to look at their timers (ARTIM, network
idle, kill), which is all pynetdicom's loops need the time for.

A C-STORE request is served by the DUL thread that read it, when the association thread is
idle (EventDrivenAssociation.serve_on_receipt): the request and its response no longer pass
from one thread to the other and back. The other way round, a response (or a C-MOVE's C-STORE
request) made by another thread is written to the socket by that thread when the DUL thread
waits with nothing queued (EventDrivenDul._sent_now), instead of being queued for it. A thread
that sends requests one at a time and waits for each reply (C-MOVE and C-GET sub-operations)
borrows the DUL (EventDrivenDul.lent): the DUL thread parks, and the waiting thread runs the
DUL's passes itself, reading its replies.

What is copied from pynetdicom is `Association._run_reactor` and the DUL's loop, with their
sleeps replaced by the waits, and the request path of `AE.associate` (for the associations
radflow opens itself); the rest is reached through overridable methods. pyproject pins
pynetdicom to 3.0.*.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, cast

from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom._globals import DEFAULT_MAX_LENGTH, MODE_REQUESTOR
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.transport import AddressInformation, AssociationSocket, RequestHandler

from interfaces.dicom.command_set import DirectDimse

LOGGER = logging.getLogger("pynetdicom.assoc")

# how long an idle thread waits before it looks at its timers again: ARTIM and the network idle
# timeout are in seconds, so a few milliseconds late is nothing; shorter only costs CPU
DUL_IDLE_S = 0.005
QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only
ASSOCIATION_IDLE_S = 0.005
MAX_QUEUED = 16  # PDUs waiting to be sent before a sender is held (see _wait_for_room)


class WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that sets `wake` after every put, unless `quiet` (the thread that will take
    from it is the one putting: see EventDrivenDul.lent)."""

    def __init__(self, wake: threading.Event) -> None:
        super().__init__()
        self._wake = wake
        self.quiet = False

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        if not self.quiet:
            self._wake.set()


class ReadingSocket(AssociationSocket):
    """pynetdicom's association socket, reading a PDU into one buffer of its size: pynetdicom
    reads at most 4 KB per recv() and extends a bytearray with each piece, nine system calls
    (each a chance for another thread to take the GIL) for a 35 KB image, 129 for 525 KB."""

    def recv(self, nr_bytes: int) -> bytearray:
        raw = cast(socket.socket, self.socket)
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        read = 0
        try:
            while read < nr_bytes:
                got = raw.recv_into(view[read:], nr_bytes - read)
                if not got:  # the peer closed: what arrived, as pynetdicom returns it
                    break
                read += got
        finally:
            view.release()
        if read < nr_bytes:
            del buffer[read:]
        return buffer


class EventDrivenDul(DULServiceProvider):
    """The DUL thread, waiting in select() when a pass of its loop found nothing to do."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._waiting = False  # in (or about to enter) select(): only then is a poke needed
        self._room = threading.Condition()  # senders held by _wait_for_room
        self._room_wanted = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # one PDU on the socket at a time (see _sent_now); re-entrant: EVT_PDU_SENT handlers run
        # while it is held, and one may send again
        self._send_lock = threading.RLock()
        # lending (see lent): the borrower asks, the DUL thread parks between two passes
        self._lending = threading.Condition()
        self._lend_wanted = False
        self._parked = False
        self._borrower: threading.Thread | None = None

    def run_reactor(self) -> None:
        try:
            self._run_reactor()
        finally:
            self._wake_r.close()
            self._wake_w.close()

    def _run_reactor(self) -> None:
        """pynetdicom 3.0.4's DUL loop without its `time.sleep(_run_loop_delay)` after an idle
        pass: even at 0 that sleep gave the GIL away on every turn from sending to waiting
        (0.3 ms per instance of a C-MOVE, py-spy). Waiting happens in `_is_transport_event`."""
        self._idle_timer.start()
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
            if self._kill_thread:
                break
            if self._lend_wanted:
                self._park()
                continue
            if not self._pass():
                return

    def _pass(self) -> bool:
        """One pass of the loop: send or read one PDU, then act on one event. False: an
        exception aborted the association (as pynetdicom, at once, bypassing the state machine)."""
        if self.artim_timer.expired:
            self.event_queue.put("Evt18")
        try:
            if self._process_recv_primitive():
                pass
            elif self._is_transport_event():
                self._idle_timer.restart()
        except Exception as exc:
            LOGGER.error("Exception in DUL.run(), aborting association")
            LOGGER.exception(exc)
            abort_pdu = A_ABORT_RQ()
            abort_pdu.source = 0x02
            abort_pdu.reason_diagnostic = 0x00
            cast(AssociationSocket, self.socket).send(abort_pdu.encode())
            self.assoc.is_aborted = True
            self.assoc.is_established = False
            self.assoc._kill = True
            self._kill_thread = True
            return False
        try:
            event = self.event_queue.get(block=False)
        except queue.Empty:
            return True
        self.state_machine.do_action(event)
        return True

    # --- lending: the DUL's passes on the thread that waits for the replies --------------------

    @contextlib.contextmanager
    def lent(self) -> Iterator[bool]:
        """Inside, the calling thread runs the DUL's passes itself (`serve`), and the DUL thread
        parks between two of its passes. For a thread that sends requests one at a time and
        waits for each reply (C-STORE sub-operations of a C-MOVE or C-GET): otherwise the DUL
        thread wakes for each reply, reads it, queues it and wakes the waiting thread, under the
        one GIL. Yields False, lending nothing, when the DUL thread does not park within a
        second (or has ended): the caller then waits on the queue as before."""
        me = threading.current_thread()
        if me is self or self._borrower is not None or not self.is_alive():
            yield False
            return
        with self._lending:
            self._lend_wanted = True
        self._poke()  # out of its select(), to the top of its loop
        with self._lending:
            self._lending.wait_for(lambda: self._parked or self._kill_thread or not self.is_alive(), 1.0)
            parked = self._parked
            if not parked:
                self._lend_wanted = False
                self._lending.notify_all()
        if not parked:
            yield False
            return
        queued = self.assoc.dimse.msg_queue
        replies = queued if isinstance(queued, WakingQueue) else None
        self._borrower = me
        if replies is not None:  # the association thread has nothing to take: no wake-up
            replies.quiet = True
        try:
            yield True
        finally:
            if replies is not None:
                replies.quiet = False
            self._borrower = None
            with self._lending:
                self._lend_wanted = False
                self._lending.notify_all()

    def serve(self, done: Callable[[], bool], timeout: float) -> None:
        """The borrower's wait: passes until done() (or the DUL ends, or `timeout`)."""
        assert self._borrower is threading.current_thread(), "serve() outside lent()"
        deadline = time.monotonic() + timeout
        while not done() and not self._kill_thread and time.monotonic() < deadline:
            if not self._pass():
                return

    def _park(self) -> None:
        with self._lending:
            self._parked = True
            self._lending.notify_all()
            while self._lend_wanted and not self._kill_thread:
                self._lending.wait(1.0)  # kill_dul and the lender's end notify
            self._parked = False

    def send_pdu(self, primitive: Any) -> None:
        lent = self._borrower is threading.current_thread()
        if primitive.__class__ is P_DATA and self._sent_now(primitive, lent):
            return
        if lent:  # no DUL thread to send it: the borrower's own passes do, before it goes on
            super().send_pdu(primitive)
            while self.to_provider_queue.qsize() and not self._kill_thread and self._pass():
                pass
            return
        self._wait_for_room()
        super().send_pdu(primitive)
        if self._waiting:  # set before the DUL looks at its queues: it saw this put, or is poked
            self._poke()

    def _sent_now(self, primitive: P_DATA, lent: bool = False) -> bool:
        """Send a P-DATA on the caller's thread when nothing is ahead of it: the DUL thread
        waits in select() having sent all it took from its queue (or is parked, lent to this
        thread), the queues are empty, the association is established (Sta6, where P-DATA
        changes no state) and the peer has nothing unread. Queued, each C-FIND response cost a
        poke, the DUL's wake-up and a pass of its state machine. Anything else, or any doubt,
        goes through the queue; so do the DUL thread's own sends (a C-STORE response served on
        receipt), which cost no wake-up."""
        if not (lent or self._waiting) or threading.current_thread() is self:
            return False
        with self._send_lock:
            raw = getattr(self.socket, "socket", None)
            if (
                not (lent or self._waiting)
                or self.to_provider_queue.qsize()
                or self.event_queue.qsize()
                or self.state_machine.current_state != "Sta6"
                or raw is None
                # TLS: one SSL object must not write in one thread while the DUL reads in
                # another; lent, this thread is the only one using it
                or (isinstance(raw, ssl.SSLSocket) and not lent)
                or self._incoming()  # the peer said something (a C-CANCEL?): it is read first
            ):  # (the one system call, select(), last)
                return False
            pdu = P_DATA_TF(primitive)
            data = pdu.encode()
            try:
                raw.sendall(data)
            except OSError:  # closed, or timed out part-sent: no more goes out on it; the DUL's
                with contextlib.suppress(OSError):  # read finds out (an Evt17 queued from here
                    raw.shutdown(socket.SHUT_RDWR)  # could reach a DUL already back in Sta1)
                return True
            evt.trigger(self.assoc, evt.EVT_DATA_SENT, {"data": data})
            evt.trigger(self.assoc, evt.EVT_PDU_SENT, {"pdu": pdu})
        return True

    def _send(self, pdu: Any) -> None:
        with self._send_lock:  # the DUL's own sends (queued PDUs, aborts) and _sent_now's
            super()._send(pdu)

    def _wait_for_room(self) -> None:
        """Hold a sender while MAX_QUEUED PDUs wait to go out. pynetdicom's queue is unbounded:
        a C-FIND handler yielding 100,000 matches ran ahead of the peer with all of them in
        memory, and a C-CANCEL arriving after the last was generated (they are generated
        faster than sent) changed nothing. The DUL thread itself never waits here."""
        if threading.current_thread() is self:
            return
        while self.to_provider_queue.qsize() >= MAX_QUEUED and self.is_alive() and not self._kill_thread:
            with self._room:
                self._room_wanted = True
                self._room.wait(DUL_IDLE_S)

    def kill_dul(self) -> None:
        super().kill_dul()
        self._poke()
        with self._lending:  # a parked DUL thread ends too
            self._lending.notify_all()

    def stop_dul(self) -> bool:
        """pynetdicom's, but the thread is woken and joined, not spun on with sleep(0)."""
        if self.state_machine.current_state != "Sta1":
            return False
        self._kill_thread = True
        self._poke()
        with self._lending:
            self._lending.notify_all()
        if self.is_alive() and threading.current_thread() is not self:
            self.join()
        return True

    def _poke(self) -> None:
        with contextlib.suppress(OSError):  # full (a poke is pending anyway) or closed (ended)
            self._wake_w.send(b"\0")

    def _process_recv_primitive(self) -> bool:
        """pynetdicom either sends one queued PDU or reads one per pass, sending first: while
        a C-FIND streams thousands of responses the peer's C-CANCEL (or A-ABORT) waited until
        the last was sent. A pass with bytes waiting reads them instead of sending."""
        if self.to_provider_queue.qsize() and self._incoming():
            return False  # the loop goes on to _is_transport_event, which reads
        sent = super()._process_recv_primitive()
        if sent and self._room_wanted:
            with self._room:
                self._room_wanted = False
                self._room.notify_all()
        return sent

    def _incoming(self) -> bool:
        raw = getattr(self.socket, "socket", None)
        if raw is None or not getattr(self.socket, "_is_connected", False):
            return False  # a requestor's socket before its T-CONNECT looks readable to select()
        if isinstance(raw, ssl.SSLSocket) and raw.pending():
            return True
        try:
            readable, _, _ = select.select([raw], [], [], 0)
        except (OSError, ValueError):  # closed: the normal path finds out and says so
            return False
        return bool(readable)

    def _is_transport_event(self) -> bool:
        self._quick_ack()
        if super()._is_transport_event():
            return True
        self._waiting = True
        try:
            if not (
                self.event_queue.qsize()
                or self.to_provider_queue.qsize()
                or self._kill_thread
                or (self._lend_wanted and threading.current_thread() is self)
            ):
                self._wait_for_io()
        finally:
            self._waiting = False
        return False  # the loop's next pass sends or reads whatever woke us

    def _quick_ack(self) -> None:
        """Acknowledge what arrives at once (Linux turns TCP_QUICKACK off again by itself, so it
        is set before every read). A peer that leaves Nagle on (DCMTK unless TCP_NODELAY is in
        its environment) writes a reply in two small pieces and holds the second until the
        first is acknowledged: with our delayed ACK, 40 ms per C-STORE response to a C-GET."""
        raw = getattr(self.socket, "socket", None)
        if raw is not None and QUICKACK is not None:
            with contextlib.suppress(OSError):
                raw.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)

    def _wait_for_io(self) -> None:
        raw = getattr(self.socket, "socket", None)
        if raw is None:
            time.sleep(0.001)
            return
        if isinstance(raw, ssl.SSLSocket) and raw.pending():
            return  # decrypted bytes already buffered: select() would not see them
        try:
            readable, _, _ = select.select([raw, self._wake_r], [], [], DUL_IDLE_S)
        except (OSError, ValueError):  # the socket closed under us: the next pass notices
            time.sleep(0.001)
            return
        if self._wake_r in readable:
            with contextlib.suppress(OSError):
                while self._wake_r.recv(4096):
                    pass


class EventDrivenAssociation(Association):
    """An association whose thread waits on an Event instead of sleeping 1 ms: acceptors are
    converted by the request handler, requestors are made by `associate`."""

    _wake: threading.Event
    _serving = False  # the association thread has taken (or is about to take) a message

    def __init__(self, ae: Any, mode: str) -> None:
        super().__init__(ae, mode)
        self._become_event_driven()

    def _become_event_driven(self) -> None:
        self._wake = threading.Event()
        old = self.dul
        dul = EventDrivenDul(self)
        if type(old.socket) is AssociationSocket:  # an acceptor's, made by pynetdicom
            old.socket.__class__ = ReadingSocket
        dul.socket = old.socket
        dul.event_queue = old.event_queue  # an acceptor's holds Evt5 (connection accepted)
        dul.to_user_queue = WakingQueue(self._wake)
        self.dul = dul
        self.dimse.msg_queue = WakingQueue(self._wake)
        self.dimse.__class__ = DirectDimse  # replies encoded without a pydicom Dataset
        # the timeout setters copy their value into the DUL's timers: copy them to the new one
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout

    def serve_on_receipt(self, message: Any, context_id: int) -> bool:
        """Serve a C-STORE request in the DUL thread that received it, when this association
        accepted it and its own thread is idle with nothing queued; False: queue it as usual.
        A modality sends the next C-STORE only after the last response, so the DUL thread has
        nothing else to read meanwhile; handing each request to the association thread and
        the response back cost two thread wake-ups per instance under one GIL. The service
        class is pynetdicom's, as the association thread would run it."""
        if not (
            self.is_acceptor
            and isinstance(message, C_STORE)
            and message.is_valid_request
            and self.is_established  # set after EVT_ACCEPTED: the log row is under way
            and not self._sent_release
            and not self._serving
            and not self.dimse.msg_queue.qsize()
            and not pynetdicom_config.UNRESTRICTED_STORAGE_SERVICE
        ):
            return False
        context = self._accepted_cx.get(context_id)
        sop_class = str(message.AffectedSOPClassUID)  # present: is_valid_request
        if context is None or sop_class in self.acceptor.accepted_common_extended:
            return False  # the association thread aborts, or maps the SOP class first
        if uid_to_service_class(sop_class) is not StorageServiceClass:
            return False
        try:
            StorageServiceClass(self).SCP(message, context)
        except Exception as exc:  # what _serve_request does (abort), through the state machine:
            LOGGER.exception(exc)  # abort() would wait for this very thread to end
            self.dul.event_queue.put("Evt19")
        return True

    def kill(self) -> None:
        """pynetdicom's, looking for the DUL's end every 0.5 ms instead of every 10 ms: a
        C-MOVE's final response waited for this after releasing its sub-association."""
        self._wake.set()
        self._reactor_checkpoint.set()
        self._kill = True
        self.is_established = False
        self._is_paused = True
        while self.dul.is_alive() and not self.dul.stop_dul():
            time.sleep(0.0005)

    def _idle_wait(self, served: bool) -> None:
        """Wait for a put into the DIMSE or to-user queue (or the timers' few milliseconds).
        Right after serving a message, another already queued is taken at once. Otherwise a
        non-empty queue is no reason to go round again: on the associations radflow opens,
        the sending thread takes the replies (query_retrieve.guard_reactor), and a release
        reply waits for release() to read it; looping on them would spin."""
        if served and self.dimse.msg_queue.qsize():
            return
        self._wake.wait(ASSOCIATION_IDLE_S)
        self._wake.clear()  # a put after this line sets it again; one before is in the queue

    def _run_reactor(self) -> None:
        """pynetdicom 3.0.4's reactor loop, with `time.sleep(0.001)` replaced by `_idle_wait`,
        which it spends paused: a `send_*()` from another thread (it waits for `_is_paused`)
        goes ahead at once instead of after the wait, and the loop, woken by the reply, stops
        at the checkpoint until that sender is done with the queue."""
        self._is_paused = False
        msg = None
        while not self._kill:
            self._is_paused = True
            self._idle_wait(served=msg is not None)
            self._reactor_checkpoint.wait()
            self._is_paused = False

            self._serving = True  # before the queue is looked at: see serve_on_receipt
            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, context_id)  # type: ignore[arg-type]
            self._serving = False

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                LOGGER.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                LOGGER.info(log_msg)
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                LOGGER.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class EventDrivenRequestHandler(RequestHandler):
    """The server's per-connection handler, creating event-driven acceptors."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()  # a plain Association, socket set, not started
        assoc.__class__ = EventDrivenAssociation
        assert isinstance(assoc, EventDrivenAssociation)
        assoc._become_event_driven()
        return assoc


def associate(
    ae: AE,
    host: str,
    port: int,
    *,
    ae_title: str,
    contexts: list[PresentationContext] | None = None,
    ext_neg: list[Any] | None = None,
    evt_handlers: list[tuple[Any, Any]] | None = None,
) -> Association:
    """`ae.associate` for radflow's own outgoing associations (C-MOVE sub-operations,
    commitment reports), made event-driven like the acceptors: pynetdicom 3.0.4's request
    path, without its argument checks."""
    remote = AddressInformation.from_addr_port(host, port)
    local = AddressInformation.from_tuple(("::0" if remote.address_family == socket.AF_INET6 else "", 0))
    assoc = EventDrivenAssociation(ae, MODE_REQUESTOR)
    assoc.name = f"RequestorThread@{datetime.now():%Y%m%d%H%M%S}"
    assoc.set_socket(ReadingSocket(assoc, address=local))
    assoc.acceptor.ae_title = ae_title
    assoc.acceptor.address_info = remote
    assoc.requestor.address_info = local
    assoc.requestor.ae_title = ae.ae_title
    assoc.requestor.maximum_length = DEFAULT_MAX_LENGTH
    assoc.requestor.implementation_class_uid = ae.implementation_class_uid
    assoc.requestor.implementation_version_name = ae.implementation_version_name
    for item in ext_neg or []:
        assoc.requestor.add_negotiation_item(item)
    requested = copy.deepcopy(contexts or ae.requested_contexts)
    if not requested:
        raise ValueError("at least one requested presentation context is needed")
    for index, context in enumerate(requested):
        context.context_id = 2 * index + 1
    assoc.requestor.requested_contexts = requested
    for handler in evt_handlers or []:
        assoc.bind(*handler)
    assoc.request()
    if assoc.is_established:
        assoc.start()
    return assoc
