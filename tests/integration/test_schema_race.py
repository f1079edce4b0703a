"""worker, listen and api create their tables at start, all at once: on a fresh PostgreSQL
database that must not fail (two sessions creating one table collide on pg_type even with
IF NOT EXISTS, as a fresh PostgreSQL stack once showed)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import PG_ADMIN, ROOT

CREATE = """
import sys
from adapters.commitment_log import CommitmentLog
from adapters.mpps_log import MppsLog
from adapters.outbound_log import OutboundLog
from adapters.sql import Database
from adapters.storage_log import StorageLog
db = Database("postgres", conninfo=sys.argv[1])
sys.stdin.readline()  # start together
for log in (MppsLog(db), StorageLog(db), CommitmentLog(db), OutboundLog(db)):
    log.create_schema()
print("ok")
"""


@pytest.fixture
def fresh_database() -> Iterator[str]:
    name = f"radflow_race_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("processes", [4])
def test_processes_creating_the_tables_at_once_all_succeed(fresh_database: str, processes: int) -> None:
    started = [
        subprocess.Popen(
            [sys.executable, "-c", CREATE, fresh_database],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    for process in started:  # imports done meanwhile; now all at once
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    results = [process.communicate(timeout=60) for process in started]
    failures = [
        err for (out, err), p in zip(results, started, strict=True) if p.returncode != 0 or "ok" not in out
    ]
    assert not failures, failures[0][-2000:]
