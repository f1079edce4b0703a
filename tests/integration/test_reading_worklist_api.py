"""The reading reads through the real app (create_app on SQLite and PostgreSQL): worklist, report
as JSON and as plain text, templates from reporting.yaml, 404s and refused parameters; and a
property test of the worklist filters against a plain Python reading of the same rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from adapters.event_store import EventStore, open_event_store
from adapters.settings import Settings
from adapters.sql import Database
from api.app import create_app
from api.reading import prefers_text, reading_router
from api.worker_process import projection_runners
from projections.reading_worklist import PRIORITY_RANKS, READ_STATES, ReadingWorklistProjection
from projections.runner import ProjectionRunner
from tests.conftest import authorised_client
from tests.integration.reading_builders import at
from tests.integration.test_reading_worklist import RULES, department_day

REPORTING_YAML = """\
claim_minutes: 30
templates:
  CTCHEST:
    indication: Cough.
    technique: Helical CT of the chest.
"""


@pytest.fixture
def app_settings(settings: Settings, tmp_path: Path) -> Settings:
    config = tmp_path / "config"
    config.mkdir()
    (config / "reporting.yaml").write_text(REPORTING_YAML)
    return settings.model_copy(update={"hl7_config_dir": config})


@pytest.fixture
def built(app_settings: Settings, store: EventStore, uid: str) -> Iterator[tuple[TestClient, Any]]:
    """The morning of test_reading_worklist applied and projected; the app over it."""
    department = department_day(store, uid)
    db = Database.for_file(app_settings, app_settings.projections_sqlite_path)
    runner = ProjectionRunner(store, db, ReadingWorklistProjection(RULES))
    runner.create_schema()
    runner.catch_up()
    try:
        yield authorised_client(create_app(app_settings)), department
    finally:
        db.close()


def test_the_app_serves_the_worklist_in_reading_order(built: tuple[TestClient, Any], uid: str) -> None:
    client, department = built
    response = client.get("/api/reading/worklist", params={"service": department.service})
    assert response.status_code == 200
    body = response.json()
    assert [i["accession"] for i in body["items"]] == [f"B{uid}", f"E{uid}", f"D{uid}", f"C{uid}"]
    assert body["count"] == 4
    first = body["items"][0]
    assert set(first) >= {
        "accession",
        "priority",
        "state",
        "report_status",
        "patient",
        "procedure",
        "modality",
        "body_part",
        "referring_physician",
        "referring_service",
        "completed_at",
        "claimed_by",
        "claim_expires_at",
        "turnaround_due_at",
        "turnaround_breached",
        "critical",
        "priors",
    }
    assert first["turnaround_breached"] is True
    assert set(first["priors"][0]) >= {
        "accession",
        "procedure",
        "modality",
        "completed_at",
        "state",
        "report_status",
        "impression",
    }


def test_the_app_serves_the_report_as_json_and_as_text(built: tuple[TestClient, Any], uid: str) -> None:
    client, _ = built
    report = client.get(f"/api/exams/A{uid}/report")
    assert report.status_code == 200 and report.headers["content-type"].startswith("application/json")
    assert [r["kind"] for r in report.json()["revisions"]] == ["final", "addendum"]
    # the template comes from reporting.yaml in the configuration folder
    assert report.json()["template"]["technique"] == "Helical CT of the chest."

    for text in (
        client.get(f"/api/exams/A{uid}/report", params={"format": "text"}),
        client.get(f"/api/exams/A{uid}/report", headers={"Accept": "text/plain"}),
        client.get(f"/api/exams/A{uid}/report", headers={"Accept": "application/json;q=0.5, text/plain"}),
    ):
        assert text.status_code == 200
        assert text.headers["content-type"].startswith("text/plain")
        assert text.text.index("FINAL REPORT") < text.text.index("ADDENDUM")
    json_wins = client.get(
        f"/api/exams/A{uid}/report", headers={"Accept": "text/plain;q=0.4, application/json"}
    )
    assert json_wins.headers["content-type"].startswith("application/json")
    assert (
        client.get(
            f"/api/exams/A{uid}/report", params={"format": "json"}, headers={"Accept": "text/plain"}
        ).json()["status"]
        == "final"
    )


def test_404_for_an_unknown_exam_and_for_the_text_of_an_unreported_one(
    built: tuple[TestClient, Any], uid: str
) -> None:
    client, _ = built
    unknown = client.get(f"/api/exams/NOPE{uid}/report")
    assert unknown.status_code == 404 and f"NOPE{uid}" in unknown.json()["detail"]
    assert client.get(f"/api/exams/NOPE{uid}/report", params={"format": "text"}).status_code == 404
    # B awaits its report: the JSON says so (the editor needs the template), the text is not there
    awaiting = client.get(f"/api/exams/B{uid}/report")
    assert awaiting.status_code == 200
    assert (awaiting.json()["status"], awaiting.json()["revisions"]) == ("", [])
    unreported = client.get(f"/api/exams/B{uid}/report", headers={"Accept": "text/plain"})
    assert unreported.status_code == 404 and "no report" in unreported.json()["detail"]


def test_templates_come_from_the_configuration(built: tuple[TestClient, Any]) -> None:
    client, _ = built
    configured = client.get("/api/reporting/templates/CTCHEST").json()
    assert configured == {
        "procedure_code": "CTCHEST",
        "configured": True,
        "sections": {
            "indication": "Cough.",
            "technique": "Helical CT of the chest.",
            "comparison": "",
            "findings": "",
            "impression": "",
        },
    }
    unknown = client.get("/api/reporting/templates/NOSUCH").json()
    assert unknown["configured"] is False and set(unknown["sections"].values()) == {""}


@pytest.mark.parametrize(
    "params",
    [
        {"status": "reported"},
        {"limit": "0"},
        {"limit": "501"},
        {"modality": "C" * 65},
        {"modality": "CT\x00"},
        {"radiologist": "dr\nhouse"},
    ],
)
def test_malformed_queries_are_refused_with_422(
    built: tuple[TestClient, Any], params: dict[str, str]
) -> None:
    client, _ = built
    assert client.get("/api/reading/worklist", params=params).status_code == 422


def test_the_worker_runs_the_reading_projection(app_settings: Settings, store: EventStore) -> None:
    runners = projection_runners(app_settings)
    try:
        names = [r.projection.name for r in runners]
        assert "reading_worklist" in names
        reading = runners[names.index("reading_worklist")].projection
        assert isinstance(reading, ReadingWorklistProjection)
        assert reading.rules.claim_minutes == 30.0
    finally:
        for runner in runners:
            runner.db.close()


@pytest.mark.parametrize(
    ("accept", "text"),
    [
        ("", False),
        ("*/*", False),
        ("text/plain", True),
        ("text/html, text/plain;q=0.9", True),
        ("text/plain;q=0.5, */*", False),
        ("text/plain;q=oops", False),
        ("TEXT/PLAIN", True),
    ],
)
def test_accept_header_negotiation(accept: str, text: bool) -> None:
    assert prefers_text(accept) is text


# --- the filters against a plain reading of the rows ------------------------------------------

NOW = at("11:15")  # dr.grey's claim on C is live, dr.house's on E too


def expected(rows: list[dict[str, Any]], params: dict[str, Any]) -> list[str] | None:
    """What the worklist should answer, computed in Python; None when it should refuse (422)."""
    filters = {k: params.get(k) for k in ("modality", "body_part", "service", "radiologist")}
    if any(v is not None and len(v) > 64 for v in filters.values()):
        return None
    cleaned = {k: (v or "").strip() for k, v in filters.items()}
    if any(ord(ch) < 32 or ord(ch) == 127 for v in cleaned.values() for ch in v):
        return None
    limit = params.get("limit", 100)
    if not 1 <= limit <= 500:
        return None
    status = params.get("status", "awaiting")
    chosen = [
        r
        for r in rows
        if (
            (r["state"] == "completed" and r["report_status"] != "final")
            if status == "awaiting"
            else r["state"] in READ_STATES
        )
        and (not cleaned["modality"] or r["modality"] == cleaned["modality"].upper())
        and (not cleaned["body_part"] or r["body_part"] == cleaned["body_part"].upper())
        and (not cleaned["service"] or r["referring_service"] == cleaned["service"])
        and (
            not cleaned["radiologist"]
            or (r["claimed_by"] == cleaned["radiologist"] and r["claim_expires_at"] > NOW)
        )
    ]
    chosen.sort(key=lambda r: (PRIORITY_RANKS.get(r["priority"], 2), r["completed_at"], r["accession"]))
    return [r["accession"] for r in chosen[:limit]]


def test_any_filter_answers_what_a_plain_reading_of_the_rows_says(tmp_path: Path, uid: str) -> None:
    settings = Settings(data_dir=tmp_path, database_url="")  # a database of this test's rows only
    store = open_event_store(settings)
    department = department_day(store, uid)
    db = Database.for_file(settings, settings.projections_sqlite_path)
    runner = ProjectionRunner(store, db, ReadingWorklistProjection(RULES))
    runner.create_schema()
    runner.catch_up()
    rows = db.query("SELECT * FROM reading_exams")
    app = FastAPI()
    app.include_router(reading_router(db, lambda: RULES, clock=lambda: datetime.fromisoformat(NOW)))
    client = authorised_client(app, "dr.tester", ("radiologist",))
    known = ["CT", "ct", " MR ", "CHEST", "chest", "ABDOMEN", department.service, "dr.grey", "dr.house", ""]
    tricky = ["'; DROP TABLE reading_exams; --", "%", "_", "?", "{}", "\x00", " \t", "C" * 65]
    value = st.one_of(st.sampled_from(known), st.sampled_from(tricky), st.text(max_size=70))
    # mostly one or two filters at a time, so that matching values meet often enough
    filters = st.dictionaries(
        st.sampled_from(["modality", "body_part", "service", "radiologist"]), value, max_size=3
    )

    @hypothesis_settings(max_examples=300, deadline=None, derandomize=True)
    @given(
        chosen=filters,
        status=st.sampled_from(["awaiting", "all"]),
        limit=st.one_of(st.just(100), st.integers(-1, 502)),
    )
    def check(chosen: dict[str, str], status: str, limit: int) -> None:
        params: dict[str, Any] = {**chosen, "status": status, "limit": limit}
        sent = dict(params)
        response = client.get("/api/reading/worklist", params=sent)
        want = expected(rows, params)
        if want is None:
            assert response.status_code == 422, (sent, response.text)
            return
        assert response.status_code == 200, (sent, response.text)
        assert [i["accession"] for i in response.json()["items"]] == want, sent

    try:
        check()
        assert db.query("SELECT COUNT(*) AS n FROM reading_exams")[0]["n"] == len(rows)
    finally:
        db.close()
        store.close()
