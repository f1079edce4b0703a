"""Audit completeness: each kind of read (and change) of patient data over HTTP leaves exactly one
access-audit row saying who, when, what (route, accession, patient) and from where, with the
answer's status; a refused one too. The rows hold identifiers, never the patient's name."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from adapters.event_store import EventStore
from adapters.settings import Settings
from adapters.sql import Database
from api.app import create_app
from tests.conftest import authorise

NAME = "WHISTLEMORE^PERPETUA"  # must never reach the audit


@pytest.fixture
def app(settings: Settings, store: EventStore) -> Any:
    """(`store`: on PostgreSQL the worker creates the event tables, not the API)"""
    return create_app(settings)


@pytest.fixture
def sqlite_app(tmp_path: Path) -> Any:
    """The many small cases run on SQLite only (an app per case; PostgreSQL has them below)."""
    return create_app(Settings(data_dir=tmp_path, database_url=""))


@pytest.fixture
def exam(app: Any, settings: Settings, uid: str) -> Iterator[dict[str, str]]:
    """(removed after: on PostgreSQL the projection is shared with tests that compare it with a
    rebuild from the event store, where this row has no event)"""
    added = add_exam(settings, uid)
    yield added
    db = Database.for_file(settings, settings.projections_sqlite_path)
    try:
        db.execute("DELETE FROM worklist WHERE accession = ?", (added["accession"],))
    finally:
        db.close()


def add_exam(settings: Settings, uid: str) -> dict[str, str]:
    """One exam in the worklist projection, as the worker would have written it."""
    db = Database.for_file(settings, settings.projections_sqlite_path)
    row = {column: "" for column in _columns(db)}
    accession, mrn = f"AA{uid}", f"M{uid}"
    row.update(
        accession=accession,
        exam_id=str(uuid.uuid4()),
        patient_id=mrn,
        patient_name=NAME,
        state="ordered",
        priority="ROUTINE",
        ordered_at="2026-12-05T08:00:00+00:00",
        updated_at="2026-12-05T08:00:00+00:00",
    )
    row = {k: v for k, v in row.items() if k not in ("scheduled_at", "scheduled_date", "scheduled_time")}
    try:
        db.execute(
            f"INSERT INTO worklist ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
            list(row.values()),
        )
    finally:
        db.close()
    return {"accession": accession, "mrn": mrn}


def _columns(db: Database) -> list[str]:
    if db.dialect == "sqlite":
        return [r["name"] for r in db.query("PRAGMA table_info(worklist)")]
    return [
        r["column_name"]
        for r in db.query("SELECT column_name FROM information_schema.columns WHERE table_name = 'worklist'")
    ]


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def new_rows(app: Any, after: int, user: str) -> list[dict[str, Any]]:
    return [
        r for r in app.state.gate.audit.search(after_id=after, user=user, limit=100) if r["kind"] != "login"
    ]


def last_id(app: Any) -> int:
    rows = app.state.gate.audit.db.query("SELECT MAX(id) AS n FROM access_audit")
    return int(rows[0]["n"] or 0)


READS = [
    # (method, path template, kind, roles, expects the accession and the patient on the row)
    ("GET", "/api/exams?patient_id={mrn}", "exam", ["scheduler"], False),
    ("GET", "/api/exams/{accession}", "exam", ["scheduler"], True),
    ("GET", "/api/exams/{accession}/history", "exam", ["auditor"], True),
    ("GET", "/api/exams/{accession}/report", "report", ["radiologist"], True),
    ("GET", "/api/exams/{accession}/deliveries", "messages", ["operations"], True),
    ("GET", "/api/reading/worklist", "worklist", ["radiologist"], False),
    ("GET", "/api/reading/critical", "report", ["radiologist"], False),
    ("GET", "/api/studies?patient_id={mrn}", "images", ["technologist"], False),
    ("GET", "/api/hl7/messages?accession={accession}", "messages", ["interface_analyst"], False),
    ("GET", f"/api/events/{uuid.UUID(int=1)}", "patient", ["interface_analyst"], False),
    ("GET", "/ui/reading", "worklist", ["radiologist"], False),
    ("GET", "/ui/exams/{accession}", "exam", ["radiologist"], True),
    ("GET", "/ui/exams/{accession}/timeline", "exam", ["radiologist"], True),
    ("POST", "/api/reconciliation/mpps/1.2.3/link", "exam", ["technologist"], False),
]


@pytest.mark.parametrize(("method", "template", "kind", "roles", "about_the_exam"), READS)
def test_each_kind_of_read_leaves_exactly_one_record(
    sqlite_app: Any,
    tmp_path: Path,
    uid: str,
    method: str,
    template: str,
    kind: str,
    roles: list[str],
    about_the_exam: bool,
) -> None:
    app, exam = sqlite_app, add_exam(Settings(data_dir=tmp_path, database_url=""), uid)
    user = f"reader.{uuid.uuid4().hex[:6]}"
    before = last_id(app)
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.request(
            method,
            template.format(**exam),
            headers=authorise(app, user, roles),
            **({"json": {}} if method == "POST" else {}),
        )
    assert answer.status_code not in (401, 403, 500), answer.text
    (row,) = new_rows(app, before, user)
    assert (row["kind"], row["method"], row["status"], row["username"]) == (
        kind,
        method,
        answer.status_code,
        user,
    )
    assert row["roles"] == ",".join(roles) and row["client"].startswith("testclient:")
    assert row["route"].startswith("/") and "{" not in row["path"]
    if about_the_exam:
        assert (row["accession"], row["patient_key"]) == (exam["accession"], exam["mrn"])
        assert "{accession}" in row["route"]
    elif "patient_id=" in template:
        assert row["patient_key"] == exam["mrn"]
    assert "WHISTLEMORE" not in str(row) and "PERPETUA" not in str(row)


def test_a_refused_read_is_recorded_once_with_its_status(
    app: Any, client: TestClient, exam: dict[str, str]
) -> None:
    user = f"billing.{uuid.uuid4().hex[:6]}"
    before = last_id(app)
    answer = client.get(f"/api/exams/{exam['accession']}", headers=authorise(app, user, ["billing"]))
    assert answer.status_code == 403
    (row,) = new_rows(app, before, user)
    assert (row["status"], row["detail"], row["accession"]) == (403, "refused: role", exam["accession"])

    before = last_id(app)
    assert client.get(f"/api/exams/{exam['accession']}").status_code == 401
    (anonymous,) = new_rows(app, before, "(anonymous)")
    assert anonymous["status"] == 401 and anonymous["detail"].startswith("refused: authentication required")


def test_reads_without_patient_data_leave_no_record(app: Any, client: TestClient) -> None:
    user = f"reader.{uuid.uuid4().hex[:6]}"
    before = last_id(app)
    assert (
        client.get(
            "/api/reporting/templates/CTHEAD", headers=authorise(app, user, ["radiologist"])
        ).status_code
        == 200
    )
    assert client.get("/api/auth/me", headers=authorise(app, user, ["radiologist"])).status_code == 200
    assert new_rows(app, before, user) == []


def test_the_audit_is_searchable_by_patient_user_exam_and_time(
    app: Any, client: TestClient, exam: dict[str, str]
) -> None:
    user = f"reader.{uuid.uuid4().hex[:6]}"
    for path in (f"/api/exams/{exam['accession']}", f"/api/exams/{exam['accession']}/report"):
        client.get(path, headers=authorise(app, user, ["radiologist"]))
    audit = app.state.gate.audit
    mine = audit.search(user=user)
    assert [r["kind"] for r in mine] == ["exam", "report"]
    assert [r["id"] for r in audit.search(patient=exam["mrn"], user=user)] == [r["id"] for r in mine]
    assert [r["id"] for r in audit.search(accession=exam["accession"], user=user)] == [r["id"] for r in mine]
    assert audit.search(user=user, since=mine[1]["at"]) == [mine[1]]
    assert audit.search(user=user, until=mine[1]["at"]) == [mine[0]]
    assert audit.search(user=user, after_id=mine[0]["id"]) == [mine[1]]
