"""The event-driven association threads (interfaces/dicom/reactor.py) keep pynetdicom's duties:
the network idle timeout, a peer's release and abort each end the association and reach the
association log, and the associations radflow opens itself work end to end."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_context, evt
from pynetdicom.dimse_primitives import C_FIND, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    Verification,
)

from adapters.settings import Settings
from adapters.sql import Database, sqlite_writer_lock
from adapters.storage_log import StorageLog
from interfaces.dicom.query_retrieve import PeerGone, StoreSender, guard_reactor, read_stored
from interfaces.dicom.reactor import EventDrivenAssociation, EventDrivenDul, associate
from interfaces.dicom.server import DicomService, start_dicom_server
from tests.dicom_builders import StudySpec, ct_image
from tests.dicom_scu import associate as associate_scu

FIND = PatientRootQueryRetrieveInformationModelFind


@dataclass
class Running:
    server: Any
    log: StorageLog

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def association(self, calling_ae: str) -> dict[str, Any]:
        """The association log's row of `calling_ae`, once it is there."""
        return wait_for(
            lambda: next((r for r in self.log.associations() if r["calling_ae"] == calling_ae), None)
        )

    def ended(self, calling_ae: str) -> dict[str, Any]:
        """The association log's row of `calling_ae`, once its association has ended."""
        return wait_for(lambda: (row := self.association(calling_ae))["status"] != "open" and row)


def wait_for(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
    return result


@pytest.fixture
def radflow(tmp_path: Path) -> Iterator[Running]:
    settings = Settings(data_dir=tmp_path)
    db = Database.for_file(settings, settings.messages_sqlite_path)
    log = StorageLog(db)
    log.create_schema()
    server = start_dicom_server(settings, [], port=0, association_log=log)
    try:
        yield Running(server, log)
    finally:
        server.shutdown()
        db.close()


def scu(calling_ae: str) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    return ae


def test_an_association_silent_past_the_network_timeout_is_aborted(radflow: Running) -> None:
    radflow.server.ae.network_timeout = 0.5  # read by each new association
    assoc = scu("SILENT").associate("127.0.0.1", radflow.port, ae_title="RADFLOW")
    assert assoc.is_established
    wait_for(lambda: assoc.is_aborted, timeout=5)
    assert radflow.ended("SILENT")["status"] == "aborted"


def test_a_release_is_answered_and_logged_with_what_was_exchanged(radflow: Running) -> None:
    assoc = scu("RELEASER").associate("127.0.0.1", radflow.port, ae_title="RADFLOW")
    assert assoc.is_established
    assert [int(assoc.send_c_echo().Status) for _ in range(3)] == [0, 0, 0]
    assoc.release()
    assert assoc.is_released
    row = radflow.ended("RELEASER")
    assert (row["status"], row["exchanged"]) == ("released", {"C-ECHO-RQ": 3})


def test_a_peer_abort_ends_the_association_and_is_logged(radflow: Running) -> None:
    assoc = scu("ABORTER").associate("127.0.0.1", radflow.port, ae_title="RADFLOW")
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == 0
    assoc.abort()
    assert radflow.ended("ABORTER")["status"] == "aborted"


def test_released_associations_stop_counting_against_the_limit_while_their_log_rows_wait(
    radflow: Running,
) -> None:
    """pynetdicom counts an association until its thread ends: a thread waiting to write its
    log row kept a released association's place, and a slow disk turned peers away."""
    radflow.server.ae.maximum_associations = 2
    assert radflow.log.db.path is not None
    with sqlite_writer_lock(radflow.log.db.path):  # the log's writes wait, as behind a slow fsync
        for n in range(6):
            assoc = scu(f"ROUND{n}").associate("127.0.0.1", radflow.port, ae_title="RADFLOW")
            assert assoc.is_established, f"association {n} was rejected"
            assert int(assoc.send_c_echo().Status) == 0
            assoc.release()
            assert assoc.is_released
            wait_for(lambda: len(radflow.server.ae.active_associations) == 0, timeout=5)
        assert radflow.log.associations() == []
    for n in range(6):
        row = radflow.ended(f"ROUND{n}")
        assert (row["status"], row["exchanged"]) == ("released", {"C-ECHO-RQ": 1})


def test_radflows_own_associations_wait_for_work_and_release_cleanly(radflow: Running) -> None:
    ae = AE(ae_title="RADFLOW-OUT")
    assoc = associate(
        ae, "127.0.0.1", radflow.port, ae_title="RADFLOW", contexts=[build_context(Verification)]
    )
    assert assoc.is_established
    assert isinstance(assoc, EventDrivenAssociation) and isinstance(assoc.dul, EventDrivenDul)
    assert [int(assoc.send_c_echo().Status) for _ in range(3)] == [0, 0, 0]
    assoc.release()
    assert assoc.is_released
    row = radflow.ended("RADFLOW-OUT")
    assert (row["status"], row["exchanged"]) == ("released", {"C-ECHO-RQ": 3})


def test_an_unreadable_command_set_aborts_that_association_and_the_server_serves_on(radflow: Running) -> None:
    assoc = scu("GARBLER").associate("127.0.0.1", radflow.port, ae_title="RADFLOW")
    assert assoc.is_established
    garbage = P_DATA()  # a command element claiming more bytes than the command set holds
    garbage.presentation_data_value_list.append((1, b"\x03" + b"\x00\x00\x00\x01\xff\x00\x00\x00"))
    assoc.dul.send_pdu(garbage)
    wait_for(lambda: assoc.is_aborted, timeout=5)
    assert radflow.ended("GARBLER")["status"] == "aborted"

    again = scu("AFTERWARDS").associate("127.0.0.1", radflow.port, ae_title="RADFLOW")
    assert again.is_established
    assert again.send_c_echo().Status == 0x0000
    again.release()


@dataclass
class Probe:
    """A server whose C-STORE handler notes the thread it ran in, and whose C-FIND handler
    holds until `release_find` is set."""

    port: int
    store_threads: list[threading.Thread]
    release_find: threading.Event


@pytest.fixture
def probe(tmp_path: Path) -> Iterator[Probe]:
    stores: list[threading.Thread] = []
    release_find = threading.Event()

    def on_store(event: Any) -> int:
        stores.append(threading.current_thread())
        return 0x0000

    def on_find(event: Any) -> Iterator[tuple[int, Any]]:
        release_find.wait(10)
        yield from ()  # no matches: the final response is Success

    service = DicomService(
        "probe", [CTImageStorage, FIND], [(evt.EVT_C_STORE, on_store), (evt.EVT_C_FIND, on_find)]
    )
    server = start_dicom_server(Settings(data_dir=tmp_path), [service], port=0)
    try:
        yield Probe(int(server.server_address[1]), stores, release_find)
    finally:
        release_find.set()
        server.shutdown()


def _probe_scu(port: int) -> Any:
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(CTImageStorage, ImplicitVRLittleEndian)
    ae.add_requested_context(FIND, ImplicitVRLittleEndian)
    assoc = associate_scu(ae, port)
    assert assoc.is_established
    return assoc


def _context_id(assoc: Any, sop_class: str) -> int:
    return int(next(c for c in assoc.accepted_contexts if c.abstract_syntax == sop_class).context_id)


def test_a_c_store_is_served_by_the_thread_that_received_it(probe: Probe) -> None:
    assoc = _probe_scu(probe.port)
    image = ct_image(StudySpec("REACTOR1"), generate_uid(), 1)
    assert [int(assoc.send_c_store(image).Status) for _ in range(2)] == [0, 0]
    assoc.release()
    assert len(probe.store_threads) == 2
    assert all(isinstance(thread, EventDrivenDul) for thread in probe.store_threads), probe.store_threads


def test_a_c_store_arriving_while_another_request_is_served_waits_its_turn(probe: Probe) -> None:
    """A peer that does not wait for a response (asynchronous operations): the C-STORE must not
    be served beside the C-FIND the association thread is serving, and is answered after it."""
    assoc = _probe_scu(probe.port)  # its reactor kept off the responses (tests/dicom_scu.py)
    find = C_FIND()
    find.MessageID = 1
    find.AffectedSOPClassUID = FIND
    find.Priority = 0x0002
    query = Dataset()
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientID = "*"
    find.Identifier = BytesIO(encode(query, True, True) or b"")
    assoc.dimse.send_msg(find, _context_id(assoc, FIND))
    time.sleep(0.2)  # the server's association thread is now in the C-FIND handler
    image = ct_image(StudySpec("REACTOR1"), generate_uid(), 2)
    store = C_STORE()
    store.MessageID = 2
    store.AffectedSOPClassUID = CTImageStorage
    store.AffectedSOPInstanceUID = image.SOPInstanceUID
    store.Priority = 0x0002
    store.DataSet = BytesIO(encode(image, True, True) or b"")
    assoc.dimse.send_msg(store, _context_id(assoc, CTImageStorage))
    time.sleep(0.2)
    assert probe.store_threads == [], "the C-STORE was served while the C-FIND was"
    probe.release_find.set()
    answers = [assoc.dimse.get_msg(block=True)[1] for _ in range(2)]
    assert [(type(a).__name__, a.MessageIDBeingRespondedTo, a.Status) for a in answers] == [
        ("C_FIND", 1, 0),
        ("C_STORE", 2, 0),
    ]
    assoc.release()
    assert len(probe.store_threads) == 1 and not isinstance(probe.store_threads[0], EventDrivenDul)


def test_responses_are_written_by_the_thread_that_made_them_in_order(tmp_path: Path) -> None:
    """C-FIND responses leave from the association thread that generated them (no hop through
    the DUL thread), in order, and a C-ECHO answered on the same association is not held up."""
    senders: list[tuple[str, bool]] = []

    def on_sent(event: Any) -> None:
        if type(event.pdu).__name__ == "P_DATA_TF":
            senders.append(
                (threading.current_thread().name, isinstance(threading.current_thread(), EventDrivenDul))
            )

    def on_find(event: Any) -> Iterator[tuple[int, Any]]:
        for n in range(20):
            match = Dataset()
            match.QueryRetrieveLevel = "PATIENT"
            match.PatientID = f"P{n:03d}"
            yield 0xFF00, match

    service = DicomService("finder", [FIND], [(evt.EVT_C_FIND, on_find), (evt.EVT_PDU_SENT, on_sent)])
    server = start_dicom_server(Settings(data_dir=tmp_path), [service], port=0)
    try:
        ae = AE(ae_title="ORDERLY")
        ae.add_requested_context(FIND)
        ae.add_requested_context(Verification)
        assoc = associate_scu(ae, int(server.server_address[1]))
        assert assoc.is_established
        query = Dataset()
        query.QueryRetrieveLevel = "PATIENT"
        query.PatientID = ""
        for _ in range(3):
            answers = [(int(s.Status), m.PatientID if m else None) for s, m in assoc.send_c_find(query, FIND)]
            assert answers == [(0xFF00, f"P{n:03d}") for n in range(20)] + [(0x0000, None)]
            assert int(assoc.send_c_echo().Status) == 0
        assoc.release()
    finally:
        server.shutdown()
    assert len(senders) == 3 * 22
    # a response finding the DUL thread still busy (finishing the request's pass; the client
    # here shares the GIL) goes through its queue; most do not
    direct = [name for name, in_dul in senders if not in_dul]
    assert len(direct) > len(senders) / 4, senders


# --- lending the DUL to the thread that waits for the replies --------------------------------


@dataclass
class StorePeer:
    """A pynetdicom Storage SCP: the peer's side, nobody's code here."""

    received: list[bytes]
    abort_after: int = 0  # it aborts the association after this many stores (0: never)
    server: Any = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])


@pytest.fixture
def store_peer() -> Iterator[StorePeer]:
    peer = StorePeer(received=[])

    def on_store(event: Any) -> int:
        peer.received.append(bytes(event.request.DataSet.getvalue()))
        if len(peer.received) == peer.abort_after:
            event.assoc.abort()
        return 0x0000

    ae = AE(ae_title="PEER")
    ae.maximum_pdu_size = 4096  # a 65 KB image goes out as 16+ P-DATA PDUs: more than MAX_QUEUED
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    peer.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield peer
    finally:
        peer.server.shutdown()


def _stored_rows(folder: Path, count: int, side: int) -> list[dict[str, Any]]:
    study = StudySpec(accession="A1")
    series = generate_uid()
    rows = []
    for number in range(1, count + 1):
        ds = ct_image(study, series, number, side=side)
        path = folder / f"{number}.dcm"
        ds.save_as(path, enforce_file_format=True)
        rows.append(
            {
                "path": str(path),
                "sop_class_uid": CTImageStorage,
                "sop_instance_uid": ds.SOPInstanceUID,
                "transfer_syntax": ExplicitVRLittleEndian,
            }
        )
    return rows


def _open_to(peer: StorePeer, readers: list[str]) -> Any:
    def on_received(event: Any) -> None:
        readers.append(f"{type(event.pdu).__name__}@{threading.current_thread().name}")

    return associate(
        AE(ae_title="RADFLOW"),
        "127.0.0.1",
        peer.port,
        ae_title="PEER",
        contexts=[build_context(CTImageStorage, ExplicitVRLittleEndian)],
        evt_handlers=[(evt.EVT_PDU_RECV, on_received)],
    )


def test_sub_operation_replies_are_read_by_the_thread_waiting_for_them(
    store_peer: StorePeer, tmp_path: Path
) -> None:
    """While lent, the C-STORE responses are read on the sending thread (no DUL thread hop),
    a large image goes out in many PDUs without the DUL thread, and afterwards the DUL thread
    reads again: the release reply is its."""
    rows = _stored_rows(tmp_path, 6, side=180)  # ~65 KB each
    readers: list[str] = []
    assoc = _open_to(store_peer, readers)
    assert assoc.is_established
    guard_reactor(assoc)
    sender = StoreSender(assoc)
    me = threading.current_thread().name
    with sender.replies_read_here():
        outcomes = [sender.send(row) for row in rows]
    assert [o.status for o in outcomes] == [0] * 6
    during = list(readers)
    assoc.release()
    assert assoc.is_released
    assert during[0].startswith("A_ASSOCIATE_AC@")  # read by the DUL thread, before the lending
    assert during[1:] == [f"P_DATA_TF@{me}"] * 6, during
    assert readers[-1].startswith("A_RELEASE_RP@") and not readers[-1].endswith(f"@{me}"), readers
    assert store_peer.received == [bytes(read_stored(Path(r["path"]))[1]) for r in rows]
    assert not assoc.dul.is_alive()


def test_a_peer_abort_while_lent_ends_the_sends_and_the_dul_thread(
    store_peer: StorePeer, tmp_path: Path
) -> None:
    store_peer.abort_after = 2
    rows = _stored_rows(tmp_path, 5, side=16)
    assoc = _open_to(store_peer, [])
    guard_reactor(assoc)
    sender = StoreSender(assoc)
    started = time.monotonic()
    outcomes: list[Any] = []
    with pytest.raises(PeerGone), sender.replies_read_here():
        for row in rows:
            outcomes.append(sender.send(row))
    assert time.monotonic() - started < 5
    assert [o.status for o in outcomes] == [0]  # the second store's reply never came: the abort did
    wait_for(lambda: not assoc.dul.is_alive())
    assert assoc.is_aborted


def test_nothing_is_lent_by_a_dul_that_has_ended(store_peer: StorePeer) -> None:
    assoc = _open_to(store_peer, [])
    assoc.release()
    wait_for(lambda: not assoc.dul.is_alive())
    with assoc.dul.lent() as lent:
        assert lent is False
