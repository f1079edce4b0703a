"""Outbound HL7 end to end: orders over MLLP and MPPS over DICOM drive exams, radflow's processes
(worker, listen, api) send ORM^O01 status updates to a python-hl7 peer, a poison message is
dead-lettered while the rest flows, and a retry with a reason over HTTP delivers it."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import pytest
from pydicom.uid import generate_uid

from tests.conftest import ROOT, Stack, running_stack
from tests.e2e.mllp import cancel, exchange, order, parse_ack, wait_for_exam
from tests.hl7_peer import PeerServer, destination_yaml
from tests.integration.mpps_builders import ended, in_progress, mpps_scu

REFUSED: set[str] = set()  # accessions the peer answers AR for
SILENT: set[str] = set()  # accessions the peer does not answer at all


def answer(message: hl7.Message) -> str | None:
    accession = str(message.segment("OBR")[18])
    if accession in SILENT:
        return None
    return "AR" if accession in REFUSED else "AA"


@pytest.fixture(scope="module")
def peer() -> Iterator[PeerServer]:
    with PeerServer(answer) as server:
        yield server


@pytest.fixture(scope="module")
def radflow(
    tmp_path_factory: pytest.TempPathFactory, temporal_address: str, peer: PeerServer
) -> Iterator[Stack]:
    config = tmp_path_factory.mktemp("hl7config")
    (config / "destinations.yaml").write_text(
        destination_yaml("PEER", peer.port, max_attempts=3, ack_timeout_s=1)
    )
    with running_stack(
        tmp_path_factory.mktemp("outbound"), temporal_address, {"RADFLOW_HL7_CONFIG_DIR": str(config)}
    ) as stack:
        yield stack


def accession(tag: str) -> str:
    return f"{tag}{uuid.uuid4().hex[:8].upper()}"


def place(stack: Stack, acc: str, patient: str) -> None:
    ack = parse_ack(exchange(stack.mllp_port, order(acc, f"O-{acc}", patient_id=patient).encode()))
    assert ack.code == "AA", ack.raw
    wait_for_exam(stack, acc)


def received_for(peer: PeerServer, acc: str) -> list[hl7.Message]:
    return [m for m in list(peer.received) if str(m.segment("OBR")[18]) == acc]


def outbound(stack: Stack, **params: Any) -> list[dict[str, Any]]:
    response = stack.get("/api/hl7/outbound", **params)
    response.raise_for_status()
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


def test_mpps_progress_reaches_the_order_placer_as_orm_status(radflow: Stack, peer: PeerServer) -> None:
    acc, step = accession("OS"), generate_uid()
    place(radflow, acc, f"M{acc}")
    with mpps_scu(radflow.dicom_port, calling_ae="CT01") as scu:
        assert scu.create(in_progress(acc), step).status == 0x0000
        wait_for_exam(radflow, acc, "in_progress")
        assert scu.set(ended("COMPLETED", []), step).status == 0x0000
    radflow.wait_until(lambda: len(received_for(peer, acc)) == 2)
    started, completed = received_for(peer, acc)
    assert [str(m.segment("ORC")[5]) for m in (started, completed)] == ["IP", "CM"]
    assert str(started.segment("ORC")[1]) == "SC"
    assert str(started.segment("ORC")[2]) == f"PL-{acc}"  # EI-1 as the order gave it
    assert str(started["MSH.F5"]) == "PEER" and str(started["MSH.F3"]) == "RADFLOW"
    assert str(started.segment("PID")[3][0][0]) == f"M{acc}"
    rows = radflow.wait_until(
        lambda: (r := outbound(radflow, accession=acc, status="delivered")) and len(r) == 2 and r
    )
    assert {r["control_id"] for r in rows} == {str(started["MSH.F10"]), str(completed["MSH.F10"])}


def test_a_refused_message_is_dead_lettered_the_rest_flows_and_a_retry_with_reason_delivers(
    radflow: Stack, peer: PeerServer
) -> None:
    poison, fine = accession("DL"), accession("OK")
    place(radflow, poison, f"M{poison}")
    place(radflow, fine, f"M{fine}")
    REFUSED.add(poison)
    for acc in (poison, fine):
        ack = parse_ack(exchange(radflow.mllp_port, cancel(acc, f"C-{acc}", patient_id=f"M{acc}").encode()))
        assert ack.code == "AA", ack.raw

    dead = radflow.wait_until(lambda: outbound(radflow, accession=poison, status="dead"))[0]
    radflow.wait_until(lambda: outbound(radflow, accession=fine, status="delivered"))
    assert dead["attempts"] == 1 and "answered AR" in dead["last_error"]
    assert [str(m.segment("ORC")[5]) for m in received_for(peer, fine)] == ["CA"]

    url = f"/api/hl7/outbound/{dead['id']}/retry"
    blank = radflow.post(url, json={"reason": "  "})
    assert blank.status_code == 400 and "reason" in blank.json()["detail"]

    REFUSED.discard(poison)
    retried = radflow.post(url, json={"reason": "peer mapping fixed"}, user="ops.jane", roles=("operations",))
    assert retried.status_code == 200, retried.text
    radflow.wait_until(lambda: outbound(radflow, accession=poison, status="delivered"))
    detail = radflow.get(f"/api/hl7/outbound/{dead['id']}").json()
    assert detail["attempts"] == 2 and "ORC|SC|" in detail["message"]
    assert [(a["action"], a["reason"], a["user_name"]) for a in detail["actions"]] == [
        ("retry", "peer mapping fixed", "ops.jane")
    ]
    again = radflow.post(url, json={"reason": "twice"})
    assert again.status_code == 409

    cli = subprocess.run(
        [sys.executable, "-m", "api.cli", "hl7", "outbound", "retry", str(dead["id"]), "--reason", "x"],
        env=radflow.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 1 and "delivered" in cli.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "api.cli", "hl7", "outbound", "list", "--accession", poison],
        env=radflow.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0 and "delivered" in listed.stdout


def test_worker_refuses_to_start_on_an_invalid_destinations_file(tmp_path: Path, radflow: Stack) -> None:
    (tmp_path / "destinations.yaml").write_text("destinations:\n  - name: X\n    host: h\n    port: nope\n")
    env = {**radflow.env, "RADFLOW_HL7_CONFIG_DIR": str(tmp_path), "RADFLOW_DATA_DIR": str(tmp_path / "var")}
    result = subprocess.run(
        [sys.executable, "-m", "api.cli", "worker"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert (
        f"{tmp_path / 'destinations.yaml'}:4: destinations[0].port: must be a whole number" in result.stderr
    )


def test_a_worker_killed_while_waiting_for_the_ack_delivers_after_restart(
    radflow: Stack, peer: PeerServer
) -> None:
    acc = accession("KW")
    place(radflow, acc, f"M{acc}")
    SILENT.add(acc)
    ack = parse_ack(exchange(radflow.mllp_port, cancel(acc, f"C-{acc}", patient_id=f"M{acc}").encode()))
    assert ack.code == "AA", ack.raw
    radflow.wait_until(lambda: received_for(peer, acc))
    radflow.stop("worker", kill=True)  # mid-delivery: the peer has the message, no ACK came back
    SILENT.discard(acc)
    radflow.start("worker")
    row = radflow.wait_until(lambda: outbound(radflow, accession=acc, status="delivered"), timeout=40)[0]
    copies = {str(m["MSH.F10"]) for m in received_for(peer, acc)}
    assert len(received_for(peer, acc)) >= 2 and copies == {row["control_id"]}  # the receiver can dedupe
