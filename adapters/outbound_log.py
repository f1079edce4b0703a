"""The outbound queue: one row per (destination, event) with the HL7 text to send, its delivery
state, and the dead letters operations retry or discard with a reason.

Lives in the messages database next to the inbound log. Rows are enqueued by the order status
feed inside its projection transaction (UNIQUE (destination, event_key): a replayed event adds
nothing), dispatched to their lane's workflow by the dispatcher (`dispatched_at`), and moved to
delivered / dead by the deliver_hl7 activity. A retry puts a dead letter back in the queue with
a new `generation`, so the lane workflow, which drops repeats by (row, generation), takes it.

Statuses: queued -> delivered | dead; dead -> queued (retry) | discarded; queued -> discarded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from adapters.sql import Cursor, Database

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS outbound_messages (
        id {id},
        destination TEXT NOT NULL,
        event_key TEXT NOT NULL,
        lane TEXT NOT NULL,
        message_type TEXT NOT NULL,
        control_id TEXT NOT NULL,
        accession TEXT NOT NULL,
        patient_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        order_status TEXT NOT NULL,
        message TEXT NOT NULL,
        status TEXT NOT NULL,
        generation INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        dispatched_at TEXT,
        last_attempt_at TEXT,
        last_error TEXT NOT NULL DEFAULT '',
        last_ack TEXT NOT NULL DEFAULT '',
        finished_at TEXT,
        UNIQUE (destination, event_key)
    )""",
    "CREATE INDEX IF NOT EXISTS outbound_undispatched ON outbound_messages (dispatched_at, id)",
    "CREATE INDEX IF NOT EXISTS outbound_status ON outbound_messages (status, destination, id)",
    "CREATE INDEX IF NOT EXISTS outbound_accession ON outbound_messages (accession)",
    """CREATE TABLE IF NOT EXISTS outbound_actions (
        id {id},
        outbound_id BIGINT NOT NULL,
        action TEXT NOT NULL,
        reason TEXT NOT NULL,
        user_name TEXT NOT NULL,
        at TEXT NOT NULL,
        status_before TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS outbound_actions_row ON outbound_actions (outbound_id, id)",
]

STATUSES = ("queued", "delivered", "dead", "discarded")
SUMMARY_COLUMNS = (
    "id, destination, lane, message_type, control_id, accession, patient_id, event_type, "
    "order_status, status, generation, attempts, created_at, dispatched_at, last_attempt_at, "
    "last_error, last_ack, finished_at"
)


class OutboundError(ValueError):
    """An operation refused: `not_found` says whether the row is missing (404) or in the wrong
    state (409)."""

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


@dataclass(frozen=True)
class QueuedMessage:
    """One message the feed wants delivered."""

    destination: str
    event_key: str
    lane: str
    message_type: str
    control_id: str
    accession: str
    patient_id: str
    event_type: str
    order_status: str
    message: str


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class OutboundLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create_schema(self) -> None:
        with self.db.transaction() as cur:
            if self.db.dialect == "postgres":
                # worker and API both start here
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(?))", ("schema:outbound",))
            for statement in SCHEMA:
                cur.execute(statement)

    @staticmethod
    def enqueue(cur: Cursor, item: QueuedMessage) -> bool:
        """Inside the caller's transaction; False when this (destination, event) is queued already."""
        cur.execute(
            "INSERT INTO outbound_messages (destination, event_key, lane, message_type, control_id, "
            "accession, patient_id, event_type, order_status, message, status, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?) "
            "ON CONFLICT (destination, event_key) DO NOTHING",
            (
                item.destination,
                item.event_key,
                item.lane,
                item.message_type,
                item.control_id,
                item.accession,
                item.patient_id,
                item.event_type,
                item.order_status,
                item.message,
                _now(),
            ),
        )
        return cur.rowcount == 1

    # the dispatcher's side

    def undispatched(self, destinations: Sequence[str], limit: int = 200) -> list[dict[str, Any]]:
        """Queued rows not yet handed to a lane, of the destinations the caller serves (rows of a
        destination taken out of the configuration wait, visible as queued, until it returns or
        operations discard them)."""
        if not destinations:
            return []
        marks = ", ".join("?" for _ in destinations)
        return self.db.query(
            "SELECT id, destination, lane, generation FROM outbound_messages "
            f"WHERE dispatched_at IS NULL AND status = 'queued' AND destination IN ({marks}) "
            "ORDER BY id LIMIT ?",
            (*destinations, limit),
        )

    def mark_dispatched(self, ids: list[int]) -> None:
        if not ids:
            return
        now = _now()
        with self.db.transaction() as cur:
            for row_id in ids:
                cur.execute("UPDATE outbound_messages SET dispatched_at = ? WHERE id = ?", (now, row_id))

    # the activity's side

    def get(self, row_id: int) -> dict[str, Any] | None:
        rows = self.db.query("SELECT * FROM outbound_messages WHERE id = ?", (row_id,))
        return rows[0] if rows else None

    def record_attempt(self, row_id: int, *, error: str, ack: str) -> None:
        """A failed attempt that will be tried again."""
        self.db.execute(
            "UPDATE outbound_messages SET attempts = attempts + 1, last_attempt_at = ?, "
            "last_error = ?, last_ack = ? WHERE id = ? AND status = 'queued'",
            (_now(), error[:1000], ack[:4000], row_id),
        )

    def mark_delivered(self, row_id: int, *, ack: str) -> None:
        now = _now()
        self.db.execute(
            "UPDATE outbound_messages SET attempts = attempts + 1, last_attempt_at = ?, "
            "last_error = '', last_ack = ?, status = 'delivered', finished_at = ? "
            "WHERE id = ? AND status = 'queued'",
            (now, ack[:4000], now, row_id),
        )

    def mark_dead(self, row_id: int, *, error: str, ack: str = "", attempted: bool = True) -> None:
        """The last attempt failed (or the answer said not to retry): a dead letter, kept with
        its last error and ACK for operations."""
        now = _now()
        self.db.execute(
            "UPDATE outbound_messages SET attempts = attempts + ?, last_attempt_at = ?, "
            "last_error = ?, last_ack = CASE WHEN ? = '' THEN last_ack ELSE ? END, "
            "status = 'dead', finished_at = ? WHERE id = ? AND status = 'queued'",
            (1 if attempted else 0, now, error[:1000], ack, ack[:4000], now, row_id),
        )

    # operations

    def search(
        self,
        *,
        status: str = "",
        destination: str = "",
        accession: str = "",
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        if status and status not in STATUSES:
            raise OutboundError(f"unknown status {status!r} (known: {', '.join(STATUSES)})")
        where, params = [], []
        for column, value in (("status", status), ("destination", destination), ("accession", accession)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        return self.db.query(
            f"SELECT {SUMMARY_COLUMNS} FROM outbound_messages {clause}ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )

    def for_accession(self, accession: str, limit: int = 1000) -> list[dict[str, Any]]:
        """Every message queued for one exam, oldest first (the exam page's delivery status)."""
        return self.db.query(
            f"SELECT {SUMMARY_COLUMNS} FROM outbound_messages WHERE accession = ? ORDER BY id LIMIT ?",
            (accession, limit),
        )

    def actions(self, row_id: int) -> list[dict[str, Any]]:
        return self.db.query(
            "SELECT action, reason, user_name, at, status_before FROM outbound_actions "
            "WHERE outbound_id = ? ORDER BY id",
            (row_id,),
        )

    def retry(self, row_id: int, *, reason: str, user: str) -> dict[str, Any]:
        """A dead letter goes back to its lane (at the end of it) with who, when and why kept."""
        return self._act(row_id, "retry", reason, user, allowed=("dead",))

    def discard(self, row_id: int, *, reason: str, user: str) -> dict[str, Any]:
        """A dead or still queued message will not be sent; kept, with who, when and why."""
        return self._act(row_id, "discard", reason, user, allowed=("dead", "queued"))

    def _act(
        self, row_id: int, action: str, reason: str, user: str, *, allowed: tuple[str, ...]
    ) -> dict[str, Any]:
        if not reason.strip():
            raise OutboundError("a reason is required")
        now = _now()
        with self.db.serialised(f"outbound:{row_id}") as cur:
            row = cur.execute("SELECT status FROM outbound_messages WHERE id = ?", (row_id,)).fetchone()
            if row is None:
                raise OutboundError(f"outbound message {row_id} does not exist", not_found=True)
            if row["status"] not in allowed:
                raise OutboundError(
                    f"outbound message {row_id} is {row['status']}; {action} applies only to "
                    f"{' or '.join(allowed)} messages"
                )
            if action == "retry":
                cur.execute(
                    "UPDATE outbound_messages SET status = 'queued', dispatched_at = NULL, "
                    "generation = generation + 1, finished_at = NULL WHERE id = ?",
                    (row_id,),
                )
            else:
                cur.execute(
                    "UPDATE outbound_messages SET status = 'discarded', finished_at = ? WHERE id = ?",
                    (now, row_id),
                )
            cur.execute(
                "INSERT INTO outbound_actions (outbound_id, action, reason, user_name, at, status_before) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (row_id, action, reason.strip(), user.strip() or "unknown", now, row["status"]),
            )
        found = self.get(row_id)
        if found is None:
            raise OutboundError(f"outbound message {row_id} does not exist", not_found=True)
        return found
