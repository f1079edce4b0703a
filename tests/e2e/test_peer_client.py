"""Inbound from a peer client nobody here wrote: python-hl7's own `mllp_send` program, run as a
subprocess the way an analyst would, sends files of several messages (ADT + ORM) to the
running listener; every ACK it prints is an AA for its message and the exams are visible over
HTTP."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Stack, running_stack
from tests.e2e.mllp import Ack, order, parse_ack, wait_for_exam

MLLP_SEND = shutil.which("mllp_send", path=str(Path(sys.executable).parent))


@pytest.fixture(scope="module")
def peer_stack(tmp_path_factory: pytest.TempPathFactory, temporal_address: str) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("peer"), temporal_address) as stack:
        yield stack


def admit(patient_id: str, control_id: str, name: str) -> str:
    return "\r".join(
        [
            f"MSH|^~\\&|HIS|GENHOSP|RADFLOW|RADIOLOGY|20261128091500||ADT^A01^ADT_A01|{control_id}|P|2.5.1",
            "EVN|A01|20261128091500",
            f"PID|1||{patient_id}^^^GENHOSP^MR||{name}||19800101|M",
            "PV1|1|I|W1^12^B",
        ]
    )


def mllp_send(port: int, *args: str) -> list[Ack]:
    """Run python-hl7's `mllp_send` against the listener; the ACKs it printed, in order."""
    if MLLP_SEND is None:
        pytest.skip("python-hl7's mllp_send program is not installed next to this Python")
    done = subprocess.run(
        [MLLP_SEND, "--port", str(port), *args, "127.0.0.1"], capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    # it prints each ACK as received: <VT>MSH...<CR>MSA...<CR><FS><CR>, then a newline
    blocks = [b.strip(b"\x0b\r\n") for b in done.stdout.split(b"\x1c")]
    return [parse_ack(b + b"\r") for b in blocks if b]


def unique(tag: str) -> str:
    return f"{tag}{time.monotonic_ns() % 10**10}"


def test_a_file_of_adt_and_orders_sent_by_mllp_send_in_loose_mode(peer_stack: Stack, tmp_path: Path) -> None:
    """Loose mode: LF line ends, messages one after another, as files are often kept on disk."""
    patient, first, second = unique("PEER"), unique("PA"), unique("PB")
    controls = [unique("A01-"), unique("ORM-"), unique("ORM-")]
    messages = [
        admit(patient, controls[0], "PEER^ALICE"),
        order(first, controls[1], patient_id=patient, name="PEER^ALICE"),
        order(
            second, controls[2], patient_id=patient, name="PEER^ALICE", code="MRKNEE^MR knee^L", modality="MR"
        ),
    ]
    batch = tmp_path / "batch.hl7"
    batch.write_text("\n".join(m.replace("\r", "\n").strip() for m in messages) + "\n")
    acks = mllp_send(peer_stack.mllp_port, "--loose", "--file", str(batch))
    assert [(a.code, a.control_id) for a in acks] == [("AA", c) for c in controls]
    for accession, modality in ((first, "CT"), (second, "MR")):
        exam = wait_for_exam(peer_stack, accession)
        assert exam["patient"]["id"] == patient
        assert exam["modality"] == modality


def test_a_file_of_mllp_frames_and_a_nak_for_the_broken_one(peer_stack: Stack, tmp_path: Path) -> None:
    """Strict mode reads a file of MLLP frames (not stdin: python-hl7 2's `mllp_send` reads
    stdin as text and fails with "can't concat str to bytes"); a message without its order gets
    an AE/AR with a reason, and the messages around it still get their AA."""
    accession, later = unique("PF"), unique("PG")
    good, broken, after = unique("OK-"), unique("BAD-"), unique("OK-")
    no_obr = "\r".join(order(unique("PX"), broken).split("\r")[:4])  # MSH, PID, PV1, ORC
    frames = [order(accession, good), no_obr, order(later, after)]
    framed = tmp_path / "framed.mllp"
    framed.write_bytes(b"".join(b"\x0b" + f.encode() + b"\x1c\r" for f in frames))
    acks = mllp_send(peer_stack.mllp_port, "--file", str(framed))
    assert [a.control_id for a in acks] == [good, broken, after]
    assert acks[0].code == "AA" and acks[2].code == "AA"
    assert acks[1].code in ("AE", "AR"), acks[1].raw
    assert acks[1].err is not None and acks[1].text, acks[1].raw
    wait_for_exam(peer_stack, accession)
    wait_for_exam(peer_stack, later)
