"""The MPPS log: every N-CREATE / N-SET as received, its DIMSE answer, and the state of each
performed procedure step, durable before the answer; plus the reconciliation queue.

Like the HL7 message log it is an outbox of the relay: rows that carry commands wait here
(relayed_at NULL) until their exam's workflow took them. It lives in the same database as the
HL7 log, because whether an accession was ordered (and not cancelled) is read from there in the
same transaction that decides the DIMSE status.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from adapters import message_log
from adapters.message_log import order_state, utcnow
from adapters.outbox import OutboxTable
from adapters.sql import Cursor, Database

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS mpps_messages (
        id {id},
        received_at TEXT NOT NULL,
        dimse TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL,
        calling_ae TEXT NOT NULL DEFAULT '',
        called_ae TEXT NOT NULL DEFAULT '',
        peer TEXT NOT NULL DEFAULT '',
        transfer_syntax TEXT NOT NULL DEFAULT '',
        raw {blob} NOT NULL,
        outcome TEXT NOT NULL,
        dimse_status INTEGER NOT NULL,
        error_comment TEXT,
        accession TEXT,
        commands TEXT,
        relayed_at TEXT,
        relay_error TEXT,
        applied_status TEXT,
        applied_reason TEXT,
        applied_at TEXT
    )""",
    """CREATE INDEX IF NOT EXISTS mpps_messages_unrelayed
        ON mpps_messages (id) WHERE commands IS NOT NULL AND relayed_at IS NULL""",
    "CREATE INDEX IF NOT EXISTS mpps_messages_instance ON mpps_messages (sop_instance_uid)",
    # one row per performed procedure step that was created: what N-SET and N-CREATE are
    # answered from. accession is NULL while the step waits in the reconciliation queue.
    """CREATE TABLE IF NOT EXISTS mpps (
        sop_instance_uid TEXT PRIMARY KEY,
        accession TEXT,
        status TEXT NOT NULL,
        calling_ae TEXT NOT NULL,
        step TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        last_message_id BIGINT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS mpps_accession ON mpps (accession)",
    """CREATE TABLE IF NOT EXISTS mpps_reconciliation (
        sop_instance_uid TEXT PRIMARY KEY,
        queued_at TEXT NOT NULL,
        reason TEXT NOT NULL,
        claimed_accession TEXT NOT NULL DEFAULT '',
        linked_at TEXT,
        linked_accession TEXT,
        link_reason TEXT,
        linked_by TEXT
    )""",
]

# outcomes of an inbound row
ACCEPTED, QUEUED, REFUSED, LINKED, DUPLICATE = "accepted", "queued", "refused", "linked", "duplicate"
PREFIX = "mpps:"


@dataclass(frozen=True)
class MppsInbound:
    """One N-CREATE or N-SET as it came off the wire (or a link made by a person)."""

    dimse: str  # N-CREATE | N-SET | LINK
    sop_instance_uid: str
    raw: bytes
    received_at: str
    calling_ae: str = ""
    called_ae: str = ""
    peer: str = ""
    transfer_syntax: str = ""


@dataclass(frozen=True)
class StoredStep:
    sop_instance_uid: str
    accession: str | None
    status: str
    calling_ae: str
    step: dict[str, Any]
    created_at: str
    updated_at: str


class MppsRecords:
    """The MPPS tables inside one open transaction: read, decide, write, commit together."""

    def __init__(self, cur: Cursor) -> None:
        self.cur = cur

    def step(self, sop_instance_uid: str) -> StoredStep | None:
        row = self.cur.execute(
            "SELECT * FROM mpps WHERE sop_instance_uid = ?", (sop_instance_uid,)
        ).fetchone()
        if row is None:
            return None
        return StoredStep(
            sop_instance_uid=row["sop_instance_uid"],
            accession=row["accession"],
            status=row["status"],
            calling_ae=row["calling_ae"],
            step=json.loads(row["step"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    def steps_of(self, accession: str) -> list[str]:
        """Statuses of the steps already attached to an exam, latest first."""
        rows = self.cur.execute(
            "SELECT status FROM mpps WHERE accession = ? ORDER BY updated_at DESC", (accession,)
        ).fetchall()
        return [row["status"] for row in rows]

    def order_state(self, accession: str) -> str | None:
        return order_state(self.cur, accession)

    def insert(
        self,
        inbound: MppsInbound,
        outcome: str,
        dimse_status: int,
        error_comment: str = "",
        accession: str = "",
    ) -> int:
        row = self.cur.execute(
            "INSERT INTO mpps_messages (received_at, dimse, sop_instance_uid, calling_ae, called_ae, "
            "peer, transfer_syntax, raw, outcome, dimse_status, error_comment, accession) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                inbound.received_at,
                inbound.dimse,
                inbound.sop_instance_uid,
                inbound.calling_ae,
                inbound.called_ae,
                inbound.peer,
                inbound.transfer_syntax,
                inbound.raw,
                outcome,
                dimse_status,
                error_comment or None,
                accession or None,
            ),
        ).fetchone()
        assert row is not None  # RETURNING always yields the new row
        return int(row["id"])

    def attach_commands(self, row_id: int, commands: list[dict[str, Any]]) -> None:
        self.cur.execute("UPDATE mpps_messages SET commands = ? WHERE id = ?", (json.dumps(commands), row_id))

    def create_step(
        self, inbound: MppsInbound, accession: str | None, status: str, step: dict[str, Any], row_id: int
    ) -> None:
        self.cur.execute(
            "INSERT INTO mpps (sop_instance_uid, accession, status, calling_ae, step, created_at, "
            "updated_at, last_message_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                inbound.sop_instance_uid,
                accession,
                status,
                inbound.calling_ae,
                json.dumps(step),
                inbound.received_at,
                inbound.received_at,
                row_id,
            ),
        )

    def update_step(
        self, sop_instance_uid: str, status: str, step: dict[str, Any], at: str, row_id: int
    ) -> None:
        self.cur.execute(
            "UPDATE mpps SET status = ?, step = ?, updated_at = ?, last_message_id = ? "
            "WHERE sop_instance_uid = ?",
            (status, json.dumps(step), at, row_id, sop_instance_uid),
        )

    def queue(self, sop_instance_uid: str, reason: str, claimed_accession: str, at: str) -> None:
        """Put a step in the reconciliation queue, or back in it with a new reason."""
        self.cur.execute(
            "INSERT INTO mpps_reconciliation (sop_instance_uid, queued_at, reason, claimed_accession) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (sop_instance_uid) DO UPDATE SET "
            "queued_at = excluded.queued_at, reason = excluded.reason, linked_at = NULL, "
            "linked_accession = NULL, link_reason = NULL, linked_by = NULL",
            (sop_instance_uid, at, reason, claimed_accession),
        )
        self.cur.execute("UPDATE mpps SET accession = NULL WHERE sop_instance_uid = ?", (sop_instance_uid,))

    def queued(self, sop_instance_uid: str) -> dict[str, Any] | None:
        return self.cur.execute(
            "SELECT * FROM mpps_reconciliation WHERE sop_instance_uid = ?", (sop_instance_uid,)
        ).fetchone()

    def mark_linked(self, sop_instance_uid: str, accession: str, reason: str, user: str, at: str) -> None:
        self.cur.execute(
            "UPDATE mpps_reconciliation SET linked_at = ?, linked_accession = ?, link_reason = ?, "
            "linked_by = ? WHERE sop_instance_uid = ?",
            (at, accession, reason, user, sop_instance_uid),
        )
        self.cur.execute(
            "UPDATE mpps SET accession = ? WHERE sop_instance_uid = ?", (accession, sop_instance_uid)
        )

    def message_ids(self, sop_instance_uid: str) -> list[int]:
        rows = self.cur.execute(
            "SELECT id FROM mpps_messages WHERE sop_instance_uid = ? AND outcome IN (?, ?) ORDER BY id",
            (sop_instance_uid, ACCEPTED, QUEUED),
        ).fetchall()
        return [int(row["id"]) for row in rows]


class MppsLog(OutboxTable):
    outbox_table = "mpps_messages"
    outbox_ready = "commands IS NOT NULL"

    def __init__(self, db: Database) -> None:
        self.db = db

    def create_schema(self) -> None:
        # the HL7 log too, complete (columns, indexes, patient links): whether an accession
        # was ordered is read from it
        message_log.MessageLog(self.db).create_schema()
        self.db.create_tables(SCHEMA)

    @contextmanager
    def transaction(self) -> Iterator[MppsRecords]:
        """One decision: everything read and written inside commits (durably) or not at all."""
        # two associations must not decide on the same step or exam at once; MPPS traffic is a
        # few messages per procedure, so one lock is enough
        with self.db.serialised("radflow-mpps") as cur:
            yield MppsRecords(cur)

    # --- the workflow's side ----------------------------------------------------------------

    def record_outcome(
        self, message_id: str, status: str, reason: str, events: Sequence[dict[str, Any]] = ()
    ) -> None:
        """Store what applying the row did. A step the exam refused goes (back) to the
        reconciliation queue: the modality was told success, so a person has to see it."""
        if not message_id.startswith(PREFIX):
            return
        row_id = int(message_id.removeprefix(PREFIX))
        with self.transaction() as records:
            records.cur.execute(
                "UPDATE mpps_messages SET applied_status = ?, applied_reason = ?, applied_at = ? WHERE id = ?",
                (status, reason or None, utcnow(), row_id),
            )
            if status != "refused":
                return
            row = records.cur.execute(
                "SELECT sop_instance_uid, accession FROM mpps_messages WHERE id = ?", (row_id,)
            ).fetchone()
            if row is None:
                return
            records.queue(
                row["sop_instance_uid"], f"refused by the exam: {reason}", row["accession"] or "", utcnow()
            )

    # --- reading ----------------------------------------------------------------------------

    def get(self, row_id: int) -> dict[str, Any] | None:
        rows = self.db.query("SELECT * FROM mpps_messages WHERE id = ?", (row_id,))
        return rows[0] if rows else None

    def messages_of(self, sop_instance_uid: str) -> list[dict[str, Any]]:
        return self.db.query(
            "SELECT * FROM mpps_messages WHERE sop_instance_uid = ? ORDER BY id", (sop_instance_uid,)
        )

    def step(self, sop_instance_uid: str) -> StoredStep | None:
        with self.db.transaction() as cur:
            return MppsRecords(cur).step(sop_instance_uid)

    def reconciliation(self, include_linked: bool = False) -> list[dict[str, Any]]:
        """The queue, oldest first, each entry with what the modality said about the step."""
        where = "" if include_linked else "WHERE r.linked_at IS NULL"
        rows = self.db.query(
            "SELECT r.*, m.status, m.calling_ae, m.step, m.updated_at FROM mpps_reconciliation r "
            f"JOIN mpps m ON m.sop_instance_uid = r.sop_instance_uid {where} "
            "ORDER BY r.queued_at, r.sop_instance_uid"
        )
        for row in rows:
            row["step"] = json.loads(row["step"])
        return rows
