"""The relay's side of an inbound log: rows whose commands still have to reach a workflow."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, ClassVar

from adapters.sql import Database


class OutboxTable:
    """Mixed into a log class whose table has `commands` (JSON), `received_at`, `relayed_at`
    and `relay_error` columns; `ready` says which rows carry commands to deliver."""

    db: Database
    outbox_table: ClassVar[str]
    outbox_ready: ClassVar[str]

    def unrelayed(self, limit: int = 200) -> list[dict[str, Any]]:
        rows = self.db.query(
            f"SELECT id, received_at, commands FROM {self.outbox_table} "
            f"WHERE {self.outbox_ready} AND relayed_at IS NULL ORDER BY id LIMIT ?",
            (limit,),
        )
        for row in rows:
            row["commands"] = json.loads(row["commands"])
        return rows

    def mark_relayed(self, ids: list[int]) -> None:
        if not ids:
            return
        now = datetime.now(UTC).isoformat(timespec="microseconds")
        with self.db.transaction() as cur:
            for row_id in ids:
                cur.execute(
                    f"UPDATE {self.outbox_table} SET relayed_at = ?, relay_error = NULL WHERE id = ?",
                    (now, row_id),
                )

    def mark_relay_failed(self, row_id: int, error: str) -> None:
        self.db.execute(f"UPDATE {self.outbox_table} SET relay_error = ? WHERE id = ?", (error, row_id))
