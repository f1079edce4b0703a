"""The HL7 message log on SQLite and on PostgreSQL: what is accepted, refused or a duplicate, the
ACK each gets, group commit under concurrency, and the relay's and workflow's bookkeeping."""

from __future__ import annotations

import asyncio
import json

from adapters.message_log import MessageLog, MessageLogWriter
from tests.integration.builders import adt_a08, inbound, orm, record


def test_an_accepted_order_is_stored_with_its_raw_bytes_ack_and_commands(
    message_log: MessageLog, uid: str
) -> None:
    raw = orm(f"ACC{uid}", "NW", f"C{uid}")

    recorded = record(message_log, raw)

    assert (recorded.status, recorded.ack_code) == ("accepted", "AA")
    assert f"MSA|AA|C{uid}".encode() in recorded.ack
    row = message_log.get(recorded.id)
    assert row is not None
    assert bytes(row["raw"]) == raw
    assert bytes(row["ack"]) == recorded.ack
    assert (row["status"], row["ack_code"], row["error"]) == ("accepted", "AA", None)
    assert (row["sending_application"], row["sending_facility"], row["control_id"]) == (
        "HIS",
        "GENERAL",
        f"C{uid}",
    )
    assert (row["message_type"], row["accession"], row["patient_id"]) == ("ORM^O01", f"ACC{uid}", "P1")
    [entry] = json.loads(row["commands"])
    assert entry["workflow_id"] == f"exam-ACC{uid}"
    assert entry["command"]["kind"] == "place_order"
    assert entry["command"]["provenance"]["source"]["message_id"] == f"hl7:{recorded.id}"
    assert row["relayed_at"] is None and row["applied_status"] is None


def test_a_repeated_control_id_is_a_duplicate_answered_with_the_original_ack_bytes(
    message_log: MessageLog, uid: str
) -> None:
    raw = orm(f"ACC{uid}", "NW", f"C{uid}")
    original = record(message_log, raw)

    repeat = record(message_log, raw)

    assert (repeat.status, repeat.ack_code) == ("duplicate", "AA")
    assert repeat.ack == original.ack  # byte for byte, MSH-7 and MSH-10 of the ACK included
    assert repeat.id != original.id
    row = message_log.get(repeat.id)
    assert row is not None
    assert (row["status"], row["duplicate_of"], row["commands"]) == ("duplicate", original.id, None)
    assert bytes(row["ack"]) == original.ack
    unrelayed = {r["id"] for r in message_log.unrelayed(limit=100_000)}
    assert original.id in unrelayed and repeat.id not in unrelayed


def test_the_same_control_id_from_another_facility_is_not_a_duplicate(
    message_log: MessageLog, uid: str
) -> None:
    record(message_log, orm(f"ACC{uid}A", "NW", f"C{uid}", facility="GENERAL"))

    other = record(message_log, orm(f"ACC{uid}B", "NW", f"C{uid}", facility="CLINIC"))

    assert (other.status, other.ack_code) == ("accepted", "AA")


def test_a_cancel_for_an_accession_never_ordered_is_refused_with_ae(
    message_log: MessageLog, uid: str
) -> None:
    refused = record(message_log, orm(f"ACC{uid}", "CA", f"C{uid}"))

    assert (refused.status, refused.ack_code) == ("rejected", "AE")
    assert f"no order with accession ACC{uid}" in refused.reason
    assert f"MSA|AE|C{uid}".encode() in refused.ack
    assert b"\rERR|" in refused.ack
    row = message_log.get(refused.id)
    assert row is not None
    assert (row["status"], row["commands"]) == ("rejected", None)
    assert refused.id not in {r["id"] for r in message_log.unrelayed(limit=100_000)}


def test_a_cancel_for_an_accession_ordered_earlier_is_accepted(message_log: MessageLog, uid: str) -> None:
    record(message_log, orm(f"ACC{uid}", "NW", f"C{uid}-1"))

    cancel = record(message_log, orm(f"ACC{uid}", "CA", f"C{uid}-2"))

    assert (cancel.status, cancel.ack_code) == ("accepted", "AA")


def test_a_second_new_order_for_the_same_accession_is_refused_with_ae(
    message_log: MessageLog, uid: str
) -> None:
    first = record(message_log, orm(f"ACC{uid}", "NW", f"C{uid}-1"))

    second = record(message_log, orm(f"ACC{uid}", "NW", f"C{uid}-2"))

    assert (second.status, second.ack_code) == ("rejected", "AE")
    assert f"accession ACC{uid} already ordered in message {first.id}" in second.reason
    assert f"MSA|AE|C{uid}-2".encode() in second.ack


async def test_the_writer_stores_each_of_many_concurrent_messages_exactly_once(
    message_log: MessageLog, uid: str
) -> None:
    sender = f"HIS{uid}"
    messages = [orm(f"ACC{uid}-{n}", "NW", f"C{n}", sender=sender) for n in range(60)]
    commits = 0

    def count_commit() -> None:
        nonlocal commits
        commits += 1

    writer = MessageLogWriter(message_log, on_commit=count_commit)
    try:
        # every message twice, all at once: the second copy must be seen as a duplicate even
        # when both land in the same group (the same transaction)
        results = await asyncio.gather(*(writer.record(inbound(raw)) for raw in messages + messages))
    finally:
        writer.close()

    firsts, seconds = results[: len(messages)], results[len(messages) :]
    statuses = sorted([r.status for r in results])
    assert statuses == ["accepted"] * len(messages) + ["duplicate"] * len(messages)
    for a, b in zip(firsts, seconds, strict=True):
        accepted, duplicate = (a, b) if a.status == "accepted" else (b, a)
        assert duplicate.ack == accepted.ack
        assert message_log.get(duplicate.id)["duplicate_of"] == accepted.id  # type: ignore[index]
    rows = message_log.db.query(
        "SELECT control_id, status FROM hl7_messages WHERE sending_application = ? ORDER BY id", (sender,)
    )
    accepted_ids = sorted(r["control_id"] for r in rows if r["status"] == "accepted")
    assert accepted_ids == sorted(f"C{n}" for n in range(60))
    assert len(rows) == 2 * len(messages)
    assert 1 <= commits < len(results)  # grouped: fewer commits than messages


async def test_ack_times_are_written_after_a_quiet_moment_without_a_commit_of_their_own(
    message_log: MessageLog, uid: str
) -> None:
    commits = 0

    def count_commit() -> None:
        nonlocal commits
        commits += 1

    writer = MessageLogWriter(message_log, on_commit=count_commit, ack_flush_s=0.05)
    try:
        first = await writer.record(inbound(orm(f"ACC{uid}-1", "NW", f"C{uid}-1")))
        writer.acked(first.id, "2026-12-05T08:00:00.250000+00:00")
        for _ in range(100):  # nothing else arrives: the quiet-time flush writes it
            if (message_log.get(first.id) or {}).get("acked_at"):
                break
            await asyncio.sleep(0.02)
        assert message_log.get(first.id)["acked_at"] == "2026-12-05T08:00:00.250000+00:00"  # type: ignore[index]
        second = await writer.record(inbound(orm(f"ACC{uid}-2", "NW", f"C{uid}-2")))
        writer.acked(second.id, "2026-12-05T08:00:01.500000+00:00")
    finally:
        writer.close()  # closing writes what is still held back
    assert message_log.get(second.id)["acked_at"] == "2026-12-05T08:00:01.500000+00:00"  # type: ignore[index]
    assert commits == 2  # one per recorded message; the ACK times woke nobody


def test_record_outcome_stores_what_applying_the_message_did(message_log: MessageLog, uid: str) -> None:
    recorded = record(message_log, orm(f"ACC{uid}", "NW", f"C{uid}"))

    message_log.record_outcome(f"api:{recorded.id}", "applied", "")  # not an HL7 row: ignored
    untouched = message_log.get(recorded.id)
    message_log.record_outcome(f"hl7:{recorded.id}", "refused", f"exam ACC{uid}: already ordered")
    row = message_log.get(recorded.id)

    assert untouched is not None and untouched["applied_status"] is None
    assert row is not None
    assert row["applied_status"] == "refused"
    assert row["applied_reason"] == f"exam ACC{uid}: already ordered"
    assert row["applied_at"]


def test_accepted_rows_wait_in_order_until_marked_relayed(message_log: MessageLog, uid: str) -> None:
    order = record(message_log, orm(f"ACC{uid}", "NW", f"C{uid}-1"))
    refused = record(message_log, orm(f"ACC{uid}X", "CA", f"C{uid}-2"))
    update = record(message_log, adt_a08(f"P{uid}", "ROE^JANE", f"C{uid}-3"))
    cancel = record(message_log, orm(f"ACC{uid}", "CA", f"C{uid}-4"))
    mine = {order.id, refused.id, update.id, cancel.id}

    def waiting() -> list[dict]:  # type: ignore[type-arg]
        return [r for r in message_log.unrelayed(limit=100_000) if r["id"] in mine]

    rows = waiting()
    assert [r["id"] for r in rows] == [order.id, update.id, cancel.id]
    assert [r["commands"][0]["workflow_id"] for r in rows] == [
        f"exam-ACC{uid}",
        f"patient-HOSP|P{uid}",
        f"exam-ACC{uid}",
    ]
    assert rows[1]["commands"][0]["command"]["provenance"]["source"]["message_id"] == f"hl7:{update.id}"

    message_log.mark_relay_failed(update.id, "temporal unavailable")
    assert message_log.get(update.id)["relay_error"] == "temporal unavailable"  # type: ignore[index]
    message_log.mark_relayed([order.id, update.id])

    assert [r["id"] for r in waiting()] == [cancel.id]
    relayed = message_log.get(update.id)
    assert relayed is not None and relayed["relayed_at"] and relayed["relay_error"] is None
    message_log.mark_relayed([cancel.id])
    assert waiting() == []


def test_what_a_tolerant_channel_let_through_is_kept_with_the_message(
    message_log: MessageLog, uid: str
) -> None:
    entry = inbound(orm(f"ACC{uid}", "NW", f"C{uid}"))
    entry.warnings = ["PID-7 birth date is empty", "procedure CTHEAD: CPT 70450, 15 min"]
    with message_log.db.transaction() as cur:
        recorded = message_log.record(cur, entry)
    row = message_log.get(recorded.id)
    assert row is not None and json.loads(row["warnings"]) == entry.warnings
    quiet = record(message_log, orm(f"ACQ{uid}", "NW", f"Q{uid}"))
    assert message_log.get(quiet.id)["warnings"] is None  # type: ignore[index]
