"""Storage Commitment over real associations (pynetdicom as the modality -> radflow's AE on a free
port), storage log on SQLite and PostgreSQL: which instances are committed and why others fail,
the report on the same association or on a new one to a configured peer, bad requests, and a
report nobody can take staying visible."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from adapters.dicom_config import DicomConfig, Peer
from adapters.message_log import utcnow
from adapters.settings import Settings
from adapters.sql import Database
from adapters.storage_log import StorageLog, StoredInstance
from interfaces.dicom.server import start_dicom_server
from interfaces.dicom.storage_commitment import WELL_KNOWN_INSTANCE, storage_commitment_service
from tests.conftest import free_port

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@dataclass
class Scp:
    log: StorageLog
    port: int
    modality_port: int  # where the configured peer "MODALITY" listens for reports
    folder: Path

    def hold(self, sop_class: str = CTImageStorage, size: int = 100) -> str:
        """An instance as the storage SCP leaves it: file written, row committed."""
        uid = generate_uid()
        path = self.folder / f"{uid}.dcm"
        path.write_bytes(b"\0" * size)
        association = self.log.association_opened("CT01", "RADFLOW", "127.0.0.1:1", "released")
        attributes = {"study": {"patient_id": "P1"}, "series": {"modality": "CT"}, "instance_number": "1"}
        self.log.record_instance(
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
                attributes,
            )
        )
        return uid


@pytest.fixture(scope="module", params=BACKENDS)
def scp(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scp]:
    folder = tmp_path_factory.mktemp("commitment")
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    settings = Settings(data_dir=folder, database_url=url)
    db = Database.for_file(settings, settings.messages_sqlite_path)
    log = StorageLog(db)
    log.create_schema()
    modality_port = free_port()
    config = DicomConfig(peers={"MODALITY": Peer("MODALITY", "127.0.0.1", modality_port)})
    server = start_dicom_server(settings, [storage_commitment_service(settings, config, log)], port=0)
    try:
        yield Scp(log, server.server_address[1], modality_port, folder)
    finally:
        server.shutdown()
        db.close()


def _nodelay(event: Any) -> None:
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def request(references: list[tuple[str, str]], transaction: str | None = None) -> Dataset:
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
    """A pynetdicom modality that collects the N-EVENT-REPORTs it receives."""

    def __init__(self, calling_ae: str = "CT01") -> None:
        self.reports: list[tuple[int, Dataset]] = []
        self.arrived = threading.Event()
        self.ae = AE(ae_title=calling_ae)
        self.ae.add_requested_context(StorageCommitmentPushModel)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 10

    def on_report(self, event: Any) -> tuple[int, None]:
        self.reports.append((int(event.request.EventTypeID), event.event_information))
        self.arrived.set()
        return 0x0000, None

    def ask(
        self,
        port: int,
        ds: Dataset,
        *,
        action: int = 1,
        instance: str = WELL_KNOWN_INSTANCE,
        wait: bool = True,
    ) -> Dataset:
        assoc = self.ae.associate(
            "127.0.0.1",
            port,
            ae_title="RADFLOW",
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self.on_report), (evt.EVT_CONN_OPEN, _nodelay)],
        )
        assert assoc.is_established
        try:
            status, _ = assoc.send_n_action(ds, action, StorageCommitmentPushModel, instance)
            if wait and int(status.Status) == 0:
                assert self.arrived.wait(10), "no N-EVENT-REPORT on the association"
        finally:
            assoc.release()
        return status


def test_every_held_instance_is_committed_on_the_same_association(scp: Scp) -> None:
    held = [scp.hold(), scp.hold()]
    modality = Modality()
    transaction = generate_uid()
    status = modality.ask(scp.port, request([(CTImageStorage, u) for u in held], transaction))
    assert status.Status == 0x0000
    [(event_type, info)] = modality.reports
    assert event_type == 1 and info.TransactionUID == transaction and "FailedSOPSequence" not in info
    assert {i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence} == set(held)
    row = delivered(scp, transaction)
    assert (row["event_type"], row["delivered_how"], row["calling_ae"]) == (1, "same association", "CT01")


def test_instances_not_held_of_another_class_or_damaged_fail_with_their_reasons(scp: Scp) -> None:
    good, other_class, damaged, unknown = scp.hold(), scp.hold(MRImageStorage), scp.hold(), generate_uid()
    (scp.folder / f"{damaged}.dcm").write_bytes(b"truncated")
    modality = Modality()
    modality.ask(scp.port, request([(CTImageStorage, u) for u in (good, other_class, damaged, unknown)]))
    [(event_type, info)] = modality.reports
    assert event_type == 2
    assert [i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence] == [good]
    reasons = {i.ReferencedSOPInstanceUID: int(i.FailureReason) for i in info.FailedSOPSequence}
    assert reasons == {other_class: 0x0119, damaged: 0x0110, unknown: 0x0112}


def test_a_report_the_requesting_association_refuses_goes_to_the_configured_peer_on_a_new_one(
    scp: Scp,
) -> None:
    """The modality's requesting association has no N-EVENT-REPORT handler (pynetdicom answers
    it with a failure), so the report must come on an association radflow opens to it."""
    held = scp.hold()
    modality = Modality("MODALITY")
    modality.ae.add_supported_context(StorageCommitmentPushModel, scp_role=True, scu_role=False)
    listener = modality.ae.start_server(
        ("127.0.0.1", scp.modality_port),
        block=False,
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, modality.on_report)],
    )
    try:
        assoc = modality.ae.associate(
            "127.0.0.1",
            scp.port,
            ae_title="RADFLOW",
            ext_neg=[build_role(StorageCommitmentPushModel, scu_role=True)],
        )
        assert assoc.is_established
        ds = request([(CTImageStorage, held)])
        status, _ = assoc.send_n_action(ds, 1, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE)
        assert status.Status == 0x0000
        assert modality.arrived.wait(20), scp.log.commitments(3)
        assoc.release()
    finally:
        listener.shutdown()
    [(event_type, info)] = modality.reports
    assert event_type == 1 and info.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == held
    row = delivered(scp, info.TransactionUID)
    assert row["delivered_how"].startswith("new association") and row["attempts"] == 2


def delivered(scp: Scp, transaction: str) -> dict[str, Any]:
    """The commitment's row once its delivery is recorded (just after the report went out)."""
    deadline = time.monotonic() + 10
    while True:
        rows = [r for r in scp.log.commitments() if r["transaction_uid"] == transaction and r["delivered_at"]]
        if rows:
            return rows[0]
        assert time.monotonic() < deadline, "delivery not recorded"
        time.sleep(0.05)


def test_a_report_nobody_can_take_is_recorded_as_undelivered(scp: Scp) -> None:
    modality = Modality("UNKNOWNAE")
    assoc = modality.ae.associate("127.0.0.1", scp.port, ae_title="RADFLOW")
    transaction = generate_uid()
    status, _ = assoc.send_n_action(
        request([(CTImageStorage, scp.hold())], transaction),
        1,
        StorageCommitmentPushModel,
        WELL_KNOWN_INSTANCE,
    )
    assoc.abort()
    assert status.Status == 0x0000
    deadline = time.monotonic() + 10
    while not (
        rows := [
            r
            for r in scp.log.commitments(undelivered=True)
            if r["transaction_uid"] == transaction and r["last_error"]
        ]
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert rows[0]["delivered_at"] is None and rows[0]["attempts"] >= 1


@pytest.mark.parametrize(
    ("ds", "action", "instance", "expected"),
    [
        (request([(CTImageStorage, "1.2.3")], transaction=""), 1, WELL_KNOWN_INSTANCE, 0x0120),
        (request([]), 1, WELL_KNOWN_INSTANCE, 0x0120),
        (request([(CTImageStorage, "1.2.3")]), 2, WELL_KNOWN_INSTANCE, 0x0123),
        (request([(CTImageStorage, "1.2.3")]), 1, "1.2.3.4.5", 0x0117),
    ],
    ids=["no transaction uid", "nothing referenced", "unknown action", "wrong instance"],
)
def test_bad_requests_get_a_failure_status_with_a_comment_and_the_scp_keeps_serving(
    scp: Scp, ds: Dataset, action: int, instance: str, expected: int
) -> None:
    status = Modality().ask(scp.port, ds, action=action, instance=instance, wait=False)
    assert status.Status == expected and status.ErrorComment
    assert Modality().ask(scp.port, request([(CTImageStorage, scp.hold())])).Status == 0x0000
