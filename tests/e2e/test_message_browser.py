"""The message browser end to end: messages sent over real MLLP to a running radflow are found
over HTTP and the CLI by their business keys, each entry shows its raw text, tree and ACK, links
to the events it caused, and every event links back to its message."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ROOT, Stack, running_stack
from tests.e2e.mllp import cancel, exchange, order, parse_ack, wait_for_exam


@pytest.fixture(scope="module")
def radflow(tmp_path_factory: pytest.TempPathFactory, temporal_address: str) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("browser"), temporal_address) as stack:
        yield stack


def search(stack: Stack, **params: Any) -> list[dict[str, Any]]:
    response = stack.get("/api/hl7/messages", **params)
    assert response.status_code == 200, response.text
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


def test_messages_are_found_by_their_keys_and_link_to_their_events_and_back(radflow: Stack) -> None:
    tag = uuid.uuid4().hex[:8].upper()
    accession, mrn, sender = f"ACC{tag}", f"MRN{tag}", f"HIS{tag}"
    acks = {
        "order": parse_ack(
            exchange(
                radflow.mllp_port,
                order(accession, f"C{tag}-1", patient_id=mrn, sender=(sender, "GENHOSP")).encode(),
            )
        ),
        "refused": parse_ack(
            exchange(
                radflow.mllp_port, cancel(f"{accession}X", f"C{tag}-2", sender=(sender, "GENHOSP")).encode()
            )
        ),
    }
    assert (acks["order"].code, acks["refused"].code) == ("AA", "AE")
    wait_for_exam(radflow, accession)

    [by_accession] = search(radflow, accession=accession)
    assert (by_accession["control_id"], by_accession["type"], by_accession["sender"]) == (
        f"C{tag}-1",
        "ORM^O01",
        sender,
    )
    assert (by_accession["status"], by_accession["ack_code"], by_accession["mrn"]) == ("accepted", "AA", mrn)
    assert [m["id"] for m in search(radflow, mrn=mrn)] == [by_accession["id"]]
    assert [m["id"] for m in search(radflow, placer=f"PL-{accession}")] == [by_accession["id"]]
    assert [m["control_id"] for m in search(radflow, sender=sender)] == [f"C{tag}-2", f"C{tag}-1"]
    [refused] = search(radflow, sender=sender, status="rejected")
    assert refused["reason"] == f"unknown order: no order with accession {accession}X"
    assert search(radflow, sender=sender, since="2999-01-01") == []

    # the entry: raw, tree, ACK, and the events it caused (once the worker applied it)
    detail = radflow.wait_until(
        lambda: (d := radflow.get(f"/api/hl7/messages/{by_accession['id']}").json())["events"] and d
    )
    assert (
        detail["raw"].startswith(f"MSH|^~\\&|{sender}|GENHOSP|RADFLOW")
        and f"\rOBR|1|PL-{accession}" in detail["raw"]
    )
    assert parse_ack(detail["ack"].encode()).raw == acks["order"].raw
    assert {"position": "OBR-18", "value": accession} in next(
        s for s in detail["tree"] if s["segment"] == "OBR"
    )["fields"]
    assert detail["applied"]["status"] == "applied"
    [event] = detail["events"]
    assert (event["type"], event["version"], event["href"]) == (
        "ExamOrdered",
        1,
        f"/api/exams/{accession}/history",
    )
    history = radflow.get(event["href"]).json()["events"]
    assert history[0]["message_href"] == f"/api/hl7/messages/{by_accession['id']}"
    assert radflow.get(history[0]["message_href"]).json()["id"] == by_accession["id"]

    assert radflow.get("/api/hl7/messages/987654321").status_code == 404
    assert radflow.get("/api/hl7/messages", until="not a time").status_code == 400
    page = radflow.get("/hl7/messages")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")

    cli = subprocess.run(
        [sys.executable, "-m", "api.cli", "hl7", "search", "--sender", sender, "--json"],
        env=radflow.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert [m["control_id"] for m in json.loads(cli.stdout)["messages"]] == [f"C{tag}-2", f"C{tag}-1"]


def test_a_patient_update_links_to_the_patient_events_and_back(radflow: Stack) -> None:
    tag = uuid.uuid4().hex[:8].upper()
    adt = "\r".join(
        [
            f"MSH|^~\\&|HIS|GENHOSP|RADFLOW|RADIOLOGY|20261128093000||ADT^A08^ADT_A01|C{tag}|P|2.5.1",
            "EVN|A08|20261128093000",
            f"PID|1||MRN{tag}^^^GENHOSP^MR||ROE^JANE||19710304|F",
            "PV1|1|O",
        ]
    )
    assert parse_ack(exchange(radflow.mllp_port, adt.encode())).code == "AA"
    [entry] = search(radflow, control_id=f"C{tag}")

    detail = radflow.wait_until(
        lambda: (d := radflow.get(f"/api/hl7/messages/{entry['id']}").json())["events"] and d
    )

    [event] = detail["events"]
    assert event["href"] == f"/api/events/{event['aggregate_id']}"
    history = radflow.get(event["href"]).json()["events"]
    assert [e["message_href"] for e in history] == [f"/api/hl7/messages/{entry['id']}"]
    assert radflow.get("/api/events/not-a-uuid").status_code == 400
    assert radflow.get(f"/api/events/{uuid.uuid4()}").status_code == 404
