"""The worklist projection as the Modality Worklist reads it, on SQLite and on PostgreSQL: a table
from before the MWL columns is rebuilt with them, a restart keeps what is built, and narrowing a
query in SQL never drops an entity the DICOM matching rules accept."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset

from activities.apply_command import CommandActivities
from adapters.event_store import EventStore
from adapters.settings import Settings
from adapters.sql import Database
from domain.commands import PlaceOrder
from interfaces.dicom.matching import compile_query
from interfaces.dicom.worklist import SCHEMA, select, worklist_item
from projections.runner import ProjectionRunner
from projections.worklist import WorklistProjection
from tests.integration.builders import cancel_order, patient, provenance

# the table as radflow created it before the MWL columns (schema version 1, unrecorded)
VERSION_1 = """CREATE TABLE worklist (
    accession TEXT PRIMARY KEY, exam_id TEXT NOT NULL, patient_ref TEXT NOT NULL,
    patient_id TEXT NOT NULL, patient_issuer TEXT NOT NULL, patient_name TEXT NOT NULL,
    procedure_code TEXT NOT NULL, procedure_text TEXT NOT NULL, modality TEXT NOT NULL,
    priority TEXT NOT NULL, state TEXT NOT NULL, scheduled_at TEXT,
    requested_procedure_id TEXT NOT NULL, study_instance_uid TEXT NOT NULL,
    placer_order_number TEXT NOT NULL, filler_order_number TEXT NOT NULL,
    ordered_at TEXT NOT NULL, updated_at TEXT NOT NULL
)"""


@pytest.fixture
def projection_db(settings: Settings) -> Iterator[Database]:
    db = Database.for_file(settings, settings.projections_sqlite_path)
    try:
        yield db
    finally:
        db.close()


def order(accession: str, message_id: str, **fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "patient": patient(fields.pop("patient_id", "P1")),
        "requested_procedure_id": f"RP-{accession}",
        "procedure_code": "CTHEAD",
        "procedure_text": "CT head",
        "modality": "CT",
        "scheduled_at": "2024-03-16T09:00:00",
        "referring_physician": "1234^HOUSE^GREGORY",
        **fields,
    }
    return PlaceOrder(provenance=provenance(message_id), accession=accession, **values).as_dict()


def apply_all(store: EventStore, *commands: dict[str, Any]) -> None:
    activities = CommandActivities(store, None)
    for command in commands:
        assert activities.apply_command(command)["status"] == "applied"


def test_a_worklist_table_from_before_the_mwl_columns_is_rebuilt_with_them(
    store: EventStore, projection_db: Database, uid: str
) -> None:
    apply_all(store, order(f"A{uid}", f"{uid}-1"), order(f"B{uid}", f"{uid}-2", requested_procedure_id=""))
    projection_db.executescript([
        "CREATE TABLE IF NOT EXISTS projection_tracking (name TEXT PRIMARY KEY, position BIGINT NOT NULL)",
        "DROP TABLE IF EXISTS worklist",
        VERSION_1,
        "DROP TABLE IF EXISTS projection_schema",
        "DELETE FROM projection_tracking WHERE name = 'worklist'",
    ])
    projection_db.execute(
        "INSERT INTO projection_tracking (name, position) VALUES ('worklist', ?)", (store.max_notification_id(),)
    )
    runner = ProjectionRunner(store, projection_db, WorklistProjection())

    runner.create_schema()
    assert runner.position() == 0  # the old rows lack the new columns' values: replay them all
    runner.catch_up()

    rows = {r["accession"]: r for r in projection_db.query("SELECT * FROM worklist WHERE accession LIKE ?", (f"%{uid}",))}
    a, b = rows[f"A{uid}"], rows[f"B{uid}"]
    assert (a["patient_birth_date"], a["patient_sex"], a["referring_physician"]) == ("19800102", "F", "1234^HOUSE^GREGORY")
    assert (a["scheduled_date"], a["scheduled_time"], a["scheduled_station_ae"]) == ("20240316", "090000", "")
    assert (a["scheduled_procedure_step_id"], b["scheduled_procedure_step_id"]) == (f"RP-A{uid}", f"B{uid}")
    assert a["study_instance_uid"].startswith("2.25.") and a["study_instance_uid"] != b["study_instance_uid"]


def test_a_restart_keeps_the_built_worklist_and_its_position(store: EventStore, projection_db: Database, uid: str) -> None:
    runner = ProjectionRunner(store, projection_db, WorklistProjection())
    runner.create_schema()
    apply_all(store, order(f"A{uid}", f"{uid}-1"))
    runner.catch_up()
    position = runner.position()

    ProjectionRunner(store, projection_db, WorklistProjection()).create_schema()

    assert runner.position() == position > 0
    # no catch-up ran since: a dropped table would have lost the row
    assert [r["accession"] for r in projection_db.query("SELECT accession FROM worklist WHERE accession = ?", (f"A{uid}",))] == [f"A{uid}"]


def identifier(step: dict[str, Any] | None = None, **keys: Any) -> Dataset:
    dataset = Dataset()
    for keyword, value in keys.items():
        setattr(dataset, keyword, value)
    if step is not None:
        item = Dataset()
        for keyword, value in step.items():
            setattr(item, keyword, value)
        dataset.ScheduledProcedureStepSequence = [item]
    return dataset


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # pydicom frowns on wildcards in CS
def test_narrowing_in_sql_never_drops_an_entity_the_matching_rules_accept(
    store: EventStore, projection_db: Database, uid: str
) -> None:
    runner = ProjectionRunner(store, projection_db, WorklistProjection())
    runner.create_schema()
    commands = []
    for n, (modality, day, hour) in enumerate(
        [("CT", 15, 8), ("CT", 16, 9), ("MR", 16, 14), ("US", 17, 23), ("CT", 18, 0), ("MR", 31, 12)]
    ):
        commands.append(order(f"{uid}N{n}", f"{uid}-{n}", patient_id=f"P{uid}{n % 2}", modality=modality,
                              scheduled_at=f"2024-03-{day:02d}T{hour:02d}:30:00"))
    commands.append(order(f"{uid}U", f"{uid}-u", patient_id=f"P{uid}0", scheduled_at=""))
    commands.append(cancel_order(f"{uid}N1", f"{uid}-c"))
    apply_all(store, *commands)
    runner.catch_up()
    queries = [
        identifier(AccessionNumber=f"{uid}N2"),
        identifier(AccessionNumber=f"{uid}N*"),
        identifier(PatientID=f"P{uid}0"),
        identifier(PatientID=f"P{uid}?"),
        identifier({"Modality": "CT"}),
        identifier({"Modality": "C*"}),
        identifier({"ScheduledProcedureStepStartDate": "20240316"}),
        identifier({"ScheduledProcedureStepStartDate": "20240316-20240317", "Modality": "MR"}),
        identifier({"ScheduledProcedureStepStartDate": "-20240316"}),
        identifier({"ScheduledProcedureStepStartDate": "20240318-"}),
        identifier({"ScheduledProcedureStepStartTime": "1200-"}),
        identifier({"ScheduledProcedureStepStartDate": ""}, PatientID=f"P{uid}1"),
        identifier(StudyInstanceUID=["1.2.3", "1.2.4"]),
    ]
    everything = [worklist_item(r) for r in projection_db.query("SELECT * FROM worklist WHERE state IN ('ordered', 'scheduled')")]
    for query in queries:
        compiled = compile_query(query, SCHEMA)
        narrowed = [worklist_item(r) for r in projection_db.query(*select(compiled))]
        accepted = sorted(i[0x00080050] for i in everything if compiled.matches(i))
        assert sorted(i[0x00080050] for i in narrowed if compiled.matches(i)) == accepted, query
    # and the narrowing does narrow: a modality key is decided in SQL
    assert all(i[0x00400100][0][0x00080060] == "CT" for i in
               (worklist_item(r) for r in projection_db.query(*select(compile_query(queries[4], SCHEMA)))))
