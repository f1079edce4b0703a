"""The message browser's search on SQLite and PostgreSQL: every business key finds its messages,
pages follow newest first without OFFSET, every filter reads an index, old databases are
migrated at start, and the log's own record-time checks (unknown accession) answer AE 204."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import psycopg
import pytest

from adapters.message_log import Inbound, MessageFilters, MessageLog, search_keys, utcnow
from adapters.sql import Database
from domain.commands import ModifyOrder, ScheduleExam
from interfaces.hl7 import acks
from interfaces.hl7.message import read_header
from tests.conftest import PG_ADMIN
from tests.integration.builders import adt_a08, orm, provenance, record, segment

# what each filter must read (SQLite's plan names the index it searches)
FILTER_INDEXES = {
    "accession": "hl7_messages_by_accession",
    "mrn": "hl7_messages_by_mrn",
    "placer": "hl7_messages_by_placer",
    "filler": "hl7_messages_by_filler",
    "control_id": "hl7_messages_by_control_id",
    "type": "hl7_messages_by_type",
    "sender": "hl7_messages_by_sender",
    "status": "hl7_messages_by_status",
    "applied": "hl7_messages_by_applied",
}


def two_orders(first: str, second: str, control_id: str, sender: str = "HIS") -> bytes:
    """An ORM^O01 with two order groups: the second accession is only in hl7_message_orders."""
    return "\r".join(
        [
            f"MSH|^~\\&|{sender}|GENERAL|RADFLOW|RADIOLOGY|20240315103000||ORM^O01|{control_id}|P|2.5.1",
            "PID|1||P1^^^HOSP||DOE^JANE||19800102|F",
            "PV1|1|O",
            f"ORC|NW|PL-{first}|FL-{first}",
            segment("OBR", {1: "1", 4: "CTHEAD^CT head", 18: first, 24: "CT"}),
            f"ORC|NW|PL-{second}|FL-{second}",
            segment("OBR", {1: "2", 4: "CTHEAD^CT head", 18: second, 24: "CT"}),
        ]
    ).encode()


def ids(rows: list[dict[str, Any]]) -> list[int]:
    return [int(r["id"]) for r in rows]


def test_each_business_key_finds_its_message(message_log: MessageLog, uid: str) -> None:
    sender = f"HIS{uid}"
    order = record(message_log, orm(f"ACC{uid}", "NW", f"C{uid}-1", sender=sender, patient_id=f"P{uid}"))
    update = record(message_log, adt_a08(f"P{uid}", "ROE^JANE", f"C{uid}-2", sender=sender))
    refused = record(message_log, orm(f"ACC{uid}X", "CA", f"C{uid}-3", sender=sender))

    def found(**keys: str) -> list[int]:
        return ids(message_log.search(MessageFilters(**keys)))

    assert found(accession=f"ACC{uid}") == [order.id]
    assert found(placer=f"PL-ACC{uid}") == [order.id]
    assert found(filler=f"FL-ACC{uid}") == [order.id]
    assert found(mrn=f"P{uid}") == [update.id, order.id]  # newest first
    assert found(control_id=f"C{uid}-2") == [update.id]
    assert found(sender=sender) == [refused.id, update.id, order.id]
    assert found(sender=sender, type=str(message_log.get(update.id)["message_type"])) == [update.id]  # type: ignore[index]
    assert found(sender=sender, type="ORM^O01") == [refused.id, order.id]
    assert found(sender=sender, status="rejected") == [refused.id]
    assert found(accession=f"ACC{uid}X") == [refused.id]  # a refused message is found too
    assert found(accession=f"ACC{uid}", mrn="someone else") == []
    message_log.record_outcome(f"hl7:{order.id}", "refused", "exam already ordered")
    assert found(sender=sender, applied="refused") == [order.id]
    [row] = message_log.search(MessageFilters(control_id=f"C{uid}-1"))
    assert (row["placer_order_number"], row["filler_order_number"], row["patient_id"]) == (
        f"PL-ACC{uid}",
        f"FL-ACC{uid}",
        f"P{uid}",
    )


def test_a_message_with_several_orders_is_found_by_each_of_its_accessions(
    message_log: MessageLog, uid: str
) -> None:
    both = record(message_log, two_orders(f"A{uid}", f"B{uid}", f"C{uid}"))

    assert both.status == "accepted"
    for key in (f"A{uid}", f"B{uid}"):
        assert ids(message_log.search(MessageFilters(accession=key))) == [both.id]
    assert ids(message_log.search(MessageFilters(placer=f"PL-B{uid}"))) == [both.id]
    assert ids(message_log.search(MessageFilters(filler=f"FL-B{uid}"))) == [both.id]


def test_pages_follow_newest_first_from_the_cursor_within_the_time_range(
    message_log: MessageLog, uid: str
) -> None:
    sender = f"HIS{uid}"
    recorded = [
        record(message_log, adt_a08(f"P{uid}", "DOE^JANE", f"C{uid}-{n}", sender=sender)) for n in range(7)
    ]
    newest_first = [r.id for r in reversed(recorded)]
    middle = message_log.get(recorded[2].id)
    last = message_log.get(recorded[5].id)
    assert middle is not None and last is not None

    pages, before = [], None
    while True:
        page = message_log.search(MessageFilters(sender=sender), limit=3, before_id=before)
        if not page:
            break
        pages.append(ids(page))
        before = page[-1]["id"]

    assert pages == [newest_first[:3], newest_first[3:6], newest_first[6:]]
    window = MessageFilters(sender=sender, since=middle["received_at"], until=last["received_at"])
    assert ids(message_log.search(window)) == [recorded[4].id, recorded[3].id, recorded[2].id]


@pytest.mark.parametrize("name", list(FILTER_INDEXES))
def test_every_filter_reads_its_index_with_a_time_range_and_a_cursor(
    message_log: MessageLog, uid: str, name: str
) -> None:
    recorded = record(message_log, orm(f"ACC{uid}", "NW", f"C{uid}"))
    filters = MessageFilters(
        **{name: {"status": "accepted", "applied": "refused"}.get(name, "some value")},
        since="2024-01-01T00:00:00.000000+00:00",
        until="2030-01-01T00:00:00.000000+00:00",
    )
    db = message_log.db
    plan = explain(message_log, filters, recorded.id)

    index = FILTER_INDEXES[name]
    assert index in plan, plan
    if db.dialect == "sqlite":
        assert f"SEARCH hl7_messages USING INDEX {index}" in plan or (
            f"SEARCH hl7_messages USING COVERING INDEX {index}" in plan
        ), plan
        assert "SCAN hl7_messages" not in plan, plan
    else:
        assert "Seq Scan on hl7_messages" not in plan, plan


class _RolledBack(Exception):
    pass


def explain(message_log: MessageLog, filters: MessageFilters, before_id: int | None = None) -> str:
    """The search's plan. On PostgreSQL the session's table is tiny, so the planner would rather
    scan the whole of it, or walk the received_at index backwards and filter; both are hidden
    for the EXPLAIN (in a transaction rolled back), so the plan shows whether the filter's own
    index could serve the search at all (a dropped index leaves only a Seq Scan)."""
    db = message_log.db
    if db.dialect == "sqlite":
        return message_log.explain_search(filters, before_id)
    plan = ""
    try:
        with db.transaction() as cur:
            cur.execute("SET LOCAL enable_seqscan = off")
            if filters != MessageFilters(since=filters.since, until=filters.until):
                cur.execute("DROP INDEX hl7_messages_by_received_at")
            plan = message_log.explain_search(filters, before_id)
            raise _RolledBack
    except _RolledBack:
        pass
    return plan


def test_a_time_range_alone_reads_the_received_at_index(message_log: MessageLog) -> None:
    filters = MessageFilters(since="2024-01-01T00:00:00+00:00", until="2024-02-01T00:00:00+00:00")
    plan = explain(message_log, filters)
    assert "hl7_messages_by_received_at" in plan, plan


@pytest.fixture
def old_database(settings: Any, uid: str) -> Iterator[Database]:
    """An empty database of its own (a fresh PostgreSQL database, dropped after; or a new SQLite
    file), for the first release's tables."""
    if not settings.uses_postgres:
        db = Database.for_file(settings, settings.data_dir / f"old-{uid}.sqlite3")
        yield db
        db.close()
        return
    name = f"radflow_migrate_{uid.lower()}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db = Database("postgres", conninfo=f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}")
    try:
        yield db
    finally:
        db.close()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_an_old_database_gets_the_new_columns_and_indexes_at_start(old_database: Database, uid: str) -> None:
    db = old_database
    table = "hl7_messages"
    # the first release's tables, as they exist on disk at sites today
    db.executescript(
        [
            f"""CREATE TABLE {table} (id {{id}}, received_at TEXT NOT NULL, peer TEXT NOT NULL,
            raw {{blob}} NOT NULL, sending_application TEXT NOT NULL DEFAULT '',
            sending_facility TEXT NOT NULL DEFAULT '', control_id TEXT NOT NULL DEFAULT '',
            message_type TEXT NOT NULL DEFAULT '', status TEXT NOT NULL, ack_code TEXT NOT NULL,
            ack {{blob}} NOT NULL, error TEXT, accession TEXT, patient_id TEXT, commands TEXT,
            duplicate_of BIGINT, relayed_at TEXT, relay_error TEXT, applied_status TEXT,
            applied_reason TEXT, applied_at TEXT)""",
            """CREATE UNIQUE INDEX hl7_messages_sender_control_id
                ON hl7_messages (sending_application, sending_facility, control_id)
                WHERE status = 'accepted'""",
            "CREATE INDEX hl7_messages_accession ON hl7_messages (accession)",
            "CREATE TABLE hl7_message_orders (message_id BIGINT NOT NULL, accession TEXT NOT NULL, "
            "command_kind TEXT NOT NULL)",
        ]
    )
    db.execute(
        "INSERT INTO hl7_messages (received_at, peer, raw, control_id, message_type, status, ack_code, ack, "
        "accession) VALUES (?, 'peer', ?, 'OLD1', 'ORM^O01', 'accepted', 'AA', ?, ?)",
        (utcnow(), b"MSH|...", b"MSA|AA", f"OLD{uid}"),
    )
    log = MessageLog(db)

    log.create_schema()
    log.create_schema()  # a second start changes nothing

    if db.dialect == "sqlite":
        columns = {r["name"] for r in db.query("PRAGMA table_info(hl7_messages)")}
        indexes = {r["name"] for r in db.query("SELECT name FROM sqlite_master WHERE type = 'index'")}
    else:
        columns = {
            r["column_name"]
            for r in db.query(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'hl7_messages'"
            )
        }
        indexes = {
            r["indexname"]
            for r in db.query("SELECT indexname FROM pg_indexes WHERE tablename = 'hl7_messages'")
        }
    assert {
        "placer_order_number",
        "filler_order_number",
        "channel",
        "reprocess_of",
        "commands_hash",
    } <= columns
    assert set(FILTER_INDEXES.values()) <= indexes
    assert "hl7_messages_sender_control_id" not in indexes and "hl7_messages_live_control_id" in indexes
    [old] = log.search(MessageFilters(accession=f"OLD{uid}"))
    assert old["control_id"] == "OLD1"


# --- record-time checks -------------------------------------------------------------------------


def built(raw: bytes, commands: list[dict[str, Any]]) -> Inbound:
    """An Inbound as the interface would hand it over for `commands` (engineer A's mapping of the
    new message types produces these), with both ACK builders bound to the message header."""
    header = read_header(raw.decode())

    def ack(
        code: str, reason: str, condition: tuple[str, str] = acks.INTERNAL_ERROR, location: str = ""
    ) -> bytes:
        return acks.build_ack(header, code, reason, condition, location).encode()

    inbound = Inbound(
        raw=raw,
        peer="127.0.0.1:40000",
        received_at=utcnow(),
        build_ack=partial(ack),
        build_error_ack=ack,
        sending_application="HIS",
        sending_facility="GENERAL",
        control_id=raw.split(b"|")[9].decode(),
        message_type="ORM^O01",
        commands=[{"workflow_id": f"exam-{c['accession']}", "command": c} for c in commands],
    )
    keys = search_keys(inbound)
    inbound.accession = keys["accession"] or ""
    return inbound


def record_inbound(log: MessageLog, inbound: Inbound) -> Any:
    with log.db.transaction() as cur:
        return log.record(cur, inbound)


def test_a_change_for_an_accession_never_ordered_is_refused_with_ae_unknown_key(
    message_log: MessageLog, uid: str
) -> None:
    change = ModifyOrder(provenance=provenance(""), accession=f"ACC{uid}", changes={"priority": "STAT"})
    raw = orm(f"ACC{uid}", "XO", f"C{uid}")

    refused = record_inbound(message_log, built(raw, [change.as_dict()]))

    assert (refused.status, refused.ack_code) == ("rejected", "AE")
    assert refused.reason == f"unknown accession ACC{uid}"
    assert b"ERR||" in refused.ack and b"|204^Unknown key identifier^HL70357|" in refused.ack
    assert ids(message_log.search(MessageFilters(accession=f"ACC{uid}", status="rejected"))) == [refused.id]


def test_a_command_naming_its_order_by_placer_number_gets_the_accession(
    message_log: MessageLog, uid: str
) -> None:
    order = record(message_log, orm(f"ACC{uid}", "NW", f"C{uid}-1"))
    schedule = ScheduleExam(
        provenance=provenance(""), accession="", scheduled_at="2024-03-16T09:00:00"
    ).as_dict()
    schedule["placer_order_number"] = f"PL-ACC{uid}"
    unknown = ScheduleExam(
        provenance=provenance(""), accession="", scheduled_at="2024-03-16T09:00:00"
    ).as_dict()
    unknown["filler_order_number"] = f"FL-NOPE{uid}"

    accepted = record_inbound(message_log, built(orm(f"ACC{uid}", "SC", f"C{uid}-2"), [schedule]))
    refused = record_inbound(message_log, built(orm(f"ACC{uid}", "SC", f"C{uid}-3"), [unknown]))

    assert order.status == "accepted" and accepted.status == "accepted"
    [entry] = [r for r in message_log.unrelayed(limit=100_000) if r["id"] == accepted.id][0]["commands"]
    assert (entry["workflow_id"], entry["command"]["accession"]) == (f"exam-ACC{uid}", f"ACC{uid}")
    assert (refused.status, refused.ack_code) == ("rejected", "AE")
    assert refused.reason == f"unknown accession: no order FL-NOPE{uid}"


def test_an_outcome_links_the_events_it_caused_once_however_often_it_is_retried(
    message_log: MessageLog, uid: str
) -> None:
    order = record(message_log, orm(f"ACC{uid}", "NW", f"C{uid}"))
    events = [
        {"aggregate_id": f"agg-{uid}", "version": 1, "type": "ExamOrdered"},
        {"aggregate_id": f"agg-{uid}", "version": 2, "type": "ExamScheduled"},
    ]

    message_log.record_outcome(f"hl7:{order.id}", "applied", "", events)
    message_log.record_outcome(f"hl7:{order.id}", "applied", "", events)  # the activity retried

    linked = message_log.events_of(order.id)
    assert [(e["aggregate_id"], e["version"], e["event_type"]) for e in linked] == [
        (f"agg-{uid}", 1, "ExamOrdered"),
        (f"agg-{uid}", 2, "ExamScheduled"),
    ]
