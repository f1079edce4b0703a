"""The HL7 message log: every inbound message, its outcome and its ACK, durable before the ACK.

It is also the outbox of the relay to Temporal: accepted rows wait here (relayed_at NULL) until
their command has been signalled to the exam's workflow, so a Temporal outage delays messages
but never loses one.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from adapters import patient_links
from adapters.outbox import OutboxTable
from adapters.sql import Cursor, Database
from domain.commands import EXAM_REFERENCES

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS hl7_messages (
        id {id},
        received_at TEXT NOT NULL,
        peer TEXT NOT NULL,
        raw {blob} NOT NULL,
        sending_application TEXT NOT NULL DEFAULT '',
        sending_facility TEXT NOT NULL DEFAULT '',
        control_id TEXT NOT NULL DEFAULT '',
        message_type TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        ack_code TEXT NOT NULL,
        ack {blob} NOT NULL,
        error TEXT,
        accession TEXT,
        patient_id TEXT,
        commands TEXT,
        duplicate_of BIGINT,
        relayed_at TEXT,
        relay_error TEXT,
        applied_status TEXT,
        applied_reason TEXT,
        applied_at TEXT,
        placer_order_number TEXT,
        filler_order_number TEXT,
        channel TEXT,
        reprocess_of BIGINT,
        reprocess_reason TEXT,
        reprocessed_by TEXT,
        commands_hash TEXT,
        warnings TEXT,
        acked_at TEXT
    )""",
    # one row per order an accepted message carries: what cancels and re-orders are checked against
    """CREATE TABLE IF NOT EXISTS hl7_message_orders (
        message_id BIGINT NOT NULL,
        accession TEXT NOT NULL,
        command_kind TEXT NOT NULL,
        placer_order_number TEXT,
        filler_order_number TEXT
    )""",
    # the events applying a message caused: the message browser's links to the histories
    """CREATE TABLE IF NOT EXISTS hl7_message_events (
        message_id BIGINT NOT NULL,
        aggregate_id TEXT NOT NULL,
        version BIGINT NOT NULL,
        event_type TEXT NOT NULL,
        recorded_at TEXT NOT NULL
    )""",
]

# columns added after the first release (also in SCHEMA above, for new databases): added to
# older databases at start. SCHEMA alone (the MPPS and storage logs create it too) holds no
# index, since an index may name a column an older table still lacks
ADDED_COLUMNS = {
    "hl7_messages": [
        ("placer_order_number", "TEXT"),
        ("filler_order_number", "TEXT"),
        ("channel", "TEXT"),
        ("reprocess_of", "BIGINT"),
        ("reprocess_reason", "TEXT"),
        ("reprocessed_by", "TEXT"),
        ("commands_hash", "TEXT"),
        ("warnings", "TEXT"),  # JSON list: what a tolerant channel let through, table enrichment
        ("acked_at", "TEXT"),  # when the listener finished writing the ACK to the peer's socket
    ],
    "hl7_message_orders": [
        ("placer_order_number", "TEXT"),
        ("filler_order_number", "TEXT"),
    ],
}

# every browser filter has an index (filter, received_at, id), so that a filtered search with a
# time range, newest first, is one index range scan read backwards
SEARCH_COLUMNS = {
    "mrn": "patient_id",
    "accession": "accession",
    "placer": "placer_order_number",
    "filler": "filler_order_number",
    "control_id": "control_id",
    "type": "message_type",
    "sender": "sending_application",
    "status": "status",
    "applied": "applied_status",  # what the exam or patient made of it: applied, refused, duplicate
}
INDEXES = [
    # a reprocess shares the original's control id: only live messages count as duplicates
    "DROP INDEX IF EXISTS hl7_messages_sender_control_id",
    """CREATE UNIQUE INDEX IF NOT EXISTS hl7_messages_live_control_id
        ON hl7_messages (sending_application, sending_facility, control_id)
        WHERE status = 'accepted' AND reprocess_of IS NULL""",
    """CREATE INDEX IF NOT EXISTS hl7_messages_unrelayed
        ON hl7_messages (id) WHERE status = 'accepted' AND relayed_at IS NULL""",
    "DROP INDEX IF EXISTS hl7_messages_accession",  # superseded by hl7_messages_by_accession
    "DROP INDEX IF EXISTS hl7_messages_received_at",  # superseded by hl7_messages_by_received_at
    *(
        f"CREATE INDEX IF NOT EXISTS hl7_messages_by_{name} ON hl7_messages ({column}, received_at, id)"
        for name, column in SEARCH_COLUMNS.items()
    ),
    "CREATE INDEX IF NOT EXISTS hl7_messages_by_received_at ON hl7_messages (received_at, id)",
    "CREATE INDEX IF NOT EXISTS hl7_messages_by_reprocess_of ON hl7_messages (reprocess_of)",
    "CREATE INDEX IF NOT EXISTS hl7_message_orders_accession ON hl7_message_orders (accession)",
    "CREATE INDEX IF NOT EXISTS hl7_message_orders_message ON hl7_message_orders (message_id)",
    "CREATE INDEX IF NOT EXISTS hl7_message_orders_placer ON hl7_message_orders (placer_order_number)",
    "CREATE INDEX IF NOT EXISTS hl7_message_orders_filler ON hl7_message_orders (filler_order_number)",
    """CREATE UNIQUE INDEX IF NOT EXISTS hl7_message_events_key
        ON hl7_message_events (message_id, aggregate_id, version)""",
]

ACCEPTED, REJECTED, ERROR, DUPLICATE = "accepted", "rejected", "error", "duplicate"
STATUSES = (ACCEPTED, REJECTED, ERROR, DUPLICATE)
APPLIED_STATUSES = ("applied", "refused", "duplicate")  # activities/apply_command.py outcomes
# HL7 table 0357 conditions of the log's own refusals (the same codes interfaces/hl7/acks.py uses)
UNKNOWN_KEY = ("204", "Unknown key identifier")
DUPLICATE_KEY = ("205", "Duplicate key identifier")
INTERNAL_ERROR = ("207", "Application internal error")


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass
class Inbound:
    """One received frame and what the interface made of it, before the log decides."""

    raw: bytes
    peer: str
    received_at: str
    build_ack: Callable[[str, str], bytes]  # (ack code, reason) -> framed-free ACK bytes
    sending_application: str = ""
    sending_facility: str = ""
    control_id: str = ""
    message_type: str = ""
    refusal: tuple[str, str] | None = None  # (AE|AR, reason) decided by parsing/mapping
    commands: list[dict[str, Any]] = field(default_factory=list)  # [{workflow_id, command}]
    accession: str = ""
    patient_id: str = ""
    # what could be read even when the message is refused, for the browser's search
    placer_order_number: str = ""
    filler_order_number: str = ""
    channel: str = ""
    # (ack code, reason, HL7 table 0357 condition, ERR-2 location) -> ACK bytes: lets the log's
    # own refusals (unknown accession) name their condition; build_ack is used when absent
    build_error_ack: Callable[[str, str, tuple[str, str], str], bytes] | None = None
    # what the channel noticed but accepted (tolerant validation, code table misses) and what its
    # code tables added (CPT, expected duration): shown by the dry run, not stored
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Recorded:
    id: int
    status: str
    ack_code: str
    ack: bytes
    reason: str = ""


@dataclass(frozen=True)
class Reprocess:
    """Why and by whom a stored message is interpreted again; `original` is the first row."""

    original: int
    reason: str
    user: str
    earlier: tuple[int, ...] = ()  # the original and its reprocess rows
    digest: str = ""  # commands_hash of what the interpretation produced


@dataclass(frozen=True)
class Refusal:
    code: str
    reason: str
    condition: tuple[str, str] = INTERNAL_ERROR
    location: str = ""


@dataclass(frozen=True)
class MessageFilters:
    """What the message browser searches by; empty fields do not filter. Times are ISO 8601 UTC,
    `since` inclusive and `until` exclusive."""

    accession: str = ""
    mrn: str = ""
    placer: str = ""
    filler: str = ""
    control_id: str = ""
    type: str = ""
    sender: str = ""
    status: str = ""
    applied: str = ""
    since: str = ""
    until: str = ""


class UnknownMessage(LookupError):
    pass


def commands_hash(commands: Sequence[dict[str, Any]]) -> str:
    """The same commands give the same hash whatever message row carried them."""
    stripped = []
    for entry in commands:
        command = json.loads(json.dumps(entry["command"]))
        command.get("provenance", {}).get("source", {}).pop("message_id", None)
        stripped.append({"workflow_id": entry["workflow_id"], "command": command})
    return hashlib.sha256(json.dumps(stripped, sort_keys=True).encode()).hexdigest()


class MessageLog(OutboxTable):
    outbox_table = "hl7_messages"
    outbox_ready = "status = 'accepted'"

    def __init__(self, db: Database) -> None:
        self.db = db

    def create_schema(self) -> None:
        """Create, or bring an older database up to date (missing columns, new indexes); run
        alone, since every process calls it at start."""
        with self.db.serialised("hl7_messages_schema") as cur:
            for statement in SCHEMA:
                cur.execute(statement)
            for table, columns in ADDED_COLUMNS.items():
                present = self._columns(cur, table)
                for name, kind in columns:
                    if name not in present:
                        cur.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
            for statement in INDEXES:
                cur.execute(statement)
            patient_links.create_schema(cur)

    def _columns(self, cur: Cursor, table: str) -> set[str]:
        if self.db.dialect == "sqlite":
            return {row["name"] for row in cur.execute(f"PRAGMA table_info({table})").fetchall()}
        rows = cur.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ?",
            (table,),
        ).fetchall()
        return {row["column_name"] for row in rows}

    def record(self, cur: Cursor, inbound: Inbound, reprocess: Reprocess | None = None) -> Recorded:
        """Decide duplicate / refusal / acceptance and store the row with its ACK. A reprocess
        is never a duplicate of its original: it is the same message on purpose."""
        if inbound.refusal is None and inbound.control_id and reprocess is None:
            original = cur.execute(
                "SELECT id, ack FROM hl7_messages WHERE sending_application = ? AND "
                "sending_facility = ? AND control_id = ? AND status = 'accepted' AND reprocess_of IS NULL",
                (inbound.sending_application, inbound.sending_facility, inbound.control_id),
            ).fetchone()
            if original is not None:
                ack = bytes(original["ack"])
                row_id = self._insert(cur, inbound, DUPLICATE, "AA", ack, None, original["id"])
                return Recorded(row_id, DUPLICATE, "AA", ack, f"duplicate of message {original['id']}")
        refusal: Refusal | None = None
        if inbound.refusal is not None:
            refusal = Refusal(*inbound.refusal)
        else:
            refusal = self._order_refusal(cur, inbound, reprocess.earlier if reprocess else ())
        if refusal is not None:
            ack = self._error_ack(inbound, refusal)
            status = REJECTED if refusal.code == "AE" else ERROR
            row_id = self._insert(cur, inbound, status, refusal.code, ack, refusal.reason, None, reprocess)
            return Recorded(row_id, status, refusal.code, ack, refusal.reason)
        ack = inbound.build_ack("AA", "")
        row_id = self._insert(cur, inbound, ACCEPTED, "AA", ack, None, None, reprocess)
        for entry in inbound.commands:
            command = entry["command"]
            command["provenance"]["source"]["message_id"] = f"hl7:{row_id}"
            if "accession" in command:
                cur.execute(
                    "INSERT INTO hl7_message_orders (message_id, accession, command_kind, "
                    "placer_order_number, filler_order_number) VALUES (?, ?, ?, ?, ?)",
                    (
                        row_id,
                        command["accession"],
                        command["kind"],
                        command.get("placer_order_number") or None,
                        command.get("filler_order_number") or None,
                    ),
                )
        # merged patient ids resolve to their survivor; a merge fans out to the prior's exams
        inbound.commands = patient_links.apply(cur, row_id, inbound.commands)
        cur.execute(
            "UPDATE hl7_messages SET commands = ? WHERE id = ?",
            (json.dumps(inbound.commands), row_id),
        )
        return Recorded(row_id, ACCEPTED, "AA", ack)

    @staticmethod
    def _error_ack(inbound: Inbound, refusal: Refusal) -> bytes:
        if inbound.build_error_ack is not None and inbound.refusal is None:
            return inbound.build_error_ack(refusal.code, refusal.reason, refusal.condition, refusal.location)
        return inbound.build_ack(refusal.code, refusal.reason)

    def _order_refusal(self, cur: Cursor, inbound: Inbound, own: Sequence[int] = ()) -> Refusal | None:
        """Commands naming an exam must name an order accepted earlier (or in this message); an
        accession is ordered only once. A command that names its order only by placer or filler
        number gets the accession of that order. `own` are rows of the same message (a reprocess
        and its original): their orders are left for the exam itself to refuse as doubles."""
        seen: set[str] = set()
        for entry in inbound.commands:
            command = entry["command"]
            kind = command["kind"]
            if "accession" not in command:
                continue
            if not command["accession"] and kind in CHECKED_REFERENCES:
                resolved = self._accession_by_order_number(cur, command)
                if resolved:
                    command["accession"] = resolved
                    entry["workflow_id"] = f"exam-{resolved}"
            accession = command["accession"]
            if not accession:
                if kind in CHECKED_REFERENCES:
                    numbers = "/".join(
                        n
                        for n in (command.get("placer_order_number"), command.get("filler_order_number"))
                        if n
                    )
                    return Refusal("AE", f"unknown accession: no order {numbers or 'named'}", UNKNOWN_KEY)
                continue
            ordered = cur.execute(
                "SELECT message_id FROM hl7_message_orders WHERE accession = ? "
                "AND command_kind = 'place_order' ORDER BY message_id LIMIT 1",
                (accession,),
            ).fetchone()
            if kind in CHECKED_REFERENCES and ordered is None and accession not in seen:
                if kind == "cancel_order":
                    return Refusal("AE", f"unknown order: no order with accession {accession}", UNKNOWN_KEY)
                return Refusal("AE", f"unknown accession {accession}", UNKNOWN_KEY)
            if kind == "place_order":
                if ordered is not None and ordered["message_id"] in own:
                    ordered = None  # this very message ordered it: the exam refuses the double
                if ordered is not None or accession in seen:
                    where = f"message {ordered['message_id']}" if ordered else "this message"
                    return Refusal(
                        "AE",
                        f"duplicate order: accession {accession} already ordered in {where}",
                        DUPLICATE_KEY,
                    )
                seen.add(accession)
        return None

    @staticmethod
    def _accession_by_order_number(cur: Cursor, command: dict[str, Any]) -> str:
        for column in ("placer_order_number", "filler_order_number"):
            number = command.get(column)
            if not number:
                continue
            row = cur.execute(
                f"SELECT accession FROM hl7_message_orders WHERE {column} = ? "
                "AND command_kind = 'place_order' ORDER BY message_id LIMIT 1",
                (number,),
            ).fetchone()
            if row is not None:
                return str(row["accession"])
        return ""

    def _insert(
        self,
        cur: Cursor,
        inbound: Inbound,
        status: str,
        ack_code: str,
        ack: bytes,
        error: str | None,
        duplicate_of: int | None,
        reprocess: Reprocess | None = None,
    ) -> int:
        keys = search_keys(inbound)
        row = cur.execute(
            "INSERT INTO hl7_messages (received_at, peer, raw, sending_application, "
            "sending_facility, control_id, message_type, status, ack_code, ack, error, "
            "accession, patient_id, duplicate_of, placer_order_number, filler_order_number, channel, "
            "reprocess_of, reprocess_reason, reprocessed_by, commands_hash, warnings) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                inbound.received_at,
                inbound.peer,
                inbound.raw,
                inbound.sending_application,
                inbound.sending_facility,
                inbound.control_id,
                inbound.message_type,
                status,
                ack_code,
                ack,
                error,
                keys["accession"],
                keys["patient_id"],
                duplicate_of,
                keys["placer_order_number"],
                keys["filler_order_number"],
                inbound.channel or None,
                reprocess.original if reprocess else None,
                reprocess.reason if reprocess else None,
                reprocess.user if reprocess else None,
                reprocess.digest if reprocess else None,
                json.dumps(inbound.warnings) if inbound.warnings else None,
            ),
        ).fetchone()
        assert row is not None  # RETURNING always yields the new row
        return int(row["id"])

    # --- reprocessing -------------------------------------------------------------------------

    def reprocess(self, original_id: int, inbound: Inbound, reason: str, user: str) -> tuple[Recorded, bool]:
        """Record `inbound` (the stored raw bytes interpreted again) as a new row linked to the
        original. (earlier row, False) when an earlier reprocess of the same original produced
        the same commands and was accepted, or was refused for the same reason."""
        with self.db.serialised("hl7_messages_reprocess") as cur:
            row = cur.execute(
                "SELECT id, reprocess_of FROM hl7_messages WHERE id = ?", (original_id,)
            ).fetchone()
            if row is None:
                raise UnknownMessage(f"no message {original_id}")
            original = int(row["reprocess_of"] or row["id"])
            earlier = cur.execute(
                "SELECT id, status, ack_code, ack, error, commands_hash FROM hl7_messages "
                "WHERE reprocess_of = ? ORDER BY id",
                (original,),
            ).fetchall()
            digest = commands_hash(inbound.commands)
            same = [r for r in earlier if r["commands_hash"] == digest]
            for r in same:
                if r["status"] == ACCEPTED:
                    return _recorded(r), False
            context = Reprocess(original, reason, user, (original, *(int(r["id"]) for r in earlier)), digest)
            # the decision needs the log as it is now; a row that only repeats an earlier
            # refusal is dropped again before anyone can see it (same transaction)
            recorded = self.record(cur, inbound, context)
            for r in same:
                if recorded.status != ACCEPTED and (r["status"], r["error"]) == (
                    recorded.status,
                    recorded.reason,
                ):
                    cur.execute("DELETE FROM hl7_messages WHERE id = ?", (recorded.id,))
                    return _recorded(r), False
            return recorded, True

    # --- the workflow's side ----------------------------------------------------------------

    def record_outcome(
        self, message_id: str, status: str, reason: str, events: Sequence[dict[str, Any]] = ()
    ) -> None:
        """Store what applying the message did (applied / refused) and the events it caused, for
        operations to filter and follow; a retried activity adds no second link."""
        if not message_id.startswith("hl7:"):
            return
        row_id = int(message_id.removeprefix("hl7:"))
        now = utcnow()
        with self.db.transaction() as cur:
            cur.execute(
                "UPDATE hl7_messages SET applied_status = ?, applied_reason = ?, applied_at = ? WHERE id = ?",
                (status, reason or None, now, row_id),
            )
            for event in events:
                cur.execute(
                    "INSERT INTO hl7_message_events (message_id, aggregate_id, version, event_type, "
                    "recorded_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (row_id, str(event["aggregate_id"]), int(event["version"]), str(event["type"]), now),
                )

    # --- reading ------------------------------------------------------------------------------

    def get(self, row_id: int) -> dict[str, Any] | None:
        rows = self.db.query("SELECT * FROM hl7_messages WHERE id = ?", (row_id,))
        return rows[0] if rows else None

    def events_of(self, row_id: int) -> list[dict[str, Any]]:
        return self.db.query(
            "SELECT aggregate_id, version, event_type, recorded_at FROM hl7_message_events "
            "WHERE message_id = ? ORDER BY recorded_at, aggregate_id, version",
            (row_id,),
        )

    def reprocessed_as(self, row_id: int) -> list[dict[str, Any]]:
        return self.db.query(
            "SELECT id, received_at, status, reprocess_reason, reprocessed_by FROM hl7_messages "
            "WHERE reprocess_of = ? ORDER BY id",
            (row_id,),
        )

    def search(
        self, filters: MessageFilters, limit: int = 50, before_id: int | None = None
    ) -> list[dict[str, Any]]:
        """Messages matching every filter, newest first (received_at, then id), `limit` at most,
        starting after the row `before_id` (keyset pagination: as fast on page 1,000 as on page
        one). An accession, placer or filler number also finds the messages that carried it in
        a later order group (hl7_message_orders)."""
        statement, params = self._search_query(filters, limit, before_id)
        return self.db.query(statement, params)

    def explain_search(self, filters: MessageFilters, before_id: int | None = None) -> str:
        """The database's plan for a search, one line per step: which indexes it reads."""
        statement, params = self._search_query(filters, 50, before_id)
        if self.db.dialect == "sqlite":
            rows = self.db.query(f"EXPLAIN QUERY PLAN {statement}", params)
            return "\n".join(str(r["detail"]) for r in rows)
        rows = self.db.query(f"EXPLAIN {statement}", params)
        return "\n".join(str(r["QUERY PLAN"]) for r in rows)

    def _search_query(
        self, filters: MessageFilters, limit: int, before_id: int | None
    ) -> tuple[str, list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        for name, column in SEARCH_COLUMNS.items():
            value = getattr(filters, name)
            if not value:
                continue
            if name in ("accession", "placer", "filler"):
                order_column = "accession" if name == "accession" else column
                where.append(
                    f"id IN (SELECT id FROM hl7_messages WHERE {column} = ? "
                    f"UNION SELECT message_id FROM hl7_message_orders WHERE {order_column} = ?)"
                )
                params += [value, value]
            else:
                where.append(f"{column} = ?")
                params.append(value)
        if filters.since:
            where.append("received_at >= ?")
            params.append(filters.since)
        if filters.until:
            where.append("received_at < ?")
            params.append(filters.until)
        if before_id is not None:
            cursor = self.db.query("SELECT received_at FROM hl7_messages WHERE id = ?", (before_id,))
            if not cursor:
                raise UnknownMessage(f"no message {before_id} to page from")
            where.append("(received_at < ? OR (received_at = ? AND id < ?))")
            params += [cursor[0]["received_at"], cursor[0]["received_at"], before_id]
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        statement = (
            f"SELECT {SUMMARY_COLUMNS} FROM hl7_messages {clause} ORDER BY received_at DESC, id DESC LIMIT ?"
        )
        return statement, [*params, limit]

    def count_by_status(self) -> dict[str, int]:
        rows = self.db.query("SELECT status, COUNT(*) AS n FROM hl7_messages GROUP BY status")
        return {row["status"]: int(row["n"]) for row in rows}


SUMMARY_COLUMNS = (
    "id, control_id, message_type, sending_application, sending_facility, received_at, status, "
    "ack_code, accession, patient_id, placer_order_number, filler_order_number, error, "
    "applied_status, applied_reason, reprocess_of, duplicate_of, channel"
)
# commands checked at record time against the orders accepted earlier; a patient change of an
# exam is generated from a merge, never sent
CHECKED_REFERENCES = EXAM_REFERENCES - {"change_exam_patient"}


def search_keys(inbound: Inbound) -> dict[str, str | None]:
    """What the browser finds a message by: read by the interface, else from its first command."""
    found = {
        "accession": inbound.accession,
        "patient_id": inbound.patient_id,
        "placer_order_number": inbound.placer_order_number,
        "filler_order_number": inbound.filler_order_number,
    }
    for entry in inbound.commands:
        command = entry["command"]
        patient = command.get("patient")
        candidates = {
            "accession": command.get("accession"),
            "patient_id": patient.get("id") if isinstance(patient, dict) else None,
            "placer_order_number": command.get("placer_order_number"),
            "filler_order_number": command.get("filler_order_number"),
        }
        for key, value in candidates.items():
            if not found[key] and value:
                found[key] = str(value)
    return {key: value or None for key, value in found.items()}


def _recorded(row: dict[str, Any]) -> Recorded:
    return Recorded(int(row["id"]), row["status"], row["ack_code"], bytes(row["ack"]), row["error"] or "")


def order_state(cur: Cursor, accession: str) -> str | None:
    """What the log alone says of an accession, at once and without Temporal: "ordered",
    "cancelled" (an accepted cancel the exam did not refuse) or None (never ordered)."""
    rows = cur.execute(
        "SELECT o.command_kind, m.applied_status FROM hl7_message_orders o "
        "JOIN hl7_messages m ON m.id = o.message_id WHERE o.accession = ?",
        (accession,),
    ).fetchall()
    if not any(row["command_kind"] == "place_order" for row in rows):
        return None
    if any(row["command_kind"] == "cancel_order" and row["applied_status"] != "refused" for row in rows):
        return "cancelled"
    return "ordered"


class MessageLogWriter:
    """Serialises log writes on one thread and commits them in groups (one fsync per group),
    so that many connections share the cost of durability without waiting on each other.

    ACK times (`acked`) are kept back and written with the next group, or after
    `ack_flush_s` of quiet: they are for the latency metric, and must not cost a commit each."""

    def __init__(
        self, log: MessageLog, on_commit: Callable[[], None] | None = None, ack_flush_s: float = 0.5
    ) -> None:
        self._log = log
        self._queue: queue.Queue[tuple[Inbound, Any, Any] | tuple[int, str] | None] = queue.Queue()
        self._on_commit = on_commit
        self._ack_flush_s = ack_flush_s
        self._thread = threading.Thread(target=self._run, name="message-log-writer", daemon=True)
        self._thread.start()

    async def record(self, inbound: Inbound) -> Recorded:
        import asyncio

        loop = asyncio.get_running_loop()
        future: asyncio.Future[Recorded] = loop.create_future()
        self._queue.put((inbound, future, loop))
        return await future

    def acked(self, row_id: int, at: str) -> None:
        """The ACK for row `row_id` reached the peer's socket at `at`."""
        self._queue.put((row_id, at))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        acks: list[tuple[int, str]] = []
        while True:
            try:
                item = self._queue.get(timeout=self._ack_flush_s if acks else None)
            except queue.Empty:
                self._write([], acks)
                acks = []
                continue
            batch: list[tuple[Inbound, Any, Any]] = []
            closing = item is None
            while item is not None:
                if len(item) == 2:
                    acks.append(item)  # type: ignore[arg-type]
                else:
                    batch.append(item)  # type: ignore[arg-type]
                if len(batch) >= 256:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                closing = item is None
            if batch or closing:
                self._write(batch, acks)
                acks = []
            if closing:
                return

    def _write(self, batch: list[tuple[Inbound, Any, Any]], acks: list[tuple[int, str]]) -> None:
        results: list[Recorded | BaseException] = []
        try:
            with self._log.db.transaction() as cur:
                for inbound, _, _ in batch:
                    results.append(self._log.record(cur, inbound))
                for row_id, at in acks:
                    cur.execute("UPDATE hl7_messages SET acked_at = ? WHERE id = ?", (at, row_id))
        except Exception as error:  # nothing in this group is durable: nobody gets an AA
            results = [error] * len(batch)
        for (_, future, loop), result in zip(batch, results, strict=True):
            loop.call_soon_threadsafe(_settle, future, result)
        if batch and self._on_commit is not None:
            self._on_commit()


def _settle(future: Any, result: Recorded | BaseException) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
