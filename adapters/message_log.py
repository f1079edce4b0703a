"""The HL7 message log: every inbound message, its outcome and its ACK, durable before the ACK.

It is also the outbox of the relay to Temporal: accepted rows wait here (relayed_at NULL) until
their command has been signalled to the exam's workflow, so a Temporal outage delays messages
but never loses one.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from adapters.outbox import OutboxTable
from adapters.sql import Cursor, Database

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
        applied_at TEXT
    )""",
    """CREATE UNIQUE INDEX IF NOT EXISTS hl7_messages_sender_control_id
        ON hl7_messages (sending_application, sending_facility, control_id)
        WHERE status = 'accepted'""",
    """CREATE INDEX IF NOT EXISTS hl7_messages_unrelayed
        ON hl7_messages (id) WHERE status = 'accepted' AND relayed_at IS NULL""",
    "CREATE INDEX IF NOT EXISTS hl7_messages_accession ON hl7_messages (accession)",
    # one row per order an accepted message carries: what cancels and re-orders are checked against
    """CREATE TABLE IF NOT EXISTS hl7_message_orders (
        message_id BIGINT NOT NULL,
        accession TEXT NOT NULL,
        command_kind TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS hl7_message_orders_accession ON hl7_message_orders (accession)",
    "CREATE INDEX IF NOT EXISTS hl7_messages_received_at ON hl7_messages (received_at)",
]

ACCEPTED, REJECTED, ERROR, DUPLICATE = "accepted", "rejected", "error", "duplicate"


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


@dataclass(frozen=True)
class Recorded:
    id: int
    status: str
    ack_code: str
    ack: bytes
    reason: str = ""


class MessageLog(OutboxTable):
    outbox_table = "hl7_messages"
    outbox_ready = "status = 'accepted'"

    def __init__(self, db: Database) -> None:
        self.db = db

    def create_schema(self) -> None:
        self.db.executescript(SCHEMA)

    def record(self, cur: Cursor, inbound: Inbound) -> Recorded:
        """Decide duplicate / refusal / acceptance and store the row with its ACK."""
        if inbound.refusal is None and inbound.control_id:
            original = cur.execute(
                "SELECT id, ack FROM hl7_messages WHERE sending_application = ? AND "
                "sending_facility = ? AND control_id = ? AND status = 'accepted'",
                (inbound.sending_application, inbound.sending_facility, inbound.control_id),
            ).fetchone()
            if original is not None:
                ack = bytes(original["ack"])
                row_id = self._insert(cur, inbound, DUPLICATE, "AA", ack, None, original["id"])
                return Recorded(row_id, DUPLICATE, "AA", ack, f"duplicate of message {original['id']}")
        refusal = inbound.refusal or self._order_refusal(cur, inbound)
        if refusal is not None:
            code, reason = refusal
            ack = inbound.build_ack(code, reason)
            status = REJECTED if code == "AE" else ERROR
            row_id = self._insert(cur, inbound, status, code, ack, reason, None)
            return Recorded(row_id, status, code, ack, reason)
        ack = inbound.build_ack("AA", "")
        row_id = self._insert(cur, inbound, ACCEPTED, "AA", ack, None, None)
        for entry in inbound.commands:
            command = entry["command"]
            command["provenance"]["source"]["message_id"] = f"hl7:{row_id}"
            if "accession" in command:
                cur.execute(
                    "INSERT INTO hl7_message_orders (message_id, accession, command_kind) VALUES (?, ?, ?)",
                    (row_id, command["accession"], command["kind"]),
                )
        cur.execute(
            "UPDATE hl7_messages SET commands = ? WHERE id = ?",
            (json.dumps(inbound.commands), row_id),
        )
        return Recorded(row_id, ACCEPTED, "AA", ack)

    def _order_refusal(self, cur: Cursor, inbound: Inbound) -> tuple[str, str] | None:
        """Cancels must name an order accepted earlier; an accession is ordered only once."""
        seen: set[str] = set()
        for entry in inbound.commands:
            command = entry["command"]
            accession = command.get("accession")
            if not accession:
                continue
            ordered = cur.execute(
                "SELECT message_id FROM hl7_message_orders WHERE accession = ? "
                "AND command_kind = 'place_order' LIMIT 1",
                (accession,),
            ).fetchone()
            if command["kind"] == "cancel_order" and ordered is None and accession not in seen:
                return "AE", f"unknown order: no order with accession {accession}"
            if command["kind"] == "place_order":
                if ordered is not None or accession in seen:
                    where = f"message {ordered['message_id']}" if ordered else "this message"
                    return "AE", f"duplicate order: accession {accession} already ordered in {where}"
                seen.add(accession)
        return None

    def _insert(
        self,
        cur: Cursor,
        inbound: Inbound,
        status: str,
        ack_code: str,
        ack: bytes,
        error: str | None,
        duplicate_of: int | None,
    ) -> int:
        row = cur.execute(
            "INSERT INTO hl7_messages (received_at, peer, raw, sending_application, "
            "sending_facility, control_id, message_type, status, ack_code, ack, error, "
            "accession, patient_id, duplicate_of) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
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
                inbound.accession or None,
                inbound.patient_id or None,
                duplicate_of,
            ),
        ).fetchone()
        assert row is not None  # RETURNING always yields the new row
        return int(row["id"])

    # --- the workflow's side ----------------------------------------------------------------

    def record_outcome(
        self, message_id: str, status: str, reason: str, events: Sequence[dict[str, Any]] = ()
    ) -> None:
        """Store what applying the message did (applied / refused), for operations to filter."""
        if not message_id.startswith("hl7:"):
            return
        self.db.execute(
            "UPDATE hl7_messages SET applied_status = ?, applied_reason = ?, applied_at = ? WHERE id = ?",
            (status, reason or None, utcnow(), int(message_id.removeprefix("hl7:"))),
        )

    def get(self, row_id: int) -> dict[str, Any] | None:
        rows = self.db.query("SELECT * FROM hl7_messages WHERE id = ?", (row_id,))
        return rows[0] if rows else None

    def count_by_status(self) -> dict[str, int]:
        rows = self.db.query("SELECT status, COUNT(*) AS n FROM hl7_messages GROUP BY status")
        return {row["status"]: int(row["n"]) for row in rows}


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
    so that many connections share the cost of durability without waiting on each other."""

    def __init__(self, log: MessageLog, on_commit: Callable[[], None] | None = None) -> None:
        self._log = log
        self._queue: queue.Queue[tuple[Inbound, Any, Any] | None] = queue.Queue()
        self._on_commit = on_commit
        self._thread = threading.Thread(target=self._run, name="message-log-writer", daemon=True)
        self._thread.start()

    async def record(self, inbound: Inbound) -> Recorded:
        import asyncio

        loop = asyncio.get_running_loop()
        future: asyncio.Future[Recorded] = loop.create_future()
        self._queue.put((inbound, future, loop))
        return await future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < 256:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            self._write(batch)

    def _write(self, batch: list[tuple[Inbound, Any, Any]]) -> None:
        results: list[Recorded | BaseException] = []
        try:
            with self._log.db.transaction() as cur:
                for inbound, _, _ in batch:
                    results.append(self._log.record(cur, inbound))
        except Exception as error:  # nothing in this group is durable: nobody gets an AA
            results = [error] * len(batch)
        for (_, future, loop), result in zip(batch, results, strict=True):
            loop.call_soon_threadsafe(_settle, future, result)
        if self._on_commit is not None:
            self._on_commit()


def _settle(future: Any, result: Recorded | BaseException) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
