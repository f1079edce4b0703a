"""The MLLP listener against real peers: framing, separators, character sets, limits, refusals,
duplicates, and that it keeps serving after each of them. Also /healthz, 404s and C-ECHO."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import hl7
import pytest
from hl7.mllp import open_hl7_connection
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Stack, make_stack
from tests.e2e.mllp import (
    EXAMPLES,
    MllpConnection,
    assert_still_serves,
    cancel,
    exam,
    exchange,
    history_types,
    log_rows,
    order,
    parse_ack,
    wait_for_exam,
)

MAX_FRAME = 2048
READ_TIMEOUT_S = 0.5


def _start(
    tmp: Path, temporal_address: str, parts: tuple[str, ...], extra_env: dict[str, str] | None = None
) -> Stack:
    s = make_stack(tmp, temporal_address, extra_env)
    for part in parts:
        s.start(part)
    s.wait_for_port(s.mllp_port)
    if "api" in parts:
        s.wait_for_port(s.http_port)
    return s


@pytest.fixture(scope="module")
def radflow(tmp_path_factory: pytest.TempPathFactory, temporal_address: str) -> Iterator[Stack]:
    """One whole radflow with default limits, shared by the tests of this module (each test
    uses its own accessions and control ids)."""
    s = _start(tmp_path_factory.mktemp("mllp"), temporal_address, ("worker", "listen", "api"))
    try:
        yield s
    finally:
        s.stop_all()


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory, temporal_address: str) -> Iterator[Stack]:
    """A listener alone, with a small frame limit and a short read timeout."""
    s = _start(
        tmp_path_factory.mktemp("tight"),
        temporal_address,
        ("listen",),
        {"RADFLOW_MLLP_MAX_FRAME_BYTES": str(MAX_FRAME), "RADFLOW_MLLP_READ_TIMEOUT_S": str(READ_TIMEOUT_S)},
    )
    try:
        yield s
    finally:
        s.stop_all()


def _only_row(stack: Stack, control_id: str) -> dict[str, Any]:
    rows = log_rows(stack, "control_id = ?", (control_id,))
    assert len(rows) == 1, rows
    return rows[0]


# --- framing ------------------------------------------------------------------------------


def test_several_messages_on_one_connection_are_each_acknowledged_in_order(radflow: Stack) -> None:
    accessions = [f"MULTI{n}" for n in range(4)]
    with MllpConnection(radflow.mllp_port) as conn:
        # three frames in a single write, then one more after their ACKs
        conn.send_raw(b"".join(b"\x0b" + order(a, f"C-{a}").encode() + b"\x1c\x0d" for a in accessions[:3]))
        acks = [parse_ack(conn.read_ack()) for _ in range(3)]
        acks.append(parse_ack(conn.request(order(accessions[3], f"C-{accessions[3]}").encode())))
    assert [(a.code, a.control_id) for a in acks] == [("AA", f"C-{a}") for a in accessions]
    for accession in accessions:
        assert wait_for_exam(radflow, accession)["procedure"]["code"] == "CTHEAD"


def test_a_frame_split_into_many_small_sends_is_reassembled_into_one_message(radflow: Stack) -> None:
    payload = b"\x0b" + order("SPLIT7", "C-SPLIT7", name="SMALL^SENDS").encode() + b"\x1c\x0d"
    with MllpConnection(radflow.mllp_port) as conn:
        for start in range(0, len(payload), 7):
            conn.send_raw(payload[start : start + 7])
            time.sleep(0.001)
        ack = parse_ack(conn.read_ack())
    assert (ack.code, ack.control_id) == ("AA", "C-SPLIT7")
    assert wait_for_exam(radflow, "SPLIT7")["patient"]["name"] == "SMALL^SENDS"


def test_a_frame_sent_one_byte_at_a_time_is_acknowledged_once(radflow: Stack) -> None:
    # noise before <VT> must be skipped; the end block itself is split across two sends
    payload = b"\r\n" + b"\x0b" + order("BYTE1", "C-BYTE1", name="ONE^BYTE").encode() + b"\x1c\x0d"
    with MllpConnection(radflow.mllp_port) as conn:
        for byte in payload:
            conn.send_raw(bytes([byte]))
        ack = parse_ack(conn.read_ack())
        assert not conn.closed_by_peer(0.3), "listener closed a healthy connection"
        assert conn.unread == b"", "more than one reply to one frame"
    assert (ack.code, ack.control_id) == ("AA", "C-BYTE1")
    assert wait_for_exam(radflow, "BYTE1")["patient"]["name"] == "ONE^BYTE"


@pytest.mark.parametrize("separator", ["\r", "\n", "\r\n"], ids=["CR", "LF", "CRLF"])
def test_cr_lf_and_crlf_segment_separators_give_the_same_exam(radflow: Stack, separator: str) -> None:
    accession = f"SEP{len(separator)}{ord(separator[-1])}"
    ack = parse_ack(
        exchange(radflow.mllp_port, order(accession, f"C-{accession}", separator=separator).encode())
    )
    assert ack.code == "AA", ack.raw
    got = wait_for_exam(radflow, accession)
    assert got["patient"] == {"id": "MRN1", "issuer": "GENHOSP", "name": "DOE^JANE"}
    assert got["procedure"] == {"code": "CTHEAD", "text": "CT head without contrast"}
    assert (got["modality"], got["priority"]) == ("CT", "STAT")
    assert got["placer_order_number"] == f"PL-{accession}"


# --- character sets -----------------------------------------------------------------------


def test_a_latin_1_message_declared_8859_1_keeps_its_accented_names(radflow: Stack) -> None:
    name = "MÜLLER^JOSÉ^Ñ"
    raw = order("LATIN1", "C-LATIN1", name=name, charset="8859/1").encode("latin-1")
    assert "Ü".encode("latin-1") in raw and "Ü".encode() not in raw
    ack = parse_ack(exchange(radflow.mllp_port, raw), encoding="latin-1")
    assert ack.code == "AA", ack.raw
    assert ack.msh[18] == "8859/1"
    assert wait_for_exam(radflow, "LATIN1")["patient"]["name"] == name
    assert _only_row(radflow, "C-LATIN1")["raw"] == raw  # the log keeps the bytes as sent


def test_a_utf8_message_declared_unicode_utf8_keeps_its_names(radflow: Stack) -> None:
    name = "ŻÓŁĆ^Łukasz^山田"
    raw = order("UTF8", "C-UTF8", name=name, charset="UNICODE UTF-8").encode("utf-8")
    ack = parse_ack(exchange(radflow.mllp_port, raw))
    assert ack.code == "AA", ack.raw
    assert wait_for_exam(radflow, "UTF8")["patient"]["name"] == name
    assert _only_row(radflow, "C-UTF8")["raw"] == raw


# --- limits -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [MAX_FRAME + 500, 200_000], ids=["just-over", "past-stream-buffer"])
def test_an_oversized_frame_gets_an_ar_and_the_same_connection_keeps_working(tight: Stack, size: int) -> None:
    big = order(f"BIG{size}", f"C-BIG{size}").encode()
    big = big.replace(b"^Head trauma", b"^" + b"x" * (size - len(big) + 20))
    assert len(big) >= size
    before = len(log_rows(tight, "error LIKE 'frame larger%'"))
    with MllpConnection(tight.mllp_port) as conn:
        ack = parse_ack(conn.request(big))
        assert ack.code == "AR"
        assert f"larger than {MAX_FRAME}" in ack.text
        assert ack.err is not None and ack.err[3].startswith("207^")
        follow = parse_ack(conn.request(order(f"AFTER{size}", f"C-AFTER{size}").encode()))
        assert (follow.code, follow.control_id) == ("AA", f"C-AFTER{size}")
    refused = log_rows(tight, "error LIKE 'frame larger%'")
    assert len(refused) == before + 1
    assert (refused[-1]["status"], refused[-1]["ack_code"]) == ("error", "AR")
    assert_still_serves(tight, f"big{size}")


def test_an_idle_connection_is_closed_after_the_read_timeout(tight: Stack) -> None:
    with MllpConnection(tight.mllp_port) as conn:
        started = time.monotonic()
        assert conn.closed_by_peer(within=10), "idle connection was never closed"
        waited = time.monotonic() - started
    assert READ_TIMEOUT_S * 0.8 <= waited < READ_TIMEOUT_S + 3, waited
    # after a message too, and a peer that stalls mid-frame is cut off as well
    with MllpConnection(tight.mllp_port) as conn:
        assert parse_ack(conn.request(order("IDLE1", "C-IDLE1").encode())).code == "AA"
        assert conn.closed_by_peer(within=10)
    with MllpConnection(tight.mllp_port) as conn:
        conn.send_raw(b"\x0b" + order("STALL1", "C-STALL1").encode()[:40])
        assert conn.closed_by_peer(within=10)
        assert conn.unread == b"", "a half frame must not be acknowledged"
    assert log_rows(tight, "control_id = 'C-STALL1'") == []
    assert_still_serves(tight, "idle")


def test_a_slow_sender_that_never_pauses_for_the_read_timeout_is_not_cut_off(tight: Stack) -> None:
    payload = b"\x0b" + order("DRIP1", "C-DRIP1").encode() + b"\x1c\x0d"
    pause = READ_TIMEOUT_S / 4
    with MllpConnection(tight.mllp_port) as conn:
        started = time.monotonic()
        for start in range(0, len(payload), len(payload) // 8 + 1):
            conn.send_raw(payload[start : start + len(payload) // 8 + 1])
            time.sleep(pause)
        assert time.monotonic() - started > 2 * READ_TIMEOUT_S  # the frame took longer than the timeout
        ack = parse_ack(conn.read_ack())
    assert (ack.code, ack.control_id) == ("AA", "C-DRIP1")


# --- refusals -----------------------------------------------------------------------------


def test_garbage_without_msh_gets_a_nak_and_is_logged(radflow: Stack) -> None:
    garbage = b"GET / HTTP/1.1\r\nHost: radflow\r\n\r\nhello, not hl7 \xff\xfe"
    ack = parse_ack(exchange(radflow.mllp_port, garbage))
    assert ack.code == "AR"
    assert ack.control_id == ""
    assert "no MSH segment" in ack.text
    assert ack.err is not None and ack.err[3].startswith("100^")
    row = log_rows(radflow, "raw = ?", (garbage,))
    assert len(row) == 1
    assert (row[0]["status"], row[0]["ack_code"]) == ("error", "AR")
    assert "no MSH segment" in row[0]["error"]
    assert_still_serves(radflow, "garbage")


def test_a_message_without_msh_9_is_rejected_with_an_err_segment(radflow: Stack) -> None:
    raw = order("NOMSH9", "C-NOMSH9", message_type="").encode()
    ack = parse_ack(exchange(radflow.mllp_port, raw))
    assert (ack.code, ack.control_id) == ("AR", "C-NOMSH9")
    assert "MSH-9" in ack.text
    assert ack.err is not None
    assert ack.err[2] == "MSH^1^9" and ack.err[3].startswith("101^")
    row = _only_row(radflow, "C-NOMSH9")
    assert (row["status"], row["ack_code"], row["commands"]) == ("error", "AR", None)
    assert "MSH-9" in row["error"]
    assert_still_serves(radflow, "nomsh9")


def test_an_unsupported_message_type_is_rejected_as_such(radflow: Stack) -> None:
    oru = (
        "\r".join(
            [
                "MSH|^~\\&|RIS|GENHOSP|RADFLOW|RADIOLOGY|20261128093000||MDM^T02^MDM_T02|C-ORU1|P|2.5.1",
                "EVN|T02|20261128093000",
                "PID|1||MRN1^^^GENHOSP^MR||DOE^JANE",
                "TXA|1|RAD|TX|20261128093000",
                "OBX|1|TX|IMP^Impression||No acute findings.||||||F",
            ]
        )
        + "\r"
    )
    ack = parse_ack(exchange(radflow.mllp_port, oru.encode()))
    assert (ack.code, ack.control_id) == ("AR", "C-ORU1")
    assert "unsupported message type MDM T02" in ack.text  # delimiters in reasons become spaces
    assert ack.err is not None and ack.err[3].startswith("200^")
    assert ack.msh[9] == "ACK^T02^ACK"
    row = _only_row(radflow, "C-ORU1")
    assert (row["status"], row["ack_code"], row["message_type"]) == ("error", "AR", "MDM^T02")
    assert_still_serves(radflow, "oru")


def test_cancelling_an_order_never_placed_is_an_application_error(radflow: Stack) -> None:
    ack = parse_ack(exchange(radflow.mllp_port, cancel("NEVER1", "C-NEVER1").encode()))
    assert (ack.code, ack.control_id) == ("AE", "C-NEVER1")
    assert "unknown order" in ack.text and "NEVER1" in ack.text
    assert ack.err is not None
    row = _only_row(radflow, "C-NEVER1")
    assert (row["status"], row["ack_code"], row["relayed_at"]) == ("rejected", "AE", None)
    assert "unknown order" in row["error"]
    assert_still_serves(radflow, "never")  # by then a relayed cancel would have landed
    assert radflow.get("/api/exams/NEVER1/history").status_code == 404


def test_an_order_without_an_accession_is_an_application_error(radflow: Stack) -> None:
    raw = order("", "C-NOACC").encode()
    ack = parse_ack(exchange(radflow.mllp_port, raw))
    assert (ack.code, ack.control_id) == ("AE", "C-NOACC")
    assert "without an accession number" in ack.text
    assert ack.err is not None
    assert ack.err[2] == "OBR^1^18" and ack.err[3].startswith("101^")
    row = _only_row(radflow, "C-NOACC")
    assert (row["status"], row["ack_code"], row["commands"]) == ("rejected", "AE", None)
    assert_still_serves(radflow, "noacc")


def test_a_duplicate_message_is_acknowledged_again_without_a_second_effect(radflow: Stack) -> None:
    raw = order("DUP1", "C-DUP1").encode()
    first = exchange(radflow.mllp_port, raw)
    wait_for_exam(radflow, "DUP1")
    with MllpConnection(radflow.mllp_port) as conn:  # a resend after the exam exists ...
        again = conn.request(raw)
        again_fast = conn.request(raw)  # ... and one straight after
    assert parse_ack(first).code == "AA"
    assert again == first and again_fast == first, "a duplicate gets the original ACK back"
    # the same control id from another sender is a different message
    other = parse_ack(
        exchange(radflow.mllp_port, order("DUP2", "C-DUP1", sender=("OTHERHIS", "GENHOSP")).encode())
    )
    assert other.code == "AA"
    wait_for_exam(radflow, "DUP2")
    # a later cancel is relayed after the duplicates (order per exam follows the log)
    assert parse_ack(exchange(radflow.mllp_port, cancel("DUP1", "C-DUP1-CA").encode())).code == "AA"
    wait_for_exam(radflow, "DUP1", state="cancelled")
    assert history_types(radflow, "DUP1") == ["ExamOrdered", "ExamCancelled"]
    rows = log_rows(radflow, "control_id = 'C-DUP1' AND sending_application = 'HIS'")
    assert [(r["status"], r["ack_code"]) for r in rows] == [
        ("accepted", "AA"),
        ("duplicate", "AA"),
        ("duplicate", "AA"),
    ]
    assert rows[1]["duplicate_of"] == rows[2]["duplicate_of"] == rows[0]["id"]
    assert rows[1]["relayed_at"] is None and rows[1]["commands"] is None


def test_every_refused_message_is_in_the_message_log_with_its_reason(radflow: Stack) -> None:
    sent = {
        "C-LOG-ORU": order("LOGX", "C-LOG-ORU", message_type="ORU^R01"),
        "C-LOG-CA": cancel("LOGNEVER", "C-LOG-CA"),
        "C-LOG-NOACC": order("", "C-LOG-NOACC"),
        "C-LOG-XO": order("LOGXO", "C-LOG-XO", control="XO"),
        "C-LOG-NOPATIENT": order("LOGNOPAT", "C-LOG-NOPATIENT").replace("\rPID|", "\rZPD|"),
    }
    acks = {}
    with MllpConnection(radflow.mllp_port) as conn:
        for control_id, message in sent.items():
            acks[control_id] = parse_ack(conn.request(message.encode()))
    for control_id, ack in acks.items():
        assert ack.code in ("AE", "AR"), (control_id, ack.raw)
        row = _only_row(radflow, control_id)
        assert row["ack_code"] == ack.code
        assert row["status"] == {"AE": "rejected", "AR": "error"}[ack.code]
        assert row["error"] and row["error"].replace("^", " ")[:40] in ack.text
        assert bytes(row["ack"]) == ack.raw
        assert row["raw"] == sent[control_id].encode()
    assert_still_serves(radflow, "logged")


# --- independent peers and the other doors --------------------------------------------------


async def test_python_hl7s_asyncio_client_gets_its_acks_on_one_connection(radflow: Stack) -> None:
    reader, writer = await open_hl7_connection("127.0.0.1", radflow.mllp_port, encoding="utf-8")
    try:
        codes = []
        for n, accession in enumerate(["PYHL7A", "PYHL7B"]):
            writer.writemessage(hl7.parse(order(accession, f"C-PY{n}", name="PY^PEER")))
            await writer.drain()
            ack = await reader.readmessage()
            codes.append((str(ack.segment("MSA")[1]), str(ack.segment("MSA")[2])))
        writer.writemessage(hl7.parse(order("PYHL7C", "C-PY9", message_type="MFN^M02")))
        await writer.drain()
        nak = await reader.readmessage()
    finally:
        writer.close()
        await writer.wait_closed()
    assert codes == [("AA", "C-PY0"), ("AA", "C-PY1")]
    assert str(nak.segment("MSA")[1]) == "AR"
    assert str(nak.segment("ERR")[3][0][0]) == "200"
    for accession in ("PYHL7A", "PYHL7B"):
        assert wait_for_exam(radflow, accession)["patient"]["name"] == "PY^PEER"


def test_the_example_files_go_through_and_the_cancel_lands(radflow: Stack) -> None:
    with MllpConnection(radflow.mllp_port) as conn:
        codes = [
            parse_ack(conn.request((EXAMPLES / f).read_bytes())).code
            for f in ("adt_a01_register.hl7", "orm_o01_new_order.hl7", "orm_o01_cancel.hl7")
        ]
    assert codes == ["AA", "AA", "AA"]
    wait_for_exam(radflow, "ACC1001", state="cancelled")
    assert history_types(radflow, "ACC1001") == ["ExamOrdered", "ExamCancelled"]
    adt = log_rows(radflow, "control_id = 'ADT0001'")[0]
    radflow.wait_until(lambda: log_rows(radflow, "id = ?", (adt["id"],))[0]["applied_status"] == "applied")


def test_healthz_answers_200_with_every_part_ok(radflow: Stack) -> None:
    response = radflow.get("/healthz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["parts"]) == {"store", "temporal", "mllp", "dicom"}
    assert all(part["ok"] is True for part in body["parts"].values()), body
    assert body["parts"]["mllp"]["port"] == radflow.mllp_port


def test_the_time_each_ack_reached_the_sender_is_logged_and_exported_as_a_histogram(radflow: Stack) -> None:
    with MllpConnection(radflow.mllp_port) as conn:
        ack = parse_ack(conn.request(order("ACKTIME1", "C-ACKTIME1").encode()))
        duplicate = parse_ack(conn.request(order("ACKTIME1", "C-ACKTIME1").encode()))
    assert (ack.code, duplicate.code) == ("AA", "AA")

    def acked() -> list[dict[str, object]]:
        rows = log_rows(radflow, "control_id = 'C-ACKTIME1'")
        return rows if len(rows) == 2 and all(r["acked_at"] for r in rows) else []

    rows = radflow.wait_until(acked)
    for row in rows:  # the ACK goes out after the row is durable, never before the frame came
        assert datetime.fromisoformat(row["acked_at"]) >= datetime.fromisoformat(row["received_at"])
    families = {f.name: f for f in text_string_to_metric_families(radflow.get("/metrics").text)}
    histogram = families["radflow_hl7_inbound_ack_latency_seconds"]
    assert histogram.type == "histogram"
    count = next(s.value for s in histogram.samples if s.name.endswith("_count"))
    infinite = next(s.value for s in histogram.samples if s.labels.get("le") == "+Inf")
    assert count == infinite >= 2


def test_an_unknown_accession_is_a_404_with_a_json_reason(radflow: Stack) -> None:
    for path in ("/api/exams/NO-SUCH-ACC", "/api/exams/NO-SUCH-ACC/history"):
        response = radflow.get(path)
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/json")
        assert "NO-SUCH-ACC" in response.json()["detail"]
    assert exam(radflow, "NO-SUCH-ACC") is None


def test_dcmtk_echoscu_gets_a_successful_c_echo(radflow: Stack) -> None:
    done = subprocess.run(
        ["echoscu", "-aec", "RADFLOW", "127.0.0.1", str(radflow.dicom_port)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    failed = subprocess.run(
        ["echoscu", "-to", "2", "-ta", "2", "-aec", "RADFLOW", "127.0.0.1", str(radflow.mllp_port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert failed.returncode != 0, "echoscu against the MLLP port must fail (the test can fail)"
    assert_still_serves(radflow, "echo")


def test_cancelling_an_exam_twice_is_refused_by_the_exam_and_changes_nothing(radflow: Stack) -> None:
    with MllpConnection(radflow.mllp_port) as conn:
        assert parse_ack(conn.request(order("TWICE1", "C-TWICE1").encode())).code == "AA"
        assert parse_ack(conn.request(cancel("TWICE1", "C-TWICE1-CA1").encode())).code == "AA"
        wait_for_exam(radflow, "TWICE1", state="cancelled")
        # the listener only knows that the order exists; the exam itself refuses the second cancel
        assert parse_ack(conn.request(cancel("TWICE1", "C-TWICE1-CA2").encode())).code == "AA"
        again = parse_ack(conn.request(order("TWICE1", "C-TWICE1-NW2").encode()))
    assert again.code == "AE" and "duplicate order" in again.text
    second = _only_row(radflow, "C-TWICE1-CA2")
    row = radflow.wait_until(
        lambda: (r := log_rows(radflow, "id = ?", (second["id"],))[0])["applied_status"] and r
    )
    assert row["applied_status"] == "refused", row
    assert "cancel" in row["applied_reason"] and "cancelled" in row["applied_reason"], row["applied_reason"]
    assert history_types(radflow, "TWICE1") == ["ExamOrdered", "ExamCancelled"]
