"""SQLite writers take turns through adapters.sql.sqlite_writer_lock: threads of one process and
other processes wait for the writer before them instead of sleeping in SQLite's busy handler,
and a writer that never gets its turn is told so, as SQLite would tell it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from adapters import sql
from adapters.sql import Database
from tests.conftest import ROOT

HOLD = """
import sys, time
from pathlib import Path
from adapters.sql import Database
db = Database("sqlite", path=Path(sys.argv[1]))
with db.transaction() as cur:
    cur.execute("INSERT INTO turns (who) VALUES ('other process')")
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _database(tmp_path: Path) -> Database:
    db = Database("sqlite", path=tmp_path / "turns.sqlite")
    db.execute("CREATE TABLE turns (id INTEGER PRIMARY KEY AUTOINCREMENT, who TEXT NOT NULL)")
    return db


def _hold_in_another_process(db: Database, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(db.path), str(seconds)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    return holder


def test_threads_writing_one_file_take_turns_and_lose_nothing(tmp_path: Path) -> None:
    db = _database(tmp_path)
    inside: list[int] = []

    def write(n: int) -> None:
        for _ in range(25):
            with db.transaction() as cur:
                inside.append(n)
                assert len(inside) == 1, "two writers inside at once"
                cur.execute("INSERT INTO turns (who) VALUES (?)", (f"thread {n}",))
                time.sleep(0.0005)
                inside.remove(n)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert db.query("SELECT COUNT(*) AS n FROM turns")[0]["n"] == 100


def test_a_writer_waits_for_one_in_another_process_and_then_writes(tmp_path: Path) -> None:
    db = _database(tmp_path)
    holder = _hold_in_another_process(db, 0.5)
    held_from = time.monotonic()
    with db.transaction() as cur:
        waited = time.monotonic() - held_from
        cur.execute("INSERT INTO turns (who) VALUES ('this process')")
    assert holder.wait(10) == 0
    assert waited > 0.3, "the write turn was taken while the other process held it"
    assert [r["who"] for r in db.query("SELECT who FROM turns ORDER BY id")] == [
        "other process",
        "this process",
    ]


def test_a_writer_that_never_gets_its_turn_is_told_the_database_is_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = _database(tmp_path)
    monkeypatch.setattr(sql, "WRITER_WAIT_S", 0.2)
    holder = _hold_in_another_process(db, 3)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"), db.transaction() as cur:
            cur.execute("INSERT INTO turns (who) VALUES ('never')")
    finally:
        holder.kill()
        holder.wait()
    with db.transaction() as cur:  # the turn is free again once the other process is gone
        cur.execute("INSERT INTO turns (who) VALUES ('afterwards')")
    assert [r["who"] for r in db.query("SELECT who FROM turns ORDER BY id")] == ["afterwards"]


def test_a_nested_write_on_the_same_file_is_not_a_deadlock_of_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock is re-entrant within a thread: a nested transaction through a second Database of
    the same file reaches SQLite, which answers (busy, then locked) as it did before the lock."""
    db = _database(tmp_path)
    monkeypatch.setattr(sql, "WRITER_WAIT_S", 1.0)
    other = Database("sqlite", path=db.path)
    other._sqlite().execute("PRAGMA busy_timeout=100")
    with db.transaction() as cur:
        cur.execute("INSERT INTO turns (who) VALUES ('outer')")
        # SQLite's own words, not the lock's ("database is locked: no write turn ...")
        with (
            pytest.raises(sqlite3.OperationalError, match=r"^database is locked$"),
            other.transaction() as inner,
        ):
            inner.execute("INSERT INTO turns (who) VALUES ('inner')")
    assert [r["who"] for r in db.query("SELECT who FROM turns")] == ["outer"]


def test_a_forked_child_waits_for_its_parents_turn_and_the_parent_for_its_childs(tmp_path: Path) -> None:
    """Each process opens the lock file once and keeps it; a child made by fork must not write
    through its parent's open file, whose flock would then be one lock for both."""
    db = _database(tmp_path)
    with db.transaction() as cur:  # this process has its lock file open now
        cur.execute("INSERT INTO turns (who) VALUES ('before the fork')")
    ready, told = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child's coverage is not collected)
        code = 1
        try:
            with Database("sqlite", path=db.path).transaction() as cur:
                cur.execute("INSERT INTO turns (who) VALUES ('child')")
                os.write(told, b"in")
                time.sleep(0.5)
            code = 0
        finally:
            os._exit(code)
    assert os.read(ready, 2) == b"in"
    asked = time.monotonic()
    with sql.sqlite_writer_lock(tmp_path / "turns.sqlite"):
        waited = time.monotonic() - asked
    assert os.waitpid(child, 0)[1] == 0
    assert waited > 0.3, f"the parent took its turn while the child held it (after {waited:.3f} s)"
    assert [r["who"] for r in db.query("SELECT who FROM turns ORDER BY id")] == ["before the fork", "child"]
