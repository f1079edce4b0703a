"""Storage commitment requests (N-ACTION) and what became of their reports (N-EVENT-REPORT), in
the storage log's database.

A request is written before its N-ACTION success goes out, with the answer already decided,
so a report owed survives a restart and operations can see every one that did not arrive.

The table's shape is the one `adapters/storage_log.py` also creates (it still answers
`/api/dicom/commitments`): keep both identical until the storage log stops creating it.
"""

from __future__ import annotations

import json
from typing import Any

from adapters.message_log import utcnow
from adapters.sql import Database

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS storage_commitments (
        transaction_uid TEXT PRIMARY KEY,
        received_at TEXT NOT NULL,
        calling_ae TEXT NOT NULL,
        peer TEXT NOT NULL,
        association_id BIGINT NOT NULL,
        requested TEXT NOT NULL,
        result TEXT NOT NULL,
        event_type INTEGER NOT NULL,
        delivered_at TEXT,
        delivered_how TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    )""",
]

# `delivered_how` of a report radflow gave up on (delivered_at stays NULL)
UNDELIVERABLE = "undeliverable"


class CommitmentLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create_schema(self) -> None:
        self.db.create_tables(SCHEMA)

    def record_request(
        self,
        transaction_uid: str,
        calling_ae: str,
        peer: str,
        association_id: int,
        requested: list[dict[str, str]],
        result: dict[str, Any],
        event_type: int,
    ) -> None:
        """Durable before the N-ACTION success. A repeated Transaction UID (a modality asking
        again because no report came) gets a fresh answer and is owed again."""
        with self.db.transaction() as cur:
            cur.execute(
                "INSERT INTO storage_commitments (transaction_uid, received_at, calling_ae, peer, association_id, "
                "requested, result, event_type) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (transaction_uid) DO UPDATE SET received_at = excluded.received_at, "
                "calling_ae = excluded.calling_ae, peer = excluded.peer, association_id = excluded.association_id, "
                "requested = excluded.requested, result = excluded.result, event_type = excluded.event_type, "
                "delivered_at = NULL, delivered_how = NULL, attempts = 0, last_error = NULL",
                (
                    transaction_uid,
                    utcnow(),
                    calling_ae,
                    peer,
                    association_id,
                    json.dumps(requested),
                    json.dumps(result),
                    event_type,
                ),
            )

    def record_delivered(self, transaction_uid: str, how: str) -> None:
        self.db.execute(
            "UPDATE storage_commitments SET delivered_at = ?, delivered_how = ?, attempts = attempts + 1, "
            "last_error = NULL WHERE transaction_uid = ?",
            (utcnow(), how, transaction_uid),
        )

    def record_attempt_failed(self, transaction_uid: str, error: str) -> None:
        self.db.execute(
            "UPDATE storage_commitments SET attempts = attempts + 1, last_error = ? WHERE transaction_uid = ?",
            (error[:500], transaction_uid),
        )

    def record_undeliverable(self, transaction_uid: str, error: str) -> None:
        """No more attempts in this process (the requester is gone and has no known address, or
        every retry failed); the row stays undelivered where operations look."""
        self.db.execute(
            "UPDATE storage_commitments SET delivered_how = ?, last_error = ? "
            "WHERE transaction_uid = ? AND delivered_at IS NULL",
            (UNDELIVERABLE, error[:500], transaction_uid),
        )

    def get(self, transaction_uid: str) -> dict[str, Any] | None:
        rows = self.db.query(
            "SELECT * FROM storage_commitments WHERE transaction_uid = ?", (transaction_uid,)
        )
        return _decoded(rows[0]) if rows else None

    def recent(self, limit: int = 100, undelivered: bool = False) -> list[dict[str, Any]]:
        """Newest first; `undelivered` keeps only reports that have not arrived (yet or ever)."""
        where = "WHERE delivered_at IS NULL " if undelivered else ""
        rows = self.db.query(
            f"SELECT * FROM storage_commitments {where}ORDER BY received_at DESC LIMIT ?", (limit,)
        )
        return [_decoded(row) for row in rows]

    def owed(self, since: str, limit: int = 1000) -> list[dict[str, Any]]:
        """Reports neither delivered nor given up on, for requests received at or after `since`
        (an ISO timestamp as `utcnow()` writes them), oldest first: what a listener that stopped
        mid-delivery still sends when it starts again."""
        rows = self.db.query(
            "SELECT * FROM storage_commitments WHERE delivered_at IS NULL AND delivered_how IS NULL "
            "AND received_at >= ? ORDER BY received_at LIMIT ?",
            (since, limit),
        )
        return [_decoded(row) for row in rows]


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    row["requested"] = json.loads(row["requested"])
    row["result"] = json.loads(row["result"])
    return row
