"""The operations journal: every action taken from the ops console or API (retry now,
re-deliver, cancel, forced transition, rebuild a workflow, dead-letter retry / discard), with
who, when, on what, why, and what came of it. Append-only, in the messages database."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from adapters.sql import Database

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS ops_actions (
        id {id},
        at TEXT NOT NULL,
        username TEXT NOT NULL,
        action TEXT NOT NULL,
        accession TEXT NOT NULL DEFAULT '',
        target TEXT NOT NULL DEFAULT '',
        reason TEXT NOT NULL,
        outcome TEXT NOT NULL,
        result TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS ops_actions_accession ON ops_actions (accession, id)",
]
OK, REFUSED, FAILED = "ok", "refused", "failed"


class OpsActions:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create_schema(self) -> None:
        with self.db.serialised("ops_actions_schema") as cur:
            for statement in SCHEMA:
                cur.execute(statement)

    def record(
        self,
        *,
        username: str,
        action: str,
        reason: str,
        outcome: str,
        result: dict[str, Any],
        accession: str = "",
        target: str = "",
    ) -> int:
        at = datetime.now(UTC).isoformat(timespec="microseconds")
        with self.db.transaction() as cur:
            row = cur.execute(
                "INSERT INTO ops_actions (at, username, action, accession, target, reason, outcome, result) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (at, username, action, accession, target, reason, outcome, json.dumps(result, default=str)),
            ).fetchone()
        assert row is not None  # RETURNING always yields the new row
        return int(row["id"])

    def recent(self, *, accession: str = "", limit: int = 100) -> list[dict[str, Any]]:
        where, params = ("WHERE accession = ? ", [accession]) if accession else ("", [])
        rows = self.db.query(f"SELECT * FROM ops_actions {where}ORDER BY id DESC LIMIT ?", (*params, limit))
        for row in rows:
            row["result"] = json.loads(row["result"])
        return rows
