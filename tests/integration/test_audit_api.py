"""The auditor's exam history over the app (in process): the answer stands when Temporal does
not answer (it says so), only auditors get it, and a tampered stored event shows as a broken
chain on the JSON and on the printable page."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from adapters.event_store import open_event_store
from adapters.settings import Settings
from adapters.sql import Database
from api.app import create_app
from api.auth import signing_key
from api.authz import Gate
from domain.exam import exam_id
from projections.audit_chain import AuditChainProjection
from projections.runner import ProjectionRunner
from projections.worklist import WorklistProjection
from tests.conftest import free_port
from tests.integration.reading_builders import Department


class Audited:
    def __init__(self, tmp_path: Path) -> None:
        # a port nobody listens on: Temporal is down
        self.settings = Settings(data_dir=tmp_path, temporal_address=f"127.0.0.1:{free_port()}")
        self.store = open_event_store(self.settings)
        department = Department(self.store, "API1")
        self.accession = department.order("AUD", department.patient("APIPAT"))
        department.perform(self.accession, completed="09:30", started="09:00")
        department.claim(self.accession, "dr.house", "10:00")
        department.issue(self.accession, "final", "dr.house", "10:05", findings="No bleed.")
        self.db = Database.for_file(self.settings, self.settings.projections_sqlite_path)
        for projection in (WorklistProjection(), AuditChainProjection(self.store)):
            runner = ProjectionRunner(self.store, self.db, projection)  # type: ignore[arg-type]
            runner.create_schema()
            runner.catch_up()
        self.client = TestClient(create_app(self.settings))

    def headers(self, username: str, *roles: str) -> dict[str, str]:
        token = Gate(secret=signing_key(self.settings)).issue(username, roles)
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def audited(tmp_path: Path) -> Iterator[Audited]:
    setup = Audited(tmp_path)
    try:
        yield setup
    finally:
        setup.client.close()
        setup.db.close()
        setup.store.close()


def test_the_history_says_temporal_is_unreachable_instead_of_failing(audited: Audited) -> None:
    answer = audited.client.get(
        f"/api/audit/exams/{audited.accession}", headers=audited.headers("ann", "auditor")
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["workflow"]["available"] is False and body["workflow"]["error"]
    assert [e["type"] for e in body["events"]][:3] == ["ExamOrdered", "ExamStarted", "ExamCompleted"]
    assert body["chain"]["intact"] is True and body["chain"]["links"] == len(body["events"])


def test_only_auditors_read_the_history(audited: Audited) -> None:
    path = f"/api/audit/exams/{audited.accession}"
    assert audited.client.get(path).status_code == 401
    assert audited.client.get(path, headers=audited.headers("dr.house", "radiologist")).status_code == 403
    assert audited.client.get(path, headers=audited.headers("root", "admin")).status_code == 200
    unknown = audited.client.get("/api/audit/exams/NOSUCH", headers=audited.headers("ann", "auditor"))
    assert unknown.status_code == 404


def test_a_tampered_event_shows_as_a_broken_chain_on_the_history_and_its_page(audited: Audited) -> None:
    exam = exam_id(audited.accession)
    with sqlite3.connect(audited.settings.events_sqlite_path) as conn:
        conn.execute(
            "UPDATE stored_events SET state = CAST(REPLACE(CAST(state AS TEXT), 'CT01', 'CT02') AS BLOB) "
            "WHERE originator_id = ? AND originator_version = 3",
            (exam.hex,),
        )
    auditor = audited.headers("ann", "auditor")
    chain = audited.client.get(f"/api/audit/exams/{audited.accession}", headers=auditor).json()["chain"]
    assert chain["intact"] is False
    assert chain["broken"]["aggregate_id"] == str(exam) and chain["broken"]["version"] == 3
    assert chain["broken"]["problem"] == "altered"
    page = audited.client.get(f"/ui/audit/exams/{audited.accession}", headers=auditor)
    assert page.status_code == 200 and "Chain BROKEN" in page.text and "ExamCompleted" in page.text
