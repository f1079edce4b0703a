"""`radflow projections check`: a scratch replay up to the live position equals the live
projection row for row, on SQLite and on PostgreSQL (the scratch copy is always SQLite); a
changed row is named; the progress callback counts the events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from activities.apply_command import CommandActivities
from adapters.event_store import EventStore
from adapters.settings import Settings
from adapters.sql import Database
from api.ops_cli import check_one
from projections.runner import ProjectionRunner
from projections.worklist import WorklistProjection
from tests.integration.builders import cancel_order, place_order, register_patient


@pytest.fixture
def runner(settings: Settings, store: EventStore) -> Iterator[ProjectionRunner]:
    db = Database.for_file(settings, settings.projections_sqlite_path)
    runner = ProjectionRunner(store, db, WorklistProjection())
    runner.create_schema()
    try:
        yield runner
    finally:
        db.close()


def test_a_rebuild_into_a_scratch_copy_equals_the_live_projection(
    runner: ProjectionRunner, store: EventStore, uid: str, tmp_path: Path
) -> None:
    activities = CommandActivities(store, None)
    for command in (
        register_patient(f"P{uid}", f"{uid}-1"),
        place_order(f"A{uid}", f"{uid}-2", patient_id=f"P{uid}"),
        place_order(f"B{uid}", f"{uid}-3", patient_id=f"P{uid}"),
        cancel_order(f"B{uid}", f"{uid}-4"),
    ):
        activities.apply_command(command)
    seen: list[tuple[int, int]] = []
    runner.catch_up(progress=lambda done, total: seen.append((done, total)))
    assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1] > 0
    equal, lines = check_one(runner, tmp_path / "one")
    assert equal, lines
    assert lines[0].startswith(f"worklist: equal to a rebuild at position {runner.position()}")

    runner.db.execute("UPDATE worklist SET modality = 'XX' WHERE accession = ?", (f"A{uid}",))
    equal, lines = check_one(runner, tmp_path / "two")
    assert not equal
    assert lines[0].startswith("worklist: DIFFERS from a rebuild at position")
    text = "\n".join(lines)
    assert f"only in live: {{'accession': 'A{uid}'" in text and "'modality': 'XX'" in text
    assert f"only in rebuilt: {{'accession': 'A{uid}'" in text and "'modality': 'CT'" in text


def test_catch_up_stops_at_the_position_asked_for(
    runner: ProjectionRunner, store: EventStore, uid: str
) -> None:
    activities = CommandActivities(store, None)
    before = store.max_notification_id()
    for n in range(3):
        activities.apply_command(place_order(f"S{n}{uid}", f"{uid}-s{n}"))
    runner.catch_up(until=before + 2)
    assert runner.position() == before + 2
