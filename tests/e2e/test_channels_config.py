"""`radflow listen` with a site's channel folder: a bad file stops it before any port opens
(exit 2, naming file:line); a good one selects the channel by sender, applies its code table and
overrides, and refuses with AR a sender no channel accepts."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, Stack, make_stack
from tests.e2e.mllp import MllpConnection, exchange, log_rows, parse_ack

RIS = """name: ris-main
senders:
  - {application: EPIC, facility: MAIN}
message_types: ["ORM^O01"]
validation: strict
required: [PID-7]
fields:
  place_order.modality: {path: [IPC-5, OBR-24], normalise: upper, table: modality_aliases}
  place_order.study_instance_uid: {path: ZDS-1}
"""
LAB = """name: lab
senders:
  - {application: LAB*}
ack: {mode: original}
"""
TABLES = """modality_aliases:
  CAT: CT
  MRI: MR
procedures:
  CTHEAD: {description: CT head without contrast, modality: CT, cpt: "70450", duration_min: 15}
"""


def hl7(
    sender: str, control_id: str, accession: str, modality: str = "cat", birth_date: str = "19800102"
) -> bytes:
    return "\r".join(
        [
            f"MSH|^~\\&|{sender}|MAIN|RADFLOW|RAD|20240315103000||ORM^O01|{control_id}|P|2.5.1",
            f"PID|1||P77^^^HOSP||DOE^JANE||{birth_date}|F",
            "ORC|NW|PL77|FL77",
            f"OBR|1|PL77|FL77|CTHEAD||||||||||||||{accession}||||||{modality}",
            "ZDS|1.2.840.777^RADFLOW^Application^DICOM",
        ]
    ).encode()


@pytest.fixture
def site_stack(tmp_path: Path, temporal_address: str) -> Iterator[Stack]:
    config = tmp_path / "config"
    (config / "channels").mkdir(parents=True)
    (config / "channels" / "10-ris.yaml").write_text(RIS)
    (config / "channels" / "20-lab.yaml").write_text(LAB)
    (config / "code_tables.yaml").write_text(TABLES)
    stack = make_stack(tmp_path, temporal_address, {"RADFLOW_HL7_CONFIG_DIR": str(config)})
    stack.start("listen")  # the listener ACKs without Temporal or the worker
    try:
        stack.wait_for_port(stack.mllp_port)
        yield stack
    finally:
        stack.stop_all()


def test_listen_refuses_to_start_on_a_bad_channel_file(tmp_path: Path, temporal_address: str) -> None:
    config = tmp_path / "config"
    (config / "channels").mkdir(parents=True)
    (config / "channels" / "10-ris.yaml").write_text(
        RIS.replace("table: modality_aliases", "table: modalities")
    )
    stack = make_stack(tmp_path, temporal_address, {"RADFLOW_HL7_CONFIG_DIR": str(config)})
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "listen"],
        env=stack.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert f"{config / 'channels' / '10-ris.yaml'}:8: fields.place_order.modality.table" in done.stderr
    assert "unknown code table 'modalities'" in done.stderr


def test_a_site_config_selects_by_sender_applies_tables_and_overrides(site_stack: Stack) -> None:
    ack = parse_ack(exchange(site_stack.mllp_port, hl7("EPIC", "CH-1", "ACC-CH-1")))
    assert ack.code == "AA", ack.raw
    [row] = log_rows(site_stack, "control_id = ?", ("CH-1",))
    assert row["channel"] == "ris-main"
    [entry] = json.loads(row["commands"])
    assert entry["command"]["modality"] == "CT"  # 'cat' through modality_aliases
    assert entry["command"]["procedure_text"] == "CT head without contrast"  # procedures table
    assert entry["command"]["study_instance_uid"] == "1.2.840.777"  # ZDS-1 override

    strict = parse_ack(exchange(site_stack.mllp_port, hl7("EPIC", "CH-2", "ACC-CH-2", birth_date="")))
    assert strict.code == "AE" and "PID-7" in strict.text, strict.raw

    lab = parse_ack(exchange(site_stack.mllp_port, hl7("LAB1", "CH-3", "ACC-CH-3")))
    assert lab.code == "AA", lab.raw
    assert log_rows(site_stack, "control_id = ?", ("CH-3",))[0]["channel"] == "lab"

    nobody = parse_ack(exchange(site_stack.mllp_port, hl7("PACS", "CH-4", "ACC-CH-4")))
    assert nobody.code == "AR" and "no channel accepts sender PACS/MAIN" in nobody.text, nobody.raw
    assert log_rows(site_stack, "control_id = ?", ("CH-4",))[0]["status"] != "accepted"


def with_msh15(raw: bytes, accept: str) -> bytes:
    first, _, rest = raw.partition(b"\r")
    return first + f"|||{accept}".encode() + b"\r" + rest


def test_enhanced_mode_over_the_wire_commit_acks_and_silence_for_ne(site_stack: Stack) -> None:
    with MllpConnection(site_stack.mllp_port) as conn:
        commit = parse_ack(conn.request(with_msh15(hl7("EPIC", "CH-E1", "ACC-CH-E1"), "AL")))
        assert commit.code == "CA", commit.raw
        refused = parse_ack(conn.request(with_msh15(hl7("EPIC", "CH-E2", "ACC-CH-E2", birth_date=""), "AL")))
        assert refused.code == "CE", refused.raw
        conn.send(with_msh15(hl7("EPIC", "CH-E3", "ACC-CH-E3"), "NE"))  # no ACK wanted
        assert not conn.closed_by_peer(within=1.0) and conn.unread == b""
        after = parse_ack(conn.request(with_msh15(hl7("EPIC", "CH-E4", "ACC-CH-E4"), "AL")))
        assert (after.code, after.control_id) == ("CA", "CH-E4")  # the connection still serves
    assert log_rows(site_stack, "control_id = ?", ("CH-E3",))[0]["status"] == "accepted"


def test_reprocess_uses_the_sites_current_channels(site_stack: Stack) -> None:
    nobody = parse_ack(exchange(site_stack.mllp_port, hl7("PACS", "CH-R1", "ACC-CH-R1")))
    assert nobody.code == "AR", nobody.raw
    [row] = log_rows(site_stack, "control_id = ?", ("CH-R1",))
    # the analyst fixes the configuration: the lab channel now takes PACS too
    config = Path(site_stack.env["RADFLOW_HL7_CONFIG_DIR"])
    (config / "channels" / "20-lab.yaml").write_text(
        LAB.replace("{application: LAB*}", "{application: LAB*}\n  - {application: PACS}")
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "api.cli",
            "hl7",
            "reprocess",
            str(row["id"]),
            "--reason",
            "PACS added to lab channel",
        ],
        env=site_stack.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    rows = log_rows(site_stack, "control_id = ?", ("CH-R1",))
    assert [(r["status"] == "accepted", r["channel"] or "") for r in rows] == [(False, ""), (True, "lab")]
