"""One small SQL facade over sqlite3 and psycopg, so that read models and the message log run
unchanged on the embedded SQLite files and on PostgreSQL.

Statements are written with `?` placeholders and `{id}` / `{blob}` / `{now}` type markers;
`Database.sql` rewrites them for the dialect.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from adapters.settings import Settings

_TYPES = {
    "sqlite": {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "blob": "BLOB"},
    "postgres": {"id": "BIGSERIAL PRIMARY KEY", "blob": "BYTEA"},
}


class Database:
    """A connection per thread; `transaction()` commits (durably on SQLite) or rolls back."""

    def __init__(self, dialect: str, *, path: Path | None = None, conninfo: str = "") -> None:
        self.dialect = dialect
        self.path = path
        self.conninfo = conninfo
        self._local = threading.local()

    @classmethod
    def for_file(cls, settings: Settings, sqlite_path: Path) -> Database:
        """PostgreSQL when configured, else the given SQLite file."""
        if settings.uses_postgres:
            params = settings.postgres_params()
            conninfo = psycopg.conninfo.make_conninfo(**params)
            return cls("postgres", conninfo=conninfo)
        sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        return cls("sqlite", path=sqlite_path)

    def sql(self, statement: str) -> str:
        statement = statement.format(**_TYPES[self.dialect])
        if self.dialect == "postgres":
            statement = statement.replace("?", "%s")
        return statement

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.dialect == "sqlite":
                conn = sqlite3.connect(
                    str(self.path), timeout=30, isolation_level=None, check_same_thread=False
                )
                conn.row_factory = sqlite3.Row
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")  # an ACK follows the commit
                conn.execute("PRAGMA busy_timeout=30000")
            else:
                conn = psycopg.connect(self.conninfo, row_factory=dict_row, autocommit=True)
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        conn = self._connection()
        if self.dialect == "sqlite":
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield Cursor(self, conn.cursor())
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        else:
            with conn.transaction(), conn.cursor() as cur:
                yield Cursor(self, cur)

    @contextmanager
    def serialised(self, name: str) -> Iterator[Cursor]:
        """A transaction that runs alone among those of the same name: SQLite's BEGIN IMMEDIATE
        already serialises writers; on PostgreSQL (READ COMMITTED) an advisory lock does."""
        with self.transaction() as cur:
            if self.dialect == "postgres":
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (name,))
            yield cur

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        conn = self._connection()
        cur = conn.execute(self.sql(statement), tuple(params))
        return [dict(row) for row in cur.fetchall()]

    def execute(self, statement: str, params: Sequence[Any] = ()) -> None:
        with self.transaction() as cur:
            cur.execute(statement, params)

    def create_tables(self, statements: Sequence[str]) -> None:
        """DDL that every process runs at start: one at a time. Two PostgreSQL sessions creating
        the same table at once collide on its catalogue row (pg_type unique violation) even
        with IF NOT EXISTS."""
        with self.serialised("radflow-schema") as cur:
            for statement in statements:
                cur.execute(statement)

    def executescript(self, statements: Sequence[str]) -> None:
        with self.transaction() as cur:
            for statement in statements:
                cur.execute(statement)

    def ping(self) -> None:
        self.query("SELECT 1 AS ok")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class Cursor:
    def __init__(self, db: Database, cursor: Any) -> None:
        self._db = db
        self._cursor = cursor

    def execute(self, statement: str, params: Sequence[Any] = ()) -> Cursor:
        self._cursor.execute(self._db.sql(statement), tuple(params))
        return self

    def fetchone(self) -> dict[str, Any] | None:
        row = self._cursor.fetchone()
        return None if row is None else dict(row)

    def fetchall(self) -> list[dict[str, Any]]:
        return [dict(row) for row in self._cursor.fetchall()]

    @property
    def dialect(self) -> str:
        return self._db.dialect

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)
