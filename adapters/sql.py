"""One small SQL facade over sqlite3 and psycopg, so that read models and the message log run
unchanged on the embedded SQLite files and on PostgreSQL.

Statements are written with `?` placeholders and `{id}` / `{blob}` / `{now}` type markers;
`Database.sql` rewrites them for the dialect.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.settings import Settings

if TYPE_CHECKING:  # imported when PostgreSQL is configured: the SQLite processes never load it
    from psycopg_pool import ConnectionPool

_TYPES = {
    "sqlite": {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "blob": "BLOB"},
    "postgres": {"id": "BIGSERIAL PRIMARY KEY", "blob": "BYTEA"},
}


WRITER_WAIT_S = 30.0  # as SQLite's busy_timeout below: then "database is locked"
_writers = threading.local()  # this thread's held writer locks: SQLite path -> [fd, depth]
_process_writers: dict[Path, threading.Lock] = {}
_process_writers_lock = threading.Lock()
_lock_files: dict[Path, tuple[int, int]] = {}  # SQLite path -> (process id, lock file descriptor)


@contextmanager
def sqlite_writer_lock(path: Path) -> Iterator[None]:
    """Writers of one SQLite file, one at a time: a thread lock within the process, then an
    flock(2) of a file beside the database between processes. Left to SQLite, a writer
    finding the file locked sleeps 1, 2, 5, 10 ... 100 ms between tries (its busy handler):
    four DICOM associations in two processes, each committing a row per C-STORE, stored
    little faster than one (bench/dicom.py). A thread waiting on the lock wakes when it is
    released; between processes the wait polls at most 1 ms apart. Re-entrant within a
    thread (a nested transaction then meets SQLite's own rule); gives up, as SQLite would,
    after WRITER_WAIT_S."""
    held: dict[Path, list[int]] = _writers.__dict__.setdefault("held", {})
    entry = held.get(path)
    if entry is not None:
        entry[1] += 1
        try:
            yield
        finally:
            entry[1] -= 1
        return
    with _process_writers_lock:
        in_process = _process_writers.setdefault(path, threading.Lock())
    deadline = time.monotonic() + WRITER_WAIT_S
    if not in_process.acquire(timeout=WRITER_WAIT_S):
        raise sqlite3.OperationalError(f"database is locked: no write turn in {WRITER_WAIT_S:.0f} s")
    try:
        fd = _lock_file(path)
        _flock(fd, deadline)
        held[path] = [fd, 1]
        try:
            yield
        finally:
            del held[path]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        in_process.release()


def _lock_file(path: Path) -> int:
    """The lock file's descriptor, opened once per process (an open and a close per commit
    were two of the C-STORE's system calls). Keyed by process as well: a child started by
    fork must not share its parent's open file, whose flock is one lock for both. The caller
    holds the path's in-process lock."""
    pid = os.getpid()
    opened = _lock_files.get(path)
    if opened is None or opened[0] != pid:
        opened = (pid, os.open(f"{path}-writer.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644))
        _lock_files[path] = opened
    return opened[1]


def _flock(fd: int, deadline: float) -> None:
    pause = 0.00005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise sqlite3.OperationalError(
                    f"database is locked: another process held it for {WRITER_WAIT_S:.0f} s"
                ) from None
            time.sleep(pause)
            pause = min(pause * 2, 0.001)


class Database:
    """SQLite: a connection per thread (a file: cheap, and WAL wants it). PostgreSQL: connections
    from a pool, held only while a statement or transaction runs. A thread inside a transaction
    keeps its connection for every nested call, so it reads its own writes.

    Why a pool: the API answers sync routes from a pool of ~40 threads, and a connection kept per
    thread and per Database (several per process) went past PostgreSQL's 100 connections."""

    POOL_MAX = 16  # connections per Database on PostgreSQL; more callers wait for one

    def __init__(self, dialect: str, *, path: Path | None = None, conninfo: str = "") -> None:
        self.dialect = dialect
        self.path = path
        self.conninfo = conninfo
        self._local = threading.local()
        self._pool: ConnectionPool | None = None
        self._pool_lock = threading.Lock()

    @classmethod
    def for_file(cls, settings: Settings, sqlite_path: Path) -> Database:
        """PostgreSQL when configured, else the given SQLite file."""
        if settings.uses_postgres:
            params = settings.postgres_params()
            import psycopg

            conninfo = psycopg.conninfo.make_conninfo(**params)
            return cls("postgres", conninfo=conninfo)
        sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        return cls("sqlite", path=sqlite_path)

    def sql(self, statement: str) -> str:
        statement = statement.format(**_TYPES[self.dialect])
        if self.dialect == "postgres":
            statement = statement.replace("?", "%s")
        return statement

    def _sqlite(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # an ACK follows the commit
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    def _postgres_pool(self) -> ConnectionPool:
        with self._pool_lock:
            if self._pool is None:
                from psycopg.rows import dict_row
                from psycopg_pool import ConnectionPool

                self._pool = ConnectionPool(
                    self.conninfo,
                    kwargs={"row_factory": dict_row, "autocommit": True},
                    # none kept when idle: a process (or a test) that stopped using a Database
                    # holds no connection against PostgreSQL's limit; a busy one keeps its own
                    min_size=0,
                    max_size=self.POOL_MAX,
                    max_idle=10,
                    open=True,
                    name=f"radflow-{id(self):x}",
                )
            return self._pool

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """This thread's connection: its open transaction's, else one borrowed for the call."""
        if self.dialect == "sqlite":
            yield self._sqlite()
            return
        held = getattr(self._local, "conn", None)
        if held is not None:
            yield held
            return
        with self._postgres_pool().connection() as conn:
            self._local.conn = conn
            try:
                yield conn
            finally:
                self._local.conn = None

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        with self._connection() as conn:
            if self.dialect == "sqlite":
                assert self.path is not None
                with sqlite_writer_lock(self.path):
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
        with self._connection() as conn:
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
        if self.dialect == "sqlite":
            conn = getattr(self._local, "conn", None)
            if conn is not None:
                conn.close()
                self._local.conn = None
            return
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


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
