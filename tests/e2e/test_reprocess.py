"""Reprocessing end to end: a cancel refused over real MLLP (its order had not arrived) is
reprocessed over HTTP with a reason once the order is there; the new row is accepted, linked to
the original and audited, the exam is cancelled by it, and a second reprocess changes nothing.
A reprocess of an accepted order reaches the exam, which refuses the double."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, Stack, running_stack
from tests.e2e.mllp import cancel, exchange, history_types, order, parse_ack, wait_for_exam


@pytest.fixture(scope="module")
def radflow(tmp_path_factory: pytest.TempPathFactory, temporal_address: str) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("reprocess"), temporal_address) as stack:
        yield stack


def reprocess(stack: Stack, message_id: int, **body: Any) -> httpx.Response:
    user = body.get("user")  # who reprocesses: the signed-in user (the body's `user` is ignored)
    return stack.post(
        f"/api/hl7/messages/{message_id}/reprocess", json=body, user=user, roles=("interface_analyst",), timeout=30
    )


def message_id(stack: Stack, control_id: str) -> int:
    [entry] = stack.get("/api/hl7/messages", control_id=control_id).json()["messages"]
    return int(entry["id"])


def test_a_refused_cancel_reprocessed_after_its_order_cancels_the_exam_once(radflow: Stack) -> None:
    tag = uuid.uuid4().hex[:8].upper()
    accession = f"ACC{tag}"
    refused = parse_ack(exchange(radflow.mllp_port, cancel(accession, f"C{tag}-CA").encode()))
    assert refused.code == "AE" and refused.err is not None
    original = message_id(radflow, f"C{tag}-CA")
    assert parse_ack(exchange(radflow.mllp_port, order(accession, f"C{tag}-NW").encode())).code == "AA"
    wait_for_exam(radflow, accession)

    blank = reprocess(radflow, original, reason=" ", user="alice")
    first = reprocess(radflow, original, reason="order arrived after its cancel", user="alice")

    assert blank.status_code == 400 and "reason" in blank.json()["detail"]
    assert first.status_code == 201, first.text
    new = first.json()
    assert (new["status"], new["ack_code"], new["created"]) == ("accepted", "AA", True)
    assert new["reprocess"] == {"of": original, "reason": "order arrived after its cancel", "by": "alice"}
    wait_for_exam(radflow, accession, "cancelled")
    events = history_types(radflow, accession)
    assert events.count("ExamCancelled") == 1
    history = radflow.get(f"/api/exams/{accession}/history").json()["events"]
    cancelled = next(e for e in history if e["type"] == "ExamCancelled")
    assert cancelled["message_href"] == f"/api/hl7/messages/{new['id']}"
    linked = radflow.wait_until(
        lambda: (d := radflow.get(f"/api/hl7/messages/{new['id']}").json())["events"] and d
    )
    assert [e["type"] for e in linked["events"]] == ["ExamCancelled"]
    audited = radflow.get(f"/api/hl7/messages/{original}").json()
    assert (audited["status"], audited["reprocessed_as"][0]["id"]) == ("rejected", new["id"])
    assert audited["reprocessed_as"][0]["by"] == "alice"

    again = reprocess(radflow, original, reason="clicked twice", user="bob")

    assert again.status_code == 200 and again.json()["id"] == new["id"] and again.json()["created"] is False
    time.sleep(2.5)  # the relay polls every second: long enough for a second row to be applied
    assert history_types(radflow, accession) == events
    assert [r["id"] for r in radflow.get(f"/api/hl7/messages/{original}").json()["reprocessed_as"]] == [
        new["id"]
    ]
    assert "hl7 message reprocessed" in radflow.log("api")
    # the log's own refusal names its condition (interfaces/hl7/intake.py binds build_error_ack)
    assert refused.err[3].startswith("204^Unknown key identifier"), refused.err


def test_a_reprocessed_accepted_order_reaches_the_exam_which_refuses_the_double(radflow: Stack) -> None:
    tag = uuid.uuid4().hex[:8].upper()
    accession = f"ACC{tag}"
    assert parse_ack(exchange(radflow.mllp_port, order(accession, f"C{tag}-NW").encode())).code == "AA"
    wait_for_exam(radflow, accession)
    original = message_id(radflow, f"C{tag}-NW")
    before = history_types(radflow, accession)

    response = reprocess(radflow, original, reason="check the new mapping", user="alice")

    assert response.status_code == 201, response.text
    assert response.json()["status"] == "accepted"
    applied = radflow.wait_until(
        lambda: (d := radflow.get(f"/api/hl7/messages/{response.json()['id']}").json())["applied"] and d
    )["applied"]
    assert applied["status"] == "refused" and "already" in applied["reason"]
    assert history_types(radflow, accession) == before


def test_the_cli_reprocesses_with_a_reason_and_says_how_it_went(radflow: Stack) -> None:
    tag = uuid.uuid4().hex[:8].upper()
    refused = parse_ack(exchange(radflow.mllp_port, cancel(f"ACC{tag}", f"C{tag}-CA").encode()))
    assert refused.code == "AE"
    original = message_id(radflow, f"C{tag}-CA")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "api.cli", "hl7", "reprocess", *args],
            env=radflow.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    still = run(str(original), "--reason", "is the order there yet?", "--user", "carol")
    unknown = run("987654321", "--reason", "x")
    no_reason = run(str(original))

    assert still.returncode == 1 and f"no order with accession ACC{tag}" in still.stdout
    assert unknown.returncode == 2 and "no message 987654321" in unknown.stderr
    assert no_reason.returncode == 2
