"""A changed, rescheduled or unscheduled order shows in the Modality Worklist as the modality
sees it: the MWL reads the worklist projection, so the projection must follow the new events."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset

from activities.apply_command import CommandActivities
from adapters.event_store import EventStore
from adapters.settings import Settings
from adapters.sql import Database
from domain.commands import CancelAppointment, ModifyOrder, PlaceOrder, ScheduleExam
from interfaces.dicom.matching import compile_query
from interfaces.dicom.worklist import SCHEMA, select, worklist_item
from projections.runner import ProjectionRunner
from projections.worklist import WorklistProjection
from tests.integration.builders import patient, provenance

ACCESSION, SPS, SPS_DATE, SPS_TIME, MODALITY, DESCRIPTION = (
    0x00080050, 0x00400100, 0x00400002, 0x00400003, 0x00080060, 0x00321060,
)


@pytest.fixture
def projection_db(settings: Settings) -> Iterator[Database]:
    db = Database.for_file(settings, settings.projections_sqlite_path)
    try:
        yield db
    finally:
        db.close()


def mwl(db: Database, accession: str, **step: str) -> list[dict[int, Any]]:
    """What a modality asking for this accession (and the step keys given) would be sent."""
    dataset = Dataset()
    dataset.AccessionNumber = accession
    item = Dataset()
    for keyword, value in step.items():
        setattr(item, keyword, value)
    dataset.ScheduledProcedureStepSequence = [item]
    query = compile_query(dataset, SCHEMA)
    return [i for i in (worklist_item(r) for r in db.query(*select(query))) if query.matches(i)]


def test_a_modified_then_rescheduled_then_unscheduled_order_shows_so_in_the_modality_worklist(
    store: EventStore, projection_db: Database, uid: str
) -> None:
    acc = f"W{uid}"
    runner = ProjectionRunner(store, projection_db, WorklistProjection())
    runner.create_schema()
    activities = CommandActivities(store, None)

    def apply(command: Any) -> None:
        assert activities.apply_command(command.as_dict())["status"] == "applied"
        runner.catch_up()

    apply(PlaceOrder(provenance=provenance(f"{uid}-1"), accession=acc, patient=patient(f"P{uid}"),
                     requested_procedure_id=f"RP-{acc}", procedure_code="CTHEAD", procedure_text="CT head",
                     modality="CT", scheduled_at="2024-03-16T09:00:00"))
    assert [i[SPS][0][SPS_DATE] for i in mwl(projection_db, acc)] == ["20240316"]

    apply(ModifyOrder(provenance=provenance(f"{uid}-2"), accession=acc,
                      changes={"procedure_text": "CT head with contrast", "modality": "MR"}))
    [item] = mwl(projection_db, acc, Modality="MR")
    assert item[DESCRIPTION] == "CT head with contrast"
    assert mwl(projection_db, acc, Modality="CT") == []

    apply(ScheduleExam(provenance=provenance(f"{uid}-3"), accession=acc, scheduled_at="2024-03-18T14:30:00",
                       appointment_id=f"APT{uid}", location="MR1", duration_min=30))
    assert mwl(projection_db, acc, ScheduledProcedureStepStartDate="20240316") == []
    [item] = mwl(projection_db, acc, ScheduledProcedureStepStartDate="20240318")
    assert item[SPS][0][SPS_TIME] == "143000"

    apply(CancelAppointment(provenance=provenance(f"{uid}-4"), accession=acc, appointment_id=f"APT{uid}"))
    assert mwl(projection_db, acc, ScheduledProcedureStepStartDate="20240318") == []
    [item] = mwl(projection_db, acc)  # still ordered, so still on the worklist, with no start
    assert item[SPS][0][SPS_DATE] == ""
    row = projection_db.query("SELECT state, scheduled_at FROM worklist WHERE accession = ?", (acc,))[0]
    assert (row["state"], row["scheduled_at"]) == ("ordered", None)
