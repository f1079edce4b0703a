"""Forced transitions: operations correct an exam by hand only where the lifecycle's table of
forced moves allows it, with a reason, as a compensating ExamStateForced event."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.outbound_config import parse_destinations
from adapters.outbound_log import OutboundLog
from adapters.settings import Settings
from adapters.sql import Database
from domain.commands import ForceExamState, command_from_dict, workflow_id_for
from domain.errors import DomainError, ForcedTransitionRefused, IllegalTransition
from domain.exam import Exam, exam_id
from domain.lifecycle import FORCED_TRANSITIONS, TRANSITIONS, ExamState
from domain.provenance import Provenance
from projections.order_status_feed import OrderStatusFeed
from projections.runner import TRACKING_SCHEMA
from tests.unit.exam_builders import exam_in, in_memory_application, place_order, provenance, recorded


def ops(actor: str = "ops.jane") -> Provenance:
    return provenance(kind="api", actor=actor)


def test_forces_an_exam_the_modality_never_completed_to_completed_with_the_reason() -> None:
    exam = exam_in(ExamState.IN_PROGRESS)
    exam.force_state("completed", "CT-2 crashed after the scan; images are in PACS", ops())
    (event,) = recorded(exam)
    assert type(event).__name__ == "ExamStateForced"
    assert (event.from_state, event.to_state) == ("in_progress", "completed")
    assert event.reason == "CT-2 crashed after the scan; images are in PACS"
    assert event.case == FORCED_TRANSITIONS[(ExamState.IN_PROGRESS, ExamState.COMPLETED)]
    assert event.provenance["actor"] == "ops.jane"
    assert exam.state is ExamState.COMPLETED
    assert exam.completed_at  # the turnaround clock starts with the forced completion


def test_refuses_a_forced_move_not_in_the_table_and_names_the_allowed_ones() -> None:
    exam = exam_in(ExamState.REPORTED)
    with pytest.raises(
        ForcedTransitionRefused, match=r"cannot force reported -> ordered \(allowed from reported: none\)"
    ):
        exam.force_state("ordered", "undo", ops())
    started = exam_in(ExamState.IN_PROGRESS)
    with pytest.raises(
        ForcedTransitionRefused, match="allowed from in_progress: completed, discontinued, ordered, scheduled"
    ):
        started.force_state("billed", "skip ahead", ops())
    with pytest.raises(DomainError, match="cannot force in_progress -> nonsense"):
        started.force_state("nonsense", "typo", ops())
    assert recorded(exam) == [] and recorded(started) == []


def test_refuses_a_forced_move_without_a_reason() -> None:
    exam = exam_in(ExamState.IN_PROGRESS)
    with pytest.raises(IllegalTransition, match="without a reason"):
        exam.force_state("completed", "   ", ops())


def test_no_forced_move_leaves_a_terminal_state() -> None:
    # a cancelled, discontinued or billed exam's workflow has ended; forcing it back would
    # leave an exam no workflow serves
    assert all(
        source not in (ExamState.BILLED, ExamState.CANCELLED, ExamState.DISCONTINUED)
        for source, _ in FORCED_TRANSITIONS
    )


def test_a_forced_exam_reloads_from_its_events_in_the_forced_state() -> None:
    app = in_memory_application()
    fresh = Exam.place(place_order("ACC-F1"))
    fresh.start(provenance())
    fresh.force_state("discontinued", "patient left before the scan ended", ops())
    app.save(fresh)
    loaded: Exam = app.repository.get(exam_id("ACC-F1"))
    assert loaded.state is ExamState.DISCONTINUED and loaded.is_terminal


def test_the_force_command_travels_as_a_dict_to_the_exams_workflow() -> None:
    command = ForceExamState(
        provenance=provenance(kind="api"), accession="ACC9", target="completed", reason="r"
    )
    again = command_from_dict(command.as_dict())
    assert again == command
    assert workflow_id_for(again) == "exam-ACC9"
    assert ("in_progress", "complete") in {(s.value, a.value) for s, a in TRANSITIONS}


def test_the_placer_hears_the_forced_state_as_an_order_status(tmp_path: Path) -> None:
    db = Database.for_file(Settings(data_dir=tmp_path), tmp_path / "messages.sqlite")
    outbound = OutboundLog(db)
    outbound.create_schema()
    db.executescript([*TRACKING_SCHEMA, *OrderStatusFeed.schema])
    exam = Exam.place(place_order("ACC-FS"))
    exam.start(provenance())
    exam.force_state("completed", "modality never said COMPLETED", ops())
    exam.force_state("in_progress", "completed in error", ops())
    feed = OrderStatusFeed(parse_destinations("destinations:\n  - {name: RIS, host: 127.0.0.1, port: 1}\n"))
    with db.transaction() as cur:
        for event in exam.collect_events():
            feed.handle(cur, event)
    rows = sorted(outbound.search(limit=10), key=lambda r: r["id"])
    assert [(r["event_type"], r["order_status"]) for r in rows] == [
        ("ExamStarted", "IP"),
        ("ExamStateForced", "CM"),
        ("ExamStateForced", "IP"),
    ]
