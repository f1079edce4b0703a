"""Tamper evidence on SQLite and PostgreSQL: events stored through the real aggregates and event
store, chained by the audit-chain projection, then one stored row altered or deleted with SQL;
`radflow audit verify` (a subprocess, as an auditor runs it) must fail and name that row."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from adapters.event_store import EventStore, open_event_store
from adapters.settings import Settings
from adapters.sql import Database
from domain.exam import exam_id
from domain.patient import Patient
from domain.report import report_id
from domain.study import study_id
from projections.audit_chain import AuditChainProjection, link_hash
from projections.runner import ProjectionRunner
from tests.conftest import PG_ADMIN
from tests.integration.builders import provenance
from tests.integration.reading_builders import Department, mpps_uid

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def audit_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """A database of its own: these tests corrupt the store on purpose."""
    if request.param == "sqlite":
        yield Settings(data_dir=tmp_path, database_url="")
        return
    name = f"radflow_audit_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield Settings(data_dir=tmp_path, database_url=f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}")
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Chained:
    """An exam ordered, performed, imaged and reported, with its chain recorded."""

    def __init__(self, settings: Settings, store: EventStore, uid: str) -> None:
        self.settings = settings
        self.store = store
        department = Department(store, uid)
        # a patient's events have no exam chain: its row is the gap a forger fills (see below)
        self.patient = Patient.register(department.patient("CHAIN"), "O", provenance(f"hl7:{uid}-0"))
        store.save(self.patient)
        self.accession = department.order("AUD", department.patient("CHAIN"))
        department.perform(self.accession, completed="09:30", started="09:00")
        department.images(self.accession, "HEAD")
        department.claim(self.accession, "dr.house", "10:00")
        department.issue(
            self.accession, "final", "dr.house", "10:05", findings="No bleed.", impression="Normal."
        )
        self.db = Database.for_file(settings, settings.projections_sqlite_path)
        self.runner = ProjectionRunner(store, self.db, AuditChainProjection(store))
        self.runner.create_schema()
        self.runner.catch_up()

    def execute(self, statement: str, params: tuple[Any, ...]) -> int:
        """Raw SQL on the event store's table, behind radflow's back."""
        table = self.store.recorder.events_table_name  # type: ignore[attr-defined]
        statement = statement.replace("{table}", table)
        if self.settings.uses_postgres:
            with psycopg.connect(self.settings.database_url, autocommit=True) as conn:
                return conn.execute(statement.replace("?", "%s"), params).rowcount
        with sqlite3.connect(self.settings.events_sqlite_path) as conn:
            return conn.execute(statement, params).rowcount

    def key(self, aggregate_id: uuid.UUID) -> Any:
        return aggregate_id if self.settings.uses_postgres else aggregate_id.hex

    def stored_state(self, aggregate_id: uuid.UUID, version: int) -> bytes:
        return bytes(self.store.recorder.select_events(aggregate_id, gt=version - 1, lte=version)[0].state)

    def verify(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "RADFLOW_DATA_DIR": str(self.settings.data_dir),
            "RADFLOW_DATABASE_URL": self.settings.database_url,
        }
        return subprocess.run(
            [sys.executable, "-m", "api.cli", "audit", "verify", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture
def chained(audit_settings: Settings) -> Iterator[Chained]:
    store = open_event_store(audit_settings)
    exam = Chained(audit_settings, store, uuid.uuid4().hex[:8].upper())
    try:
        yield exam
    finally:
        exam.db.close()
        store.close()


def test_the_chain_holds_every_event_of_the_exam_its_report_and_its_study(chained: Chained) -> None:
    links = chained.db.query(
        "SELECT * FROM audit_chain WHERE accession = ? ORDER BY seq", (chained.accession,)
    )
    kinds = {link["aggregate"] for link in links}
    assert kinds == {"exam", "report", "study"}
    expected = (
        len(chained.store.recorder.select_events(exam_id(chained.accession)))
        + len(chained.store.recorder.select_events(report_id(chained.accession)))
        + len(chained.store.recorder.select_events(study_id(f"{mpps_uid(chained.accession)}9")))
    )
    assert len(links) == expected
    assert [link["seq"] for link in links] == list(range(1, len(links) + 1))
    assert all(
        later["prev_hash"] == earlier["hash"] for earlier, later in zip(links, links[1:], strict=False)
    )


def test_the_database_refuses_to_change_a_link(chained: Chained) -> None:
    with pytest.raises(Exception, match="never changed"), chained.db.transaction() as cur:
        cur.execute(
            "UPDATE audit_chain SET hash = ? WHERE accession = ? AND seq = 1", ("0" * 64, chained.accession)
        )


def test_verify_passes_on_an_untouched_store(chained: Chained) -> None:
    result = chained.verify()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("intact: 1 chains")


def test_verify_names_the_event_row_whose_state_was_altered(chained: Chained) -> None:
    exam = exam_id(chained.accession)
    original = chained.stored_state(exam, 2)
    assert b"CT01" in original
    changed = chained.execute(
        "UPDATE {table} SET state = ? WHERE originator_id = ? AND originator_version = ?",
        (original.replace(b"CT01", b"CT99"), chained.key(exam), 2),
    )
    assert changed == 1

    result = chained.verify()

    assert result.returncode == 1, result.stdout + result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("BROKEN: ")
    assert f"accession {chained.accession}" in first
    assert f"exam {exam} version 2 (ExamStarted) altered" in first


def test_verify_names_a_deleted_event_row(chained: Chained) -> None:
    report = report_id(chained.accession)
    last = len(chained.store.recorder.select_events(report))
    deleted = chained.execute(
        "DELETE FROM {table} WHERE originator_id = ? AND originator_version = ?", (chained.key(report), last)
    )
    assert deleted == 1

    result = chained.verify()

    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        f"report {report} version {last} (ReportIssued) missing from the store"
        in result.stdout.splitlines()[0]
    )


def test_verify_names_an_event_row_slipped_in_behind_the_projections_position(chained: Chained) -> None:
    """A forged next event of the exam, put at a position the projection has passed (the
    patient row's, deleted first): the projection never chained it, so verify must notice."""
    exam = exam_id(chained.accession)
    events = chained.store.recorder.select_events(exam)
    forged = events[-1]
    (patient_row,) = chained.store.recorder.select_notifications(start=1, limit=1)
    assert patient_row.originator_id == chained.patient.id  # saved first
    id_column = "notification_id" if chained.settings.uses_postgres else "rowid"
    chained.execute(f"DELETE FROM {{table}} WHERE {id_column} = ?", (patient_row.id,))
    inserted = chained.execute(
        f"INSERT INTO {{table}} (originator_id, originator_version, topic, state, {id_column}) VALUES (?, ?, ?, ?, ?)",
        (chained.key(exam), len(events) + 1, forged.topic, forged.state, patient_row.id),
    )
    assert inserted == 1

    result = chained.verify()

    assert result.returncode == 1, result.stdout + result.stderr
    first = result.stdout.splitlines()[0]
    assert f"accession {chained.accession}, no link: exam {exam} version {len(events) + 1}" in first
    assert "not in the chain" in first


def test_a_rewritten_chain_passes_alone_but_fails_against_heads_kept_outside(
    chained: Chained, tmp_path: Path
) -> None:
    heads = chained.verify("--print-heads")
    assert heads.returncode == 0
    exported = tmp_path / "heads.txt"
    exported.write_text(heads.stdout)
    # the attacker changes the first event and recomputes every link after it
    exam = exam_id(chained.accession)
    original = chained.stored_state(exam, 1)
    assert b"CT chest" in original
    chained.execute(
        "UPDATE {table} SET state = ? WHERE originator_id = ? AND originator_version = ?",
        (original.replace(b"CT chest", b"CT knee "), chained.key(exam), 1),
    )
    with chained.db.transaction() as cur:
        cur.execute(
            "DROP TRIGGER IF EXISTS audit_chain_no_update"
            + (" ON audit_chain" if chained.settings.uses_postgres else "")
        )
        links = cur.execute(
            "SELECT * FROM audit_chain WHERE accession = ? ORDER BY seq", (chained.accession,)
        ).fetchall()
        prev = "0" * 64
        for link in links:
            aggregate = uuid.UUID(link["aggregate_id"])
            row = chained.store.recorder.select_events(
                aggregate, gt=link["version"] - 1, lte=link["version"]
            )[0]
            digest = link_hash(prev, row)
            cur.execute(
                "UPDATE audit_chain SET prev_hash = ?, hash = ? WHERE accession = ? AND seq = ?",
                (prev, digest, chained.accession, link["seq"]),
            )
            prev = digest

    assert chained.verify().returncode == 0  # the documented limit
    result = chained.verify("--against", str(exported))
    assert result.returncode == 1, result.stdout
    assert "head differs from the exported one" in result.stdout.splitlines()[0]
