"""The Exam aggregate: the table enforced, provenance on every event, idempotency keys,
deterministic ids, and the same exam after a round trip through an event store."""

from __future__ import annotations

import itertools
from uuid import UUID

import pytest
from eventsourcing.persistence import IntegrityError

from domain.errors import DomainError, IllegalTransition
from domain.exam import Exam, exam_id
from domain.lifecycle import TERMINAL_STATES, TRANSITIONS, ExamAction, ExamState
from domain.provenance import Provenance, Source
from tests.unit.exam_builders import (
    exam_in,
    in_memory_application,
    path_to,
    perform,
    place_order,
    provenance,
    recorded,
)

LEGAL = sorted(TRANSITIONS.items())
ILLEGAL = sorted(pair for pair in itertools.product(ExamState, ExamAction) if pair not in TRANSITIONS)
EVENT_NAMES = {
    ExamAction.SCHEDULE: "ExamScheduled",
    ExamAction.START: "ExamStarted",
    ExamAction.COMPLETE: "ExamCompleted",
    ExamAction.DISCONTINUE: "ExamDiscontinued",
    ExamAction.REPORT: "ExamReported",
    ExamAction.BILL: "ExamBilled",
    ExamAction.CANCEL: "ExamCancelled",
    ExamAction.UNSCHEDULE: "AppointmentCancelled",
}


def test_placing_an_order_creates_an_ordered_exam_holding_the_order() -> None:
    command = place_order("ACC0001")
    exam = Exam.place(command)
    assert exam.accession == "ACC0001"
    assert exam.state is ExamState.ORDERED
    assert exam.version == 1
    assert not exam.is_terminal
    assert exam.order["priority"] == "STAT"
    assert exam.order["patient"]["id"] == "P0001"
    assert exam.order["requested_procedure_id"] == "RP0001"
    assert {"kind", "provenance", "accession"}.isdisjoint(exam.order)


def test_the_ordered_event_carries_the_provenance_of_the_order() -> None:
    by = provenance(control_id="MSG42")
    exam = Exam.place(place_order(by=by))
    [ordered] = recorded(exam)
    assert type(ordered).__name__ == "ExamOrdered"
    assert ordered.provenance == by.as_dict()
    assert Provenance.from_dict(ordered.provenance) == by


@pytest.mark.parametrize(("move", "target"), LEGAL, ids=[f"{s}-{a}" for (s, a), _ in LEGAL])
def test_every_legal_move_changes_the_state_and_records_one_event_with_its_provenance(
    move: tuple[ExamState, ExamAction], target: ExamState
) -> None:
    state, action = move
    exam = exam_in(state)
    version = exam.version
    by = provenance(control_id=f"{state}-{action}")
    perform(exam, action, by)
    [event] = recorded(exam)
    assert exam.state is target
    assert exam.version == version + 1
    assert type(event).__name__ == EVENT_NAMES[action]
    assert event.provenance == by.as_dict()
    assert exam.has_applied(by)


@pytest.mark.parametrize("move", ILLEGAL, ids=[f"{s}-{a}" for s, a in ILLEGAL])
def test_every_illegal_move_is_refused_and_leaves_the_exam_untouched(move: tuple[ExamState, ExamAction]) -> None:
    state, action = move
    exam = exam_in(state, accession="ACC-77")
    version, order, applied = exam.version, dict(exam.order), list(exam.applied)
    by = provenance()
    with pytest.raises(IllegalTransition) as refused:
        perform(exam, action, by)
    assert str(refused.value) == f"exam ACC-77: cannot {action.value} while {state.value}"
    assert (refused.value.accession, refused.value.state, refused.value.action) == ("ACC-77", state.value, action.value)
    assert isinstance(refused.value, DomainError)
    assert exam.state is state
    assert exam.version == version
    assert exam.order == order
    assert exam.applied == applied
    assert exam.pending_events == []
    assert not exam.has_applied(by)


def test_a_cancel_after_the_exam_started_is_refused_naming_accession_state_and_action() -> None:
    exam = exam_in(ExamState.IN_PROGRESS, accession="ACC-9")
    with pytest.raises(IllegalTransition, match=r"^exam ACC-9: cannot cancel while in_progress$"):
        exam.cancel("changed mind", provenance())


def test_a_report_on_a_cancelled_exam_is_refused() -> None:
    exam = exam_in(ExamState.CANCELLED)
    with pytest.raises(IllegalTransition, match="cannot report while cancelled"):
        exam.report(provenance())


def test_the_whole_happy_path_records_each_event_with_its_own_provenance() -> None:
    steps = [ExamAction.SCHEDULE, ExamAction.START, ExamAction.COMPLETE, ExamAction.REPORT, ExamAction.REPORT, ExamAction.BILL]
    placed_by = provenance(control_id="ORDER")
    exam = Exam.place(place_order(by=placed_by))
    by = [provenance(control_id=f"STEP{n}", kind=kind) for n, kind in enumerate(["hl7", "dicom", "dicom", "api", "api", "system"])]
    for action, who in zip(steps, by, strict=True):
        perform(exam, action, who)
    events = recorded(exam)
    assert [type(e).__name__ for e in events] == ["ExamOrdered", *[EVENT_NAMES[a] for a in steps]]
    assert [e.provenance for e in events] == [p.as_dict() for p in [placed_by, *by]]
    assert all(e.provenance["schema_version"] == 1 for e in events)
    assert exam.state is ExamState.BILLED
    assert exam.is_terminal


@pytest.mark.parametrize("state", sorted(ExamState))
def test_is_terminal_follows_the_terminal_states_of_the_table(state: ExamState) -> None:
    assert exam_in(state).is_terminal == (state in TERMINAL_STATES)


def test_scheduling_records_the_time_in_the_order_and_rescheduling_replaces_it() -> None:
    exam = Exam.place(place_order())
    exam.schedule("2024-03-16T09:00:00", provenance())
    exam.schedule("2024-03-17T14:30:00", provenance())
    assert exam.state is ExamState.SCHEDULED
    assert exam.order["scheduled_at"] == "2024-03-17T14:30:00"
    assert [e.scheduled_at for e in recorded(exam)[1:]] == ["2024-03-16T09:00:00", "2024-03-17T14:30:00"]


def test_cancel_and_discontinue_reasons_travel_in_their_events() -> None:
    cancelled = Exam.place(place_order("A1"))
    cancelled.cancel("duplicate order", provenance())
    discontinued = exam_in(ExamState.IN_PROGRESS, "A2")
    discontinued.discontinue("contrast reaction", provenance())
    assert recorded(cancelled)[-1].reason == "duplicate order"
    assert recorded(discontinued)[-1].reason == "contrast reaction"


# idempotency


def test_an_exam_knows_the_message_that_placed_it_and_every_message_it_applied() -> None:
    placed_by, scheduled_by = provenance(control_id="M1"), provenance(control_id="M2")
    exam = Exam.place(place_order(by=placed_by))
    exam.schedule("2024-03-16T09:00:00", scheduled_by)
    assert exam.has_applied(placed_by)
    assert exam.has_applied(scheduled_by)
    assert not exam.has_applied(provenance(control_id="M3"))


def test_a_replayed_message_is_recognised_whoever_and_whenever_it_claims_to_be() -> None:
    original = provenance(control_id="M1")
    exam = Exam.place(place_order(by=original))
    replay = Provenance(actor="someone-else", source=original.source, occurred_at="2030-01-01T00:00:00")
    assert exam.has_applied(replay)


def test_the_same_control_id_from_another_sender_is_a_different_message() -> None:
    exam = Exam.place(place_order(by=provenance(control_id="M1")))
    other = Provenance(actor="LAB", source=Source(kind="hl7", application="LAB", facility="GENERAL", control_id="M1"), occurred_at="x")
    assert not exam.has_applied(other)


def test_the_message_log_id_decides_idempotency_when_it_is_known() -> None:
    exam = Exam.place(place_order(by=provenance(control_id="M1", message_id="hl7:17")))
    assert exam.has_applied(provenance(control_id="OTHER", message_id="hl7:17"))
    assert not exam.has_applied(provenance(control_id="M1", message_id="hl7:18"))


# deterministic ids


def test_the_exam_id_is_derived_from_the_accession_alone() -> None:
    assert Exam.place(place_order("ACC-1")).id == exam_id("ACC-1") == Exam.place(place_order("ACC-1", by=provenance())).id
    assert exam_id("ACC-1") != exam_id("ACC-2")


def test_the_exam_id_of_an_accession_never_changes_between_releases() -> None:
    # stored aggregates are found by this id: changing the namespace would orphan every exam
    assert exam_id("ACC-1") == UUID("b8c145c2-14f6-533b-9ce4-9f1dfaa879e7")


def test_placing_the_same_accession_twice_collides_in_the_store_instead_of_creating_a_twin() -> None:
    app = in_memory_application()
    app.save(Exam.place(place_order("ACC-1")))
    with pytest.raises(IntegrityError):
        app.save(Exam.place(place_order("ACC-1")))


# reconstruction


@pytest.mark.parametrize("state", sorted(ExamState))
def test_an_exam_rebuilt_from_its_events_equals_the_exam_that_recorded_them(state: ExamState) -> None:
    app = in_memory_application()
    exam = Exam.place(place_order("ACC-R"))
    for action in path_to(state):
        perform(exam, action)
    app.save(exam)
    rebuilt: Exam = app.repository.get(exam_id("ACC-R"))
    assert rebuilt.state is state
    assert (rebuilt.accession, rebuilt.order, rebuilt.applied, rebuilt.version) == (
        exam.accession,
        exam.order,
        exam.applied,
        exam.version,
    )


def test_a_rebuilt_exam_still_refuses_illegal_moves_and_accepts_legal_ones() -> None:
    app = in_memory_application()
    for accession, state in (("ACC-C", ExamState.CANCELLED), ("ACC-S", ExamState.SCHEDULED)):
        exam = Exam.place(place_order(accession))
        for action in path_to(state):
            perform(exam, action)
        app.save(exam)
    cancelled: Exam = app.repository.get(exam_id("ACC-C"))
    with pytest.raises(IllegalTransition, match="exam ACC-C: cannot schedule while cancelled"):
        cancelled.schedule("2024-03-16T09:00:00", provenance())
    scheduled: Exam = app.repository.get(exam_id("ACC-S"))
    scheduled.start(provenance())
    app.save(scheduled)
    assert app.repository.get(exam_id("ACC-S")).state is ExamState.IN_PROGRESS


def test_a_rebuilt_exam_remembers_which_messages_it_applied() -> None:
    app = in_memory_application()
    placed_by, started_by = provenance(control_id="M1"), provenance(control_id="M2")
    exam = Exam.place(place_order(by=placed_by))
    exam.start(started_by)
    app.save(exam)
    rebuilt: Exam = app.repository.get(exam.id)
    assert rebuilt.has_applied(placed_by)
    assert rebuilt.has_applied(started_by)
    assert not rebuilt.has_applied(provenance())
