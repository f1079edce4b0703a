"""Storage Commitment over real associations (a pynetdicom modality -> radflow's AE on a free
port; storage log on SQLite and PostgreSQL): which instances are committed and why others fail,
the report after the N-ACTION response on the same association or on a new one to a configured
peer (SCP role negotiated), retries, reports nobody can take, bad requests, the durable request
row and reports resumed by a restarted listener."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from adapters.commitment_log import UNDELIVERABLE, CommitmentLog
from adapters.dicom_config import DicomConfig, Peer
from adapters.message_log import utcnow
from adapters.settings import Settings
from adapters.sql import Database
from adapters.storage_log import StorageLog, StoredInstance
from interfaces.dicom.commitment import WELL_KNOWN_INSTANCE, storage_commitment_service
from interfaces.dicom.server import start_dicom_server
from tests.conftest import free_port

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]
RETRY_DELAYS_S = (0.2, 0.4, 0.8)


@dataclass
class Scp:
    settings: Settings
    storage: StorageLog
    commitments: CommitmentLog
    port: int
    peers: dict[str, Peer]  # where configured requesters listen for reports on new associations
    folder: Path

    def hold(self, sop_class: str = CTImageStorage, size: int = 100) -> str:
        """An instance as the storage SCP leaves it: file written, row committed."""
        uid = generate_uid()
        path = self.folder / f"{uid}.dcm"
        path.write_bytes(b"\0" * size)
        association = self.storage.association_opened("CT01", "RADFLOW", "127.0.0.1:1", "released")
        self.storage.record_instance(
            StoredInstance(
                uid,
                sop_class,
                "1.2.3",
                "1.2.3.4",
                "1.2.840.10008.1.2.1",
                str(path),
                size,
                utcnow(),
                "CT01",
                association,
                {"study": {}, "series": {}},
            )
        )
        return uid

    def row(
        self, transaction: str, done: Callable[[dict[str, Any]], bool], within_s: float = 10
    ) -> dict[str, Any]:
        """The commitment's row once `done` holds for it (delivery runs after the N-ACTION answer)."""
        deadline = time.monotonic() + within_s
        while True:
            row = self.commitments.get(transaction)
            if row is not None and done(row):
                return row
            assert time.monotonic() < deadline, f"commitment row never got there: {row}"
            time.sleep(0.02)


@pytest.fixture(scope="module", params=BACKENDS)
def scp(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scp]:
    folder = tmp_path_factory.mktemp("commitment")
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    settings = Settings(data_dir=folder, database_url=url)
    db = Database.for_file(settings, settings.messages_sqlite_path)
    storage = StorageLog(db)
    storage.create_schema()
    peers = {name: Peer(name, "127.0.0.1", free_port()) for name in ("MODALITY", "LATECOMER", "ASLEEP")}
    service = storage_commitment_service(
        settings, DicomConfig(peers=peers), storage, retry_delays_s=RETRY_DELAYS_S, timeout_s=5
    )
    server = start_dicom_server(settings, [service], port=free_port(), association_log=storage)
    try:
        yield Scp(settings, storage, CommitmentLog(db), server.server_address[1], peers, folder)
    finally:
        server.shutdown()
        db.close()


def _nodelay(event: Any) -> None:
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def commit_request(references: list[tuple[str, str]], transaction: str | None = None) -> Dataset:
    ds = Dataset()
    if transaction != "":
        ds.TransactionUID = transaction or generate_uid()
    ds.ReferencedSOPSequence = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        ds.ReferencedSOPSequence.append(item)
    return ds


class Modality:
    """A pynetdicom modality (Nagle off, as radflow's peers run) that keeps the N-EVENT-REPORTs
    it receives and the order of the DIMSE messages on its requesting association."""

    def __init__(self, calling_ae: str = "CT01") -> None:
        self.reports: list[tuple[int, Dataset, Any]] = []  # (event type, information, our roles)
        self.received: list[str] = []
        self.arrived = threading.Event()
        self.ae = AE(ae_title=calling_ae)
        self.ae.add_requested_context(StorageCommitmentPushModel)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 10

    def on_report(self, event: Any) -> tuple[int, None]:
        roles = [
            (c.as_scu, c.as_scp)
            for c in event.assoc.accepted_contexts
            if c.abstract_syntax == StorageCommitmentPushModel
        ]
        self.reports.append((int(event.request.EventTypeID), event.event_information, roles))
        self.arrived.set()
        return 0x0000, None

    def on_received(self, event: Any) -> None:
        self.received.append(type(event.message).__name__)

    def listen(self, port: int) -> Any:
        """Take reports on associations radflow opens: only in the SCP role it must propose."""
        self.ae.add_supported_context(StorageCommitmentPushModel, scp_role=True, scu_role=False)
        return self.ae.start_server(
            ("127.0.0.1", port),
            block=False,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self.on_report), (evt.EVT_CONN_OPEN, _nodelay)],
        )

    def associate(self, port: int, take_reports: bool = True) -> Any:
        handlers: list[Any] = [(evt.EVT_CONN_OPEN, _nodelay), (evt.EVT_DIMSE_RECV, self.on_received)]
        if take_reports:
            handlers.append((evt.EVT_N_EVENT_REPORT, self.on_report))
        assoc = self.ae.associate("127.0.0.1", port, ae_title="RADFLOW", evt_handlers=handlers)
        assert assoc.is_established
        return assoc

    def ask(
        self,
        scp: Scp,
        ds: Dataset,
        *,
        action: int = 1,
        instance: str = WELL_KNOWN_INSTANCE,
        wait: bool = True,
    ) -> Dataset:
        """N-ACTION, then the report on the same association. Released only once radflow has the
        report's response: pynetdicom runs the report handler on a thread of its own, and a
        release that overtakes its response leaves the report unanswered."""
        assoc = self.associate(scp.port)
        try:
            status, _ = assoc.send_n_action(ds, action, StorageCommitmentPushModel, instance)
            if wait and int(status.Status) == 0:
                assert self.arrived.wait(10), "no N-EVENT-REPORT on the association"
                scp.row(ds.TransactionUID, lambda r: r["delivered_at"] is not None)
        finally:
            assoc.release()
        return status


def test_every_held_instance_is_committed_on_the_same_association_after_the_response(scp: Scp) -> None:
    held = [scp.hold(), scp.hold()]
    modality = Modality()
    transaction = generate_uid()
    status = modality.ask(scp, commit_request([(CTImageStorage, u) for u in held], transaction))
    assert status.Status == 0x0000
    [(event_type, info, _)] = modality.reports
    assert event_type == 1 and info.TransactionUID == transaction and "FailedSOPSequence" not in info
    assert info.RetrieveAETitle == scp.settings.ae_title
    assert {i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence} == set(held)
    # a strict modality reads the N-ACTION response before anything else on the association
    assert modality.received[:2] == ["N_ACTION_RSP", "N_EVENT_REPORT_RQ"]
    row = scp.row(transaction, lambda r: r["delivered_at"] is not None)
    assert (row["event_type"], row["delivered_how"], row["attempts"]) == (1, "same association", 1)


def test_reports_never_overtake_or_interleave_with_the_n_action_response(scp: Scp) -> None:
    """Sub-millisecond answers on one association, many times: the report was once started from
    the handler and raced the response (report first, or both messages' fragments mixed)."""
    uid = scp.hold()
    modality = Modality()
    assoc = modality.associate(scp.port)
    try:
        for number in range(1, 11):
            modality.arrived.clear()
            status, _ = assoc.send_n_action(
                commit_request([(CTImageStorage, uid)]), 1, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE
            )
            assert status.Status == 0x0000
            assert modality.arrived.wait(5), f"report {number} missing"
            # pynetdicom hands a report to its handler thread before it has finished answering it
            deadline = time.monotonic() + 5
            while len(modality.received) < 2 * number and time.monotonic() < deadline:
                time.sleep(0.005)
    finally:
        assoc.release()
    assert modality.received == ["N_ACTION_RSP", "N_EVENT_REPORT_RQ"] * 10
    assert len(modality.reports) == 10


def test_instances_missing_damaged_or_of_another_class_fail_with_their_reasons(scp: Scp) -> None:
    good, other_class, truncated, file_gone = scp.hold(), scp.hold(MRImageStorage), scp.hold(), scp.hold()
    never_stored = generate_uid()
    (scp.folder / f"{truncated}.dcm").write_bytes(b"truncated")
    (scp.folder / f"{file_gone}.dcm").unlink()
    modality = Modality()
    transaction = generate_uid()
    asked = [good, other_class, truncated, file_gone, never_stored]
    modality.ask(scp, commit_request([(CTImageStorage, u) for u in asked], transaction))
    [(event_type, info, _)] = modality.reports
    assert event_type == 2
    assert [i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence] == [good]
    reasons = {i.ReferencedSOPInstanceUID: int(i.FailureReason) for i in info.FailedSOPSequence}
    assert reasons == {other_class: 0x0119, truncated: 0x0112, file_gone: 0x0112, never_stored: 0x0112}
    assert all(i.ReferencedSOPClassUID == CTImageStorage for i in info.FailedSOPSequence)
    why = {f["sop_instance_uid"]: f["why"] for f in scp.row(transaction, lambda r: True)["result"]["failed"]}
    assert (
        why[truncated] == "file has 9 bytes, stored 100" and why[other_class] == f"stored as {MRImageStorage}"
    )


def test_a_request_none_of_which_is_held_lists_only_failures(scp: Scp) -> None:
    modality = Modality()
    modality.ask(scp, commit_request([(CTImageStorage, generate_uid())]))
    [(event_type, info, _)] = modality.reports
    assert event_type == 2 and "ReferencedSOPSequence" not in info and len(info.FailedSOPSequence) == 1


def test_the_request_and_its_answer_are_durable_when_the_n_action_succeeds(scp: Scp) -> None:
    held, missing, transaction = scp.hold(), generate_uid(), generate_uid()
    modality = Modality("ASLEEP")  # its listener is down: the report cannot go anywhere yet
    assoc = modality.associate(scp.port, take_reports=False)
    try:
        status, _ = assoc.send_n_action(
            commit_request([(CTImageStorage, held), (CTImageStorage, missing)], transaction),
            1,
            StorageCommitmentPushModel,
            WELL_KNOWN_INSTANCE,
        )
        assert status.Status == 0x0000
        row = scp.commitments.get(transaction)  # read at once: written before the response
    finally:
        assoc.release()
    assert row is not None
    assert (row["calling_ae"], row["event_type"], row["delivered_at"]) == ("ASLEEP", 2, None)
    assert row["peer"].startswith("127.0.0.1:") and row["association_id"] > 0
    assert [r["sop_instance_uid"] for r in row["requested"]] == [held, missing]
    assert [c["sop_instance_uid"] for c in row["result"]["committed"]] == [held]
    assert [(f["sop_instance_uid"], f["failure_reason"]) for f in row["result"]["failed"]] == [
        (missing, 0x0112)
    ]
    assert transaction in [r["transaction_uid"] for r in scp.commitments.recent(50, undelivered=True)]
    # retried with back-off, then left where operations look
    row = scp.row(transaction, lambda r: r["delivered_how"] == UNDELIVERABLE)
    assert row["attempts"] == 1 + 1 + len(RETRY_DELAYS_S) and "ConnectionError" in row["last_error"]


def test_after_a_release_the_report_goes_to_the_configured_peer_on_a_new_association(scp: Scp) -> None:
    held = scp.hold()
    modality = Modality("MODALITY")
    listener = modality.listen(scp.peers["MODALITY"].port)
    transaction = generate_uid()
    try:
        assoc = modality.associate(scp.port, take_reports=False)
        status, _ = assoc.send_n_action(
            commit_request([(CTImageStorage, held)], transaction),
            1,
            StorageCommitmentPushModel,
            WELL_KNOWN_INSTANCE,
        )
        assoc.release()
        assert status.Status == 0x0000
        assert modality.arrived.wait(10), scp.commitments.get(transaction)
    finally:
        listener.shutdown()
    [(event_type, info, roles)] = modality.reports
    assert event_type == 1 and info.TransactionUID == transaction
    assert info.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == held
    assert roles == [(True, False)]  # radflow proposed the SCP role, the modality took SCU
    row = scp.row(transaction, lambda r: r["delivered_at"] is not None)
    assert row["delivered_how"] == f"new association to MODALITY@127.0.0.1:{scp.peers['MODALITY'].port}"


def test_a_report_the_peer_could_not_take_at_first_arrives_on_a_later_retry(scp: Scp) -> None:
    modality = Modality("LATECOMER")
    assoc = modality.associate(scp.port, take_reports=False)
    transaction = generate_uid()
    status, _ = assoc.send_n_action(
        commit_request([(CTImageStorage, scp.hold())], transaction),
        1,
        StorageCommitmentPushModel,
        WELL_KNOWN_INSTANCE,
    )
    assoc.abort()
    assert status.Status == 0x0000
    scp.row(transaction, lambda r: r["attempts"] >= 2)  # the association, then a refused connection
    listener = modality.listen(scp.peers["LATECOMER"].port)
    try:
        assert modality.arrived.wait(10)
    finally:
        listener.shutdown()
    row = scp.row(transaction, lambda r: r["delivered_at"] is not None)
    assert row["delivered_how"].startswith("new association") and row["last_error"] is None


def test_a_report_for_an_unknown_requester_that_left_is_recorded_as_undeliverable(scp: Scp) -> None:
    modality = Modality("UNKNOWNAE")
    assoc = modality.associate(scp.port, take_reports=False)
    transaction = generate_uid()
    status, _ = assoc.send_n_action(
        commit_request([(CTImageStorage, scp.hold())], transaction),
        1,
        StorageCommitmentPushModel,
        WELL_KNOWN_INSTANCE,
    )
    assoc.abort()
    assert status.Status == 0x0000
    row = scp.row(transaction, lambda r: r["delivered_how"] == UNDELIVERABLE)
    assert row["delivered_at"] is None and "not a configured peer" in row["last_error"]
    assert Modality().ask(scp, commit_request([(CTImageStorage, scp.hold())])).Status == 0x0000


def test_a_listener_that_starts_again_sends_the_reports_it_still_owed(scp: Scp) -> None:
    """A request recorded (so answered with success) by a run that stopped before reporting."""
    held, transaction = scp.hold(), generate_uid()
    requested = [{"sop_class_uid": CTImageStorage, "sop_instance_uid": held}]
    scp.commitments.record_request(
        transaction, "MODALITY", "127.0.0.1:1", 0, requested, {"committed": requested, "failed": []}, 1
    )
    modality = Modality("MODALITY")
    listener = modality.listen(scp.peers["MODALITY"].port)
    try:
        config = DicomConfig(peers={"MODALITY": scp.peers["MODALITY"]})
        storage_commitment_service(scp.settings, config, scp.storage, retry_delays_s=RETRY_DELAYS_S)
        assert modality.arrived.wait(10)
    finally:
        listener.shutdown()
    [(event_type, info, _)] = [r for r in modality.reports if r[1].TransactionUID == transaction]
    assert event_type == 1 and info.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == held
    assert scp.row(transaction, lambda r: r["delivered_at"] is not None)["delivered_how"].startswith("new")


def _item_without_instance() -> Dataset:
    ds = commit_request([(CTImageStorage, "1.2.3")])
    del ds.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    return ds


@pytest.mark.parametrize(
    ("ds", "action", "instance", "expected"),
    [
        (commit_request([(CTImageStorage, "1.2.3")], transaction=""), 1, WELL_KNOWN_INSTANCE, 0x0120),
        (commit_request([]), 1, WELL_KNOWN_INSTANCE, 0x0120),
        (_item_without_instance(), 1, WELL_KNOWN_INSTANCE, 0x0115),
        (commit_request([(CTImageStorage, "1.2.3")]), 2, WELL_KNOWN_INSTANCE, 0x0123),
        (commit_request([(CTImageStorage, "1.2.3")]), 1, "1.2.3.4.5", 0x0117),
    ],
    ids=["no transaction uid", "nothing referenced", "item lacks a uid", "unknown action", "wrong instance"],
)
def test_bad_requests_get_a_failure_status_with_a_comment_and_the_scp_keeps_serving(
    scp: Scp, ds: Dataset, action: int, instance: str, expected: int
) -> None:
    modality = Modality()
    status = modality.ask(scp, ds, action=action, instance=instance, wait=False)
    assert status.Status == expected and status.ErrorComment
    assert not modality.reports
    if "TransactionUID" in ds:
        assert scp.commitments.get(ds.TransactionUID) is None
    assert Modality().ask(scp, commit_request([(CTImageStorage, scp.hold())])).Status == 0x0000
