"""The transition table itself: what it allows, what it forbids, and that it has no dead ends."""

from __future__ import annotations

import itertools

import pytest

from domain.lifecycle import (
    TERMINAL_STATES,
    TRANSITIONS,
    ExamAction,
    ExamState,
    next_state,
    reachable_states,
)

LEGAL = sorted(TRANSITIONS.items())
ILLEGAL = sorted(pair for pair in itertools.product(ExamState, ExamAction) if pair not in TRANSITIONS)


@pytest.mark.parametrize(("move", "target"), LEGAL, ids=[f"{s}-{a}" for (s, a), _ in LEGAL])
def test_every_move_in_the_table_leads_to_its_target_state(move: tuple[ExamState, ExamAction], target: ExamState) -> None:
    assert next_state(*move) is target


@pytest.mark.parametrize("move", ILLEGAL, ids=[f"{s}-{a}" for s, a in ILLEGAL])
def test_every_move_missing_from_the_table_is_forbidden(move: tuple[ExamState, ExamAction]) -> None:
    assert next_state(*move) is None


def test_the_table_holds_exactly_the_documented_lifecycle() -> None:
    s, a = ExamState, ExamAction
    assert TRANSITIONS == {
        (s.ORDERED, a.SCHEDULE): s.SCHEDULED,
        (s.SCHEDULED, a.SCHEDULE): s.SCHEDULED,
        (s.SCHEDULED, a.UNSCHEDULE): s.ORDERED,
        (s.ORDERED, a.START): s.IN_PROGRESS,
        (s.SCHEDULED, a.START): s.IN_PROGRESS,
        (s.IN_PROGRESS, a.COMPLETE): s.COMPLETED,
        (s.IN_PROGRESS, a.DISCONTINUE): s.DISCONTINUED,
        (s.COMPLETED, a.REPORT): s.REPORTED,
        (s.REPORTED, a.REPORT): s.REPORTED,
        (s.REPORTED, a.BILL): s.BILLED,
        (s.ORDERED, a.CANCEL): s.CANCELLED,
        (s.SCHEDULED, a.CANCEL): s.CANCELLED,
    }


def test_every_state_is_reachable_from_ordered() -> None:
    assert reachable_states() == frozenset(ExamState)


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES))
def test_a_terminal_state_has_no_way_out(state: ExamState) -> None:
    assert [action for action in ExamAction if next_state(state, action) is not None] == []


@pytest.mark.parametrize("state", sorted(set(ExamState) - TERMINAL_STATES))
def test_a_state_that_is_not_terminal_has_a_way_forward(state: ExamState) -> None:
    assert any(next_state(state, action) not in (None, state) for action in ExamAction)


def test_an_exam_can_be_cancelled_only_before_the_procedure_starts() -> None:
    cancellable = {state for state in ExamState if next_state(state, ExamAction.CANCEL) is not None}
    assert cancellable == {ExamState.ORDERED, ExamState.SCHEDULED}


def test_only_an_exam_in_progress_can_be_discontinued() -> None:
    assert {state for state in ExamState if next_state(state, ExamAction.DISCONTINUE)} == {ExamState.IN_PROGRESS}


def test_every_action_is_legal_somewhere_in_the_table() -> None:
    assert {action for _, action in TRANSITIONS} == set(ExamAction)
