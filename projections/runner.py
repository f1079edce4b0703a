"""Runs a projection over the event store's notification log with a tracked position.

Rows and position are committed in one transaction, and the position moves only from the
value read (a compare-and-set), so two runners never apply an event twice. On SQLite the
runner pulls, woken by the appender in the same process (and by a short poll otherwise); on
PostgreSQL it subscribes (LISTEN/NOTIFY through eventsourcing).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from eventsourcing.persistence import Notification

from adapters.event_store import EventStore
from adapters.sql import Cursor, Database

log = logging.getLogger("radflow.projections")

TRACKING_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS projection_tracking (
        name TEXT PRIMARY KEY,
        position BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS projection_schema (
        name TEXT PRIMARY KEY,
        version BIGINT NOT NULL
    )""",
]


class Projection(Protocol):
    """`schema_version` (optional, default 1) is raised whenever `schema` changes shape."""

    name: str
    schema: Sequence[str]
    tables: Sequence[str]

    def handle(self, cur: Cursor, event: Any) -> None: ...


Progress = Callable[[int, int], None]  # (events done, events to do)


def _plain(value: Any) -> Any:
    """A cell as comparable across dialects: whole floats as ints, bytes and text as str."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return value


def table_rows(cur: Cursor, table: str) -> list[tuple[Any, ...]]:
    """Every row of `table` as (column, value) pairs sorted by column name, the rows sorted:
    two tables with the same content give equal lists whatever their column or row order."""
    rows = cur.execute(f"SELECT * FROM {table}").fetchall()
    return sorted((tuple(sorted((k, _plain(v)) for k, v in row.items())) for row in rows), key=repr)


class StalePosition(Exception):
    """Another runner moved the position first; re-read and carry on."""


class ProjectionRunner:
    def __init__(self, store: EventStore, db: Database, projection: Projection) -> None:
        self.store = store
        self.db = db
        self.projection = projection
        self._wake = threading.Event()
        self._stop = threading.Event()
        # called (from the runner's thread) after a transaction that applied events committed:
        # a feed wakes whoever sends what it queued
        self.on_applied: Callable[[], None] | None = None

    def create_schema(self) -> None:
        """Create the tables. When the projection's schema version differs from the one
        recorded (or none was recorded, as in files older than versioning), drop its tables and
        position first, so that catch-up rebuilds it from the store: a new column needs values
        for the events already projected, which `ALTER TABLE ... ADD COLUMN` cannot give."""
        name = self.projection.name
        version = int(getattr(self.projection, "schema_version", 1))
        with self.db.transaction() as cur:
            if self.db.dialect == "postgres":
                # API and worker both start here; SQLite is serialised by BEGIN IMMEDIATE
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (f"schema:{name}",))
            for statement in TRACKING_SCHEMA:
                cur.execute(statement)
            row = cur.execute("SELECT version FROM projection_schema WHERE name = ?", (name,)).fetchone()
            if row is None or int(row["version"]) != version:
                for table in self.projection.tables:
                    cur.execute(f"DROP TABLE IF EXISTS {table}")
                cur.execute("DELETE FROM projection_tracking WHERE name = ?", (name,))
                cur.execute("DELETE FROM projection_schema WHERE name = ?", (name,))
                cur.execute("INSERT INTO projection_schema (name, version) VALUES (?, ?)", (name, version))
                log.info("projection schema (re)created", extra={"projection": name, "version": version})
            for statement in self.projection.schema:
                cur.execute(statement)

    def position(self) -> int:
        rows = self.db.query(
            "SELECT position FROM projection_tracking WHERE name = ?", (self.projection.name,)
        )
        return int(rows[0]["position"]) if rows else 0

    def lag(self) -> int:
        return max(self.store.max_notification_id() - self.position(), 0)

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def catch_up(
        self, batch: int = 500, *, until: int | None = None, progress: Progress | None = None
    ) -> int:
        """Apply everything stored so far (or up to notification `until`); returns how many
        notifications were processed. `progress(done, total)` is called after each batch."""
        total = expected = 0
        if progress is not None:  # the live runner's loop skips the extra query
            goal = self.store.max_notification_id() if until is None else until
            expected = max(goal - self.position(), 0)
            progress(0, expected)
        while True:
            start = self.position() + 1
            notifications = (
                []
                if until is not None and start > until
                else self.store.recorder.select_notifications(start=start, limit=batch, stop=until)
            )
            if not notifications:
                # done: notification ids have gaps on PostgreSQL (a rolled-back insert uses up
                # its number), so the count expected from ids can be more than there were
                if progress is not None and total != expected:
                    progress(total, total)
                return total
            try:
                self.apply(notifications)
            except StalePosition:
                continue
            total += len(notifications)
            if progress is not None:
                progress(total, max(expected, total))
            if self.on_applied is not None:
                self.on_applied()

    def apply(self, notifications: Sequence[Notification]) -> None:
        with self.db.transaction() as cur:
            if self.db.dialect == "postgres":
                # under READ COMMITTED two runners read the same position and collide on the
                # rows (unique violations) before the compare-and-set below can notice; SQLite
                # is already serialised by BEGIN IMMEDIATE
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (self.projection.name,))
            previous = cur.execute(
                "SELECT position FROM projection_tracking WHERE name = ?", (self.projection.name,)
            ).fetchone()
            position = int(previous["position"]) if previous else 0
            fresh = [n for n in notifications if n.id > position]
            if not fresh:
                return
            for notification in fresh:
                self.projection.handle(cur, self.store.mapper.to_domain_event(notification))
            last = fresh[-1].id
            if previous is None:
                cur.execute(
                    "INSERT INTO projection_tracking (name, position) VALUES (?, ?)",
                    (self.projection.name, last),
                )
            elif (
                cur.execute(
                    "UPDATE projection_tracking SET position = ? WHERE name = ? AND position = ?",
                    (last, self.projection.name, position),
                ).rowcount
                != 1
            ):
                raise StalePosition(self.projection.name)

    def rebuild(self, progress: Progress | None = None) -> int:
        """Drop the rows and the position, then replay the whole store."""
        with self.db.transaction() as cur:
            for table in self.projection.tables:
                cur.execute(f"DELETE FROM {table}")
            cur.execute("DELETE FROM projection_tracking WHERE name = ?", (self.projection.name,))
        return self.catch_up(progress=progress)

    def snapshot(self) -> tuple[int, dict[str, list[tuple[Any, ...]]]]:
        """The position and every row of the projection's tables, read while no runner can
        apply (the same lock `apply` takes), so rows and position agree."""
        with self.db.transaction() as cur:
            if self.db.dialect == "postgres":
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (self.projection.name,))
            row = cur.execute(
                "SELECT position FROM projection_tracking WHERE name = ?", (self.projection.name,)
            ).fetchone()
            tables = {table: table_rows(cur, table) for table in self.projection.tables}
        return (int(row["position"]) if row else 0), tables

    def run_forever(self, poll_s: float = 0.5) -> None:
        if self.db.dialect == "postgres":
            self._subscribe_forever()
            return
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.catch_up()
            except Exception:
                log.exception("projection failed", extra={"projection": self.projection.name})
                self._stop.wait(2.0)
            self._wake.wait(poll_s)

    def _subscribe_forever(self) -> None:
        while not self._stop.is_set():
            try:
                self.catch_up()
                with self.store.recorder.subscribe(gt=self.position()) as subscription:

                    def stop_when_asked() -> None:
                        self._stop.wait()
                        subscription.stop()

                    stopper = threading.Thread(target=stop_when_asked, daemon=True)
                    stopper.start()
                    for notification in subscription:
                        if self._stop.is_set():
                            break
                        try:
                            self.apply([notification])
                        except StalePosition:
                            self.catch_up()
                        else:
                            if self.on_applied is not None:
                                self.on_applied()
            except Exception:
                log.exception("projection subscription failed", extra={"projection": self.projection.name})
                self._stop.wait(2.0)
