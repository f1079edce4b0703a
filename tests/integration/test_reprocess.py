"""Reprocessing a stored HL7 message on SQLite and PostgreSQL: a new row linked to the original
with who and why, its commands waiting for the relay, idempotent, never a duplicate of its own
original; and the browser's HTTP routes and CLI on top of it."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from adapters.message_log import MessageFilters, MessageLog, UnknownMessage
from api.cli import main as cli
from api.hl7_messages import hl7_messages_router, reprocess_message
from tests.conftest import authorised_client
from tests.integration.builders import orm, record


def unrelayed_ids(log: MessageLog) -> set[int]:
    return {r["id"] for r in log.unrelayed(limit=100_000)}


def test_a_refused_cancel_reprocessed_after_its_order_arrived_is_accepted_and_linked(
    message_log: MessageLog, uid: str
) -> None:
    cancel = record(message_log, orm(f"ACC{uid}", "CA", f"C{uid}-1"))
    record(message_log, orm(f"ACC{uid}", "NW", f"C{uid}-2"))

    entry, created = reprocess_message(message_log, cancel.id, "order arrived late", "alice")

    assert cancel.status == "rejected" and created
    assert (entry["status"], entry["ack_code"], entry["reprocess_of"]) == ("accepted", "AA", cancel.id)
    assert entry["reprocess"] == {"of": cancel.id, "reason": "order arrived late", "by": "alice"}
    assert f"MSA|AA|C{uid}-1" in entry["ack"]  # kept, never sent: the sender had its AE long ago
    assert entry["id"] in unrelayed_ids(message_log)
    row = message_log.get(entry["id"])
    assert row is not None and f'"message_id": "hl7:{entry["id"]}"' in row["commands"]
    original = message_log.get(cancel.id)
    assert original is not None and original["status"] == "rejected"  # the original is kept as it was
    assert [r["id"] for r in message_log.reprocessed_as(cancel.id)] == [entry["id"]]
    found = message_log.search(MessageFilters(control_id=f"C{uid}-1"))
    assert [(r["id"], r["reprocess_of"]) for r in found] == [(entry["id"], cancel.id), (cancel.id, None)]


def test_reprocessing_again_returns_the_earlier_outcome_and_adds_nothing(
    message_log: MessageLog, uid: str
) -> None:
    cancel = record(message_log, orm(f"ACC{uid}", "CA", f"C{uid}-1"))
    still_refused, first_created = reprocess_message(message_log, cancel.id, "try", "alice")
    again_refused, again_created = reprocess_message(message_log, cancel.id, "try again", "bob")
    record(message_log, orm(f"ACC{uid}", "NW", f"C{uid}-2"))
    accepted, created = reprocess_message(message_log, cancel.id, "order is there now", "alice")
    repeat, repeat_created = reprocess_message(message_log, accepted["id"], "once more", "bob")

    assert (still_refused["status"], first_created) == ("rejected", True)
    assert (again_refused["id"], again_created) == (still_refused["id"], False)  # same refusal
    assert (accepted["status"], created) == ("accepted", True)
    assert (repeat["id"], repeat_created) == (accepted["id"], False)  # a reprocess of a reprocess
    assert [r["id"] for r in message_log.reprocessed_as(cancel.id)] == [still_refused["id"], accepted["id"]]


def test_an_accepted_message_can_be_reprocessed_and_is_not_a_duplicate_of_itself(
    message_log: MessageLog, uid: str
) -> None:
    order = record(message_log, orm(f"ACC{uid}", "NW", f"C{uid}"))

    entry, created = reprocess_message(message_log, order.id, "mapping of priority fixed", "alice")

    # the record-time duplicate-order check leaves the original's own order to the exam, which
    # refuses it as already ordered (shown end to end in tests/e2e/test_reprocess.py)
    assert created and (entry["status"], entry["duplicate_of"]) == ("accepted", None)
    assert entry["id"] in unrelayed_ids(message_log)
    later = record(message_log, orm(f"ACC{uid}", "NW", f"C{uid}"))  # a live resend still is one
    assert (later.status, message_log.get(later.id)["duplicate_of"]) == ("duplicate", order.id)  # type: ignore[index]


def test_an_unknown_message_cannot_be_reprocessed(message_log: MessageLog) -> None:
    with pytest.raises(UnknownMessage):
        reprocess_message(message_log, 987_654_321, "why not", "alice")


# --- over HTTP ----------------------------------------------------------------------------------


@pytest.fixture
def client(message_log: MessageLog) -> TestClient:
    app = FastAPI()
    app.include_router(hl7_messages_router(message_log))
    return authorised_client(app, "al", ("interface_analyst",))  # "al" reprocesses


def test_http_search_pages_and_refuses_bad_parameters_with_400(
    client: TestClient, message_log: MessageLog, uid: str
) -> None:
    sender = f"HIS{uid}"
    rows = [record(message_log, orm(f"ACC{uid}-{n}", "NW", f"C{uid}-{n}", sender=sender)) for n in range(3)]

    first = client.get("/api/hl7/messages", params={"sender": sender, "limit": 2}).json()
    second = client.get(
        "/api/hl7/messages", params={"sender": sender, "limit": 2, "before": first["next"]}
    ).json()

    assert [m["id"] for m in first["messages"]] == [rows[2].id, rows[1].id]
    assert [m["id"] for m in second["messages"]] == [rows[0].id] and second["next"] is None
    assert first["messages"][0]["accession"] == f"ACC{uid}-2" and first["messages"][0]["type"] == "ORM^O01"
    for params, words in (
        ({"since": "yesterday"}, "since='yesterday' is not an ISO 8601"),
        ({"limit": 0}, "limit must be between 1 and 500"),
        ({"limit": 501}, "limit must be between 1 and 500"),
        ({"limit": "ten"}, "limit='ten' is not an integer"),
        ({"status": "lost"}, "unknown status 'lost'"),
        ({"applied": "maybe"}, "unknown applied status 'maybe'"),
        ({"since": "2024-03-02", "until": "2024-03-01"}, "must be before until"),
        ({"before": 987_654_321}, "no message 987654321"),
    ):
        response = client.get("/api/hl7/messages", params=params)
        assert response.status_code == 400, params
        assert words in response.json()["detail"]
    in_window = client.get(
        "/api/hl7/messages", params={"sender": sender, "since": "2000-01-01", "until": "2999-01-01T00:00:00Z"}
    )
    assert len(in_window.json()["messages"]) == 3


def test_http_detail_and_reprocess(client: TestClient, message_log: MessageLog, uid: str) -> None:
    cancel = record(message_log, orm(f"ACC{uid}", "CA", f"C{uid}-1"))
    record(message_log, orm(f"ACC{uid}", "NW", f"C{uid}-2"))

    detail = client.get(f"/api/hl7/messages/{cancel.id}").json()
    blank = client.post(f"/api/hl7/messages/{cancel.id}/reprocess", json={"reason": "  "})
    missing = client.post(f"/api/hl7/messages/{cancel.id}/reprocess", json={"user": "alice"})
    unknown = client.post("/api/hl7/messages/987654321/reprocess", json={"reason": "x"})
    created = client.post(
        f"/api/hl7/messages/{cancel.id}/reprocess", json={"reason": "order came", "user": "al"}
    )
    repeated = client.post(f"/api/hl7/messages/{cancel.id}/reprocess", json={"reason": "again", "user": "bo"})
    after = client.get(f"/api/hl7/messages/{cancel.id}").json()

    assert detail["raw"].startswith("MSH|^~\\&|HIS|GENERAL|") and f"\rORC|CA|PL-ACC{uid}" in detail["raw"]
    assert detail["ack"].split("\r")[1].startswith(f"MSA|AE|C{uid}-1")
    assert detail["tree"][0]["segment"] == "MSH"
    orc = next(s for s in detail["tree"] if s["segment"] == "ORC")
    assert {"position": "ORC-1", "value": "CA"} in orc["fields"]
    assert (detail["status"], detail["reason"], detail["applied"], detail["events"]) == (
        "rejected",
        f"unknown order: no order with accession ACC{uid}",
        None,
        [],
    )
    assert client.get("/api/hl7/messages/987654321").status_code == 404
    assert blank.status_code == 400 and "reason is required" in blank.json()["detail"]
    assert missing.status_code == 400
    assert unknown.status_code == 404
    assert created.status_code == 201 and created.json()["created"] is True
    assert created.json()["status"] == "accepted" and created.json()["reprocess"]["by"] == "al"
    assert repeated.status_code == 200 and repeated.json()["created"] is False
    assert repeated.json()["id"] == created.json()["id"]
    assert after["reprocessed_as"] == [
        {
            "id": created.json()["id"],
            "at": created.json()["received_at"],
            "status": "accepted",
            "reason": "order came",
            "by": "al",
        }
    ]
    page = client.get("/hl7/messages")
    assert page.status_code == 200 and "/api/hl7/messages" in page.text


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_search_and_reprocess(
    message_log: MessageLog, uid: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings_dir: Path = message_log.db.path.parent if message_log.db.path else Path()
    if message_log.db.dialect == "postgres":
        pytest.skip("the CLI test runs on the SQLite file the CLI finds through RADFLOW_DATA_DIR")
    monkeypatch.setenv("RADFLOW_DATA_DIR", str(settings_dir))
    monkeypatch.setenv("RADFLOW_DATABASE_URL", "")
    cancel = record(message_log, orm(f"ACC{uid}", "CA", f"C{uid}-1"))

    refused_again = cli(["hl7", "reprocess", str(cancel.id), "--reason", "try now"])
    record(message_log, orm(f"ACC{uid}", "NW", f"C{uid}-2"))
    accepted = cli(["hl7", "reprocess", str(cancel.id), "--reason", "order came", "--user", "alice"])
    unknown = cli(["hl7", "reprocess", "987654321", "--reason", "x"])
    blank = cli(["hl7", "reprocess", str(cancel.id), "--reason", " "])
    capsys.readouterr()
    found = cli(["hl7", "search", "--accession", f"ACC{uid}"])
    table = capsys.readouterr().out
    bad = cli(["hl7", "search", "--status", "lost"])

    assert (refused_again, accepted, unknown, blank, found, bad) == (1, 0, 2, 2, 0, 2)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["ID", "RECEIVED", "AT"]
    assert len(lines) == 1 + 4  # the cancel, its two reprocesses, the order
    assert (
        f"reprocess of {cancel.id}" in table and f"unknown order: no order with accession ACC{uid}" in table
    )
