"""The reading worklist projection on SQLite and PostgreSQL, fed by orders, procedures, images,
merges and radiologists' actions applied to the real aggregates: the queue's order and filters,
priors across a merge, claims, turnaround breaches, critical results, the report read model,
and a rebuild that reproduces the live rows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from adapters.event_store import EventStore
from adapters.reporting_config import ReportingRules
from adapters.settings import Settings
from adapters.sql import Database
from api.reading import reading_router
from domain.commands import StoreInstances
from domain.exam import study_instance_uid
from projections.pacs_index import PacsIndexProjection
from projections.reading_worklist import ReadingWorklistProjection, impression_of
from projections.runner import ProjectionRunner
from tests.conftest import authorised_client
from tests.integration.reading_builders import Department, at

RULES = ReportingRules(
    turnaround_minutes={"STAT": 60.0, "ASAP": 240.0, "ROUTINE": 1440.0},
    templates={"CTCHEST": {"technique": "Helical CT of the chest.", "comparison": "None."}},
)


@pytest.fixture
def projection_db(settings: Settings) -> Iterator[Database]:
    db = Database.for_file(settings, settings.projections_sqlite_path)
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def runner(store: EventStore, projection_db: Database) -> ProjectionRunner:
    runner = ProjectionRunner(store, projection_db, ReadingWorklistProjection(RULES))
    runner.create_schema()
    return runner


def client_at(db: Database, clock: str) -> TestClient:
    """The reading API over the projection, with the clock stopped at `clock` of the test day."""
    app = FastAPI()
    app.include_router(reading_router(db, lambda: RULES, clock=lambda: datetime.fromisoformat(at(clock))))
    return authorised_client(app, "dr.tester", ("radiologist",))


def rows(db: Database, uid: str) -> dict[str, dict[str, Any]]:
    found = db.query("SELECT * FROM reading_exams WHERE accession LIKE ? ORDER BY accession", (f"%{uid}",))
    return {row["accession"].removesuffix(uid): row for row in found}


def department_day(store: EventStore, uid: str) -> Department:
    """Two patients' exams through a morning. Accessions (all suffixed with uid):

    A  ann, CT chest ROUTINE, completed 08:00, signed final (the prior)
    B  ann, CT chest STAT,    completed 10:00, awaiting, turnaround breached at 11:05
    C  ann, MR head ROUTINE,  completed 09:00, awaiting, claimed by dr.grey
    D  bob, CT abdo ROUTINE,  completed 07:00, awaiting, ABDOMEN images
    E  bob, CT chest ASAP,    completed 11:00, preliminary with a critical result
    F  ann, ordered only; G ann, discontinued: neither is read
    H  cy,  XR chest,         completed 06:00, external report, then merged into ann
    """
    d = Department(store, uid, RULES)
    ann, bob, cy = d.patient("ANN"), d.patient("BOB"), d.patient("CY")
    a = d.order("A", ann)
    b = d.order("B", ann, priority="STAT")
    c = d.order("C", ann, modality="MR", code="MRHEAD", text="MR head")
    dd = d.order("D", bob, code="CTABD", text="CT abdomen")
    e = d.order("E", bob, priority="ASAP")
    d.order("F", ann)
    g = d.order("G", ann)
    h = d.order("H", cy, modality="CR", code="XRCHEST", text="XR chest")
    d.modify(c, "07:10", priority="ROUTINE", procedure_text="MR head without contrast")
    d.perform(h, "06:00")
    d.external_report(
        h, "FINDINGS:\nHealed rib fracture.\n\nIMPRESSION:\nOld fracture, no acute change.", "06:30"
    )
    d.perform(dd, "07:00")
    d.perform(a, "08:00")
    d.images(a, "chest")
    d.perform(c, "09:00")
    d.perform(b, "10:00")
    d.images(b, "CHEST")
    d.images(dd, "ABDOMEN")
    d.discontinue(g, "10:30")
    d.perform(e, "11:00")
    d.claim(a, "dr.house", "08:30")
    d.draft(a, "dr.house", "08:40", findings="Clear lungs.")
    d.issue(a, "final", "dr.house", "08:50", findings="Clear lungs.", impression="No acute finding.")
    d.issue(a, "addendum", "dr.house", "09:10", findings="Compared with the outside film: unchanged.")
    d.claim(c, "dr.grey", "10:50")
    d.check_turnaround(b, "11:05")
    d.claim(e, "dr.house", "11:10")
    d.issue(
        e, "preliminary", "dr.house", "11:20", critical=True, findings="Free air.", impression="Perforation."
    )
    d.check_critical(e, 0, "11:36")  # the referring physician did not answer in 15 minutes
    d.acknowledge(e, "ON-CALL", "11:40")
    d.merge(h, ann, cy, "11:50")
    return d


def test_the_queue_is_stat_first_then_oldest_completed_with_its_priors(
    store: EventStore, runner: ProjectionRunner, uid: str
) -> None:
    d = department_day(store, uid)
    runner.catch_up()
    api = client_at(runner.db, "11:55")

    items = api.get("/api/reading/worklist", params={"service": d.service}).json()["items"]

    assert [i["accession"].removesuffix(uid) for i in items] == ["B", "E", "D", "C"]
    b = items[0]
    assert (b["priority"], b["state"], b["report_status"], b["modality"], b["body_part"]) == (
        "STAT",
        "completed",
        "",
        "CT",
        "CHEST",
    )
    assert b["patient"] == {"id": f"ANN{uid}", "issuer": "HOSP", "name": "ANN^PAT"}
    assert b["procedure"] == {"code": "CTCHEST", "text": "CT chest"}
    assert (b["referring_physician"], b["referring_service"]) == ("WELBY^MARCUS", d.service)
    assert b["completed_at"] == at("10:00")
    # ann's earlier exams, newest first, including the one merged in from cy with its outside report
    assert [(p["accession"].removesuffix(uid), p["report_status"]) for p in b["priors"]] == [
        ("C", ""),
        ("A", "final"),
        ("H", "final"),
    ]
    prior_a, prior_h = b["priors"][1], b["priors"][2]
    assert (prior_a["impression"], prior_a["state"], prior_a["modality"]) == (
        "No acute finding.",
        "reported",
        "CT",
    )
    assert prior_a["procedure"] == {"code": "CTCHEST", "text": "CT chest"}
    assert prior_h["impression"] == "Old fracture, no acute change."
    c = items[3]
    assert c["procedure"] == {"code": "MRHEAD", "text": "MR head without contrast"}
    assert [p["accession"].removesuffix(uid) for p in c["priors"]] == ["A", "H"]
    assert [p["accession"].removesuffix(uid) for p in items[2]["priors"]] == []  # bob's first


def test_status_all_lists_every_performed_exam_in_the_same_order(
    store: EventStore, runner: ProjectionRunner, uid: str
) -> None:
    d = department_day(store, uid)
    runner.catch_up()
    api = client_at(runner.db, "11:55")

    items = api.get("/api/reading/worklist", params={"service": d.service, "status": "all"}).json()["items"]

    # F is only ordered and G discontinued: nobody reads them
    assert [i["accession"].removesuffix(uid) for i in items] == ["B", "E", "H", "D", "A", "C"]
    assert {i["accession"].removesuffix(uid): i["state"] for i in items}["A"] == "reported"


def test_filters_by_modality_body_part_service_and_claiming_radiologist(
    store: EventStore, runner: ProjectionRunner, uid: str
) -> None:
    d = department_day(store, uid)
    runner.catch_up()

    def queue(clock: str = "11:55", **params: str) -> list[str]:
        response = client_at(runner.db, clock).get(
            "/api/reading/worklist", params={"service": d.service, **params}
        )
        assert response.status_code == 200, response.text
        return [i["accession"].removesuffix(uid) for i in response.json()["items"]]

    assert queue(modality="MR") == ["C"]
    assert queue(modality="ct") == ["B", "E", "D"]  # DICOM codes are upper case; the filter is not fussy
    assert queue(body_part="chest") == ["B"]
    assert queue(body_part="ABDOMEN") == ["D"]
    assert queue(body_part="ABDOMEN", modality="MR") == []
    assert queue("11:15", radiologist="dr.grey") == ["C"]
    assert queue("11:21", radiologist="dr.grey") == []  # claimed at 10:50 for 30 minutes: lapsed
    # a preliminary report keeps the claim (until 11:40); signing A's final ended that one
    assert queue("11:30", radiologist="dr.house", status="all") == ["E"]
    assert queue("11:41", radiologist="dr.house", status="all") == []
    assert queue(service="NOSUCH") == []
    assert queue(limit="2") == ["B", "E"]


def test_claims_turnaround_and_critical_results_show_on_the_rows(
    store: EventStore, runner: ProjectionRunner, uid: str
) -> None:
    department_day(store, uid)
    runner.catch_up()
    exams = rows(runner.db, uid)

    b, c, e = exams["B"], exams["C"], exams["E"]
    assert (b["turnaround_breached"], b["turnaround_due_at"]) == (1, at("11:00"))
    assert (c["turnaround_breached"], c["turnaround_due_at"]) == (0, "2024-03-16T09:00:00+00:00")
    assert (e["turnaround_breached"], e["turnaround_due_at"]) == (0, at("15:00"))
    assert (c["claimed_by"], c["claim_expires_at"]) == ("dr.grey", at("11:20"))
    assert (exams["A"]["claimed_by"], exams["A"]["claim_expires_at"]) == ("", "")
    assert (e["critical"], e["critical_level"], e["critical_due_at"]) == ("acknowledged", 1, "")
    detail = json.loads(e["critical_detail"])
    assert detail["acknowledged_by"] == "ON-CALL"
    assert [step["level"] for step in detail["escalations"]] == [1]
    assert [contact["role"] for contact in detail["contacts"]] == [
        "referring_physician",
        "second_contact",
        "department",
    ]
    assert (e["report_status"], e["impression"], e["state"]) == ("preliminary", "Perforation.", "completed")
    assert (exams["F"]["state"], exams["G"]["state"], exams["F"]["completed_at"]) == (
        "ordered",
        "discontinued",
        None,
    )
    assert exams["H"]["patient_key"] == f"HOSP|ANN{uid}"


def test_a_claim_released_and_a_critical_chain_that_nobody_answers(
    store: EventStore, runner: ProjectionRunner, uid: str
) -> None:
    d = Department(store, uid, RULES)
    x = d.order("X", d.patient("XAVIER"), priority="STAT")
    d.perform(x, "09:00")
    d.claim(x, "dr.a", "09:05")
    d.release(x, "dr.a", "09:06")
    d.claim(x, "dr.b", "09:07")
    d.issue(x, "final", "dr.b", "09:20", critical=True, impression="Dissection.")
    runner.catch_up()
    awaiting = rows(runner.db, uid)["X"]
    assert (awaiting["critical"], awaiting["critical_level"], awaiting["critical_due_at"]) == (
        "awaiting",
        0,
        at("09:35"),
    )
    assert (awaiting["state"], awaiting["report_status"], awaiting["claimed_by"]) == ("reported", "final", "")

    for level, clock in ((0, "09:36"), (1, "09:52"), (2, "10:08")):
        d.check_critical(x, level, clock)
    runner.catch_up()

    exhausted = rows(runner.db, uid)["X"]
    assert (exhausted["critical"], exhausted["critical_level"], exhausted["critical_due_at"]) == (
        "awaiting",
        2,
        "",
    )
    assert json.loads(exhausted["critical_detail"])["exhausted"] is True


def test_the_report_read_model_holds_the_draft_then_every_revision(
    store: EventStore, runner: ProjectionRunner, uid: str
) -> None:
    d = department_day(store, uid)
    c = f"C{uid}"
    d.draft(c, "dr.grey", "11:00", findings="Small old infarct.", impression="No acute")
    runner.catch_up()
    api = client_at(runner.db, "11:01")

    drafted = api.get(f"/api/exams/{c}/report").json()
    assert (drafted["status"], drafted["claimed_by"], drafted["claim_active"]) == ("draft", "dr.grey", True)
    assert drafted["draft"]["author"] == "dr.grey"
    assert drafted["draft"]["sections"] == {"findings": "Small old infarct.", "impression": "No acute"}
    assert drafted["revisions"] == [] and drafted["critical"] is None
    assert list(drafted["template"]) == ["indication", "technique", "comparison", "findings", "impression"]
    assert [p["accession"] for p in drafted["priors"]] == [f"A{uid}", f"H{uid}"]
    assert api.get(f"/api/exams/{c}/report", params={"format": "text"}).status_code == 404

    report = api.get(f"/api/exams/A{uid}/report").json()
    assert (report["status"], report["exam_state"], report["claimed_by"], report["draft"]) == (
        "final",
        "reported",
        "",
        None,
    )
    assert [(r["revision"], r["kind"], r["result_status"], r["author"]) for r in report["revisions"]] == [
        (1, "final", "F", "dr.house"),
        (2, "addendum", "C", "dr.house"),
    ]
    final = report["revisions"][0]
    assert final["sections"] == {"findings": "Clear lungs.", "impression": "No acute finding."}
    assert final["text"] == "FINDINGS:\nClear lungs.\n\nIMPRESSION:\nNo acute finding."
    assert final["signed_at"] == at("08:50")
    assert (final["exam"]["accession"], final["exam"]["patient"]["id"]) == (f"A{uid}", f"ANN{uid}")
    assert report["impression"] == "No acute finding."  # the addendum added no impression
    assert report["template"]["technique"] == "Helical CT of the chest."

    text = api.get(f"/api/exams/A{uid}/report", params={"format": "text"})
    assert text.headers["content-type"].startswith("text/plain")
    body = text.text
    assert (
        body.index("FINAL REPORT (revision 1)")
        < body.index("No acute finding.")
        < body.index("ADDENDUM (revision 2)")
    )
    assert "unchanged." in body and f"Accession: A{uid}" in body

    critical = api.get(f"/api/exams/E{uid}/report").json()["critical"]
    assert (critical["state"], critical["level"], critical["acknowledged_by"]) == (
        "acknowledged",
        1,
        "ON-CALL",
    )
    outside = api.get(f"/api/exams/H{uid}/report", headers={"Accept": "text/plain"})
    assert "FINAL REPORT (external) by OLD^READER" in outside.text and "Old fracture" in outside.text
    assert api.get(f"/api/exams/NOPE{uid}/report").status_code == 404


def test_a_correction_replaces_the_impression_and_follows_the_final_in_the_text(
    store: EventStore, runner: ProjectionRunner, uid: str
) -> None:
    d = Department(store, uid, RULES)
    x = d.order("X", d.patient("XAVIER"))
    d.perform(x, "09:00")
    d.issue(x, "preliminary", "dr.a", "09:10", findings="Nodule.", impression="Probably benign.")
    d.issue(x, "final", "dr.a", "09:20", findings="Nodule 4 mm.", impression="Benign.")
    d.issue(x, "correction", "dr.a", "09:30", findings="Nodule 6 mm.", impression="Follow up in 6 months.")
    runner.catch_up()

    row = rows(runner.db, uid)["X"]
    assert (row["report_status"], row["impression"], row["state"]) == (
        "final",
        "Follow up in 6 months.",
        "reported",
    )
    body = client_at(runner.db, "10:00").get(f"/api/exams/{x}/report", params={"format": "text"}).text
    assert "Probably benign." not in body  # the preliminary is superseded by the final
    assert (
        body.index("Benign.") < body.index("CORRECTION (revision 3)") < body.index("Follow up in 6 months.")
    )


def test_body_part_from_unmatched_images_of_the_ordered_study_and_names_follow_the_patient(
    store: EventStore, runner: ProjectionRunner, uid: str
) -> None:
    d = Department(store, uid, RULES)
    zed = d.patient("ZED")
    x = d.order("X", zed)
    y = d.order("Y", zed)
    d.perform(x, "09:00")
    d.perform(y, "09:30")
    d.images(x, "", when="09:05")  # a series without BodyPartExamined says nothing
    d.images(y, "knee", when="09:35", study_uid=study_instance_uid(y))  # no accession in the files
    d.images(x, "HEAD", when="09:40")  # a later batch of the same study
    d.rename(zed, "ZED^RENAMED", "10:00")
    runner.catch_up()

    exams = rows(runner.db, uid)
    assert (exams["X"]["body_part"], exams["Y"]["body_part"]) == ("HEAD", "KNEE")
    assert (exams["X"]["patient_name"], exams["Y"]["patient_name"]) == ("ZED^RENAMED", "ZED^RENAMED")


def test_rebuilding_from_zero_gives_the_live_rows(
    store: EventStore, runner: ProjectionRunner, uid: str
) -> None:
    department_day(store, uid)
    runner.catch_up()
    live = whole(runner.db, uid)
    runner.db.execute(
        "UPDATE reading_exams SET claimed_by = 'X', body_part = '' WHERE accession LIKE ?", (f"%{uid}",)
    )
    runner.db.execute("DELETE FROM reading_revisions WHERE accession LIKE ?", (f"%{uid}",))

    runner.rebuild()

    assert whole(runner.db, uid) == live
    assert runner.lag() == 0
    assert runner.catch_up() == 0


def whole(db: Database, uid: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of the test's exams, without the recorded-at times (replay keeps those too)."""
    return {
        table: db.query(
            f"SELECT * FROM {table} WHERE accession LIKE ? ORDER BY accession, {order}", (f"%{uid}",)
        )
        for table, order in (
            ("reading_exams", "exam_id"),
            ("reading_revisions", "revision"),
            ("reading_studies", "body_part"),
        )
    }


@pytest.mark.parametrize(
    ("text", "impression"),
    [
        ("FINDINGS:\nA.\n\nIMPRESSION:\nB.", "B."),
        ("IMPRESSION:\nB.\nSecond line.\n\nRECOMMENDATION:\nC.", "B.\nSecond line."),
        ("Impression: normal study", "normal study"),
        ("no headings at all", "no headings at all"),
        ("", ""),
    ],
)
def test_the_impression_of_a_plain_text_report(text: str, impression: str) -> None:
    assert impression_of(text) == impression


def test_studies_the_pacs_holds_without_an_exam_are_priors_too(
    store: EventStore, runner: ProjectionRunner, projection_db: Database, uid: str
) -> None:
    """Images imported before radflow took the orders (no exam here) still show as priors of the
    patient's exams, by their DICOM description and date; another patient's do not."""
    d = Department(store, uid)
    ann = d.patient("ANN")
    acc = d.order("P", ann, priority="STAT")
    d.perform(acc, "10:00")

    def imported(study_uid: str, patient: str, date: str, description: str) -> None:
        d.apply(
            StoreInstances(
                provenance=d._provenance("PACS-IMPORT", "dicom", at("09:00")),
                study_instance_uid=study_uid,
                study={
                    "patient_id": patient,
                    "study_date": date,
                    "study_time": "081500",
                    "study_description": description,
                },
                series=(
                    {
                        "series_instance_uid": f"{study_uid}.1",
                        "modality": "CR",
                        "series_number": "1",
                        "instances": [
                            {
                                "sop_instance_uid": f"{study_uid}.1.1",
                                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.1",
                            }
                        ],
                    },
                ),
                accession="",
            )
        )

    imported(f"1.2.9.{uid_number(uid)}.1", ann.id, "20190704", "XR chest PA")
    imported(f"1.2.9.{uid_number(uid)}.2", f"OTHER{uid}", "20200101", "XR knee")
    imported(f"1.2.9.{uid_number(uid)}.3", ann.id, "20990101", "from the future: not a prior")
    pacs = ProjectionRunner(store, projection_db, PacsIndexProjection())
    pacs.create_schema()
    pacs.catch_up()
    runner.catch_up()

    (item,) = [
        i
        for i in client_at(projection_db, "11:55").get("/api/reading/worklist").json()["items"]
        if i["accession"] == acc
    ]
    assert [(p["kind"], p["procedure"]["text"], p["completed_at"]) for p in item["priors"]] == [
        ("study", "XR chest PA", "2019-07-04T08:15:00+00:00")
    ]
    assert item["priors"][0]["study_instance_uid"] == f"1.2.9.{uid_number(uid)}.1"


def uid_number(uid: str) -> int:
    return int.from_bytes(uid.encode(), "big") % 10**9
