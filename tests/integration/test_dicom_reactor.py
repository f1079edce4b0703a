"""The event-driven association threads (interfaces/dicom/reactor.py) keep pynetdicom's duties:
the network idle timeout, a peer's release and abort each end the association and reach the
association log, and the associations radflow opens itself work end to end."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, build_context
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from adapters.settings import Settings
from adapters.sql import Database
from adapters.storage_log import StorageLog
from interfaces.dicom.reactor import EventDrivenAssociation, EventDrivenDul, associate
from interfaces.dicom.server import start_dicom_server


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
