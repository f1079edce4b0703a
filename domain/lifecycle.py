"""The exam lifecycle: every state and every legal move between them, in one table.

Later capabilities (MPPS, reporting, billing) add triggers, not transitions: the table is
complete now so that every trigger is checked against the same rules.
"""

from __future__ import annotations

from enum import StrEnum


class ExamState(StrEnum):
    ORDERED = "ordered"
    SCHEDULED = "scheduled"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    REPORTED = "reported"
    BILLED = "billed"
    CANCELLED = "cancelled"
    DISCONTINUED = "discontinued"


class ExamAction(StrEnum):
    SCHEDULE = "schedule"
    UNSCHEDULE = "unschedule"  # the appointment is cancelled, the order stands
    START = "start"
    COMPLETE = "complete"
    DISCONTINUE = "discontinue"
    REPORT = "report"
    BILL = "bill"
    CANCEL = "cancel"


S, A = ExamState, ExamAction

TRANSITIONS: dict[tuple[ExamState, ExamAction], ExamState] = {
    (S.ORDERED, A.SCHEDULE): S.SCHEDULED,
    (S.SCHEDULED, A.SCHEDULE): S.SCHEDULED,  # rescheduled
    (S.SCHEDULED, A.UNSCHEDULE): S.ORDERED,
    (S.ORDERED, A.START): S.IN_PROGRESS,  # walk-in: the modality starts before booking
    (S.SCHEDULED, A.START): S.IN_PROGRESS,
    (S.IN_PROGRESS, A.COMPLETE): S.COMPLETED,
    (S.IN_PROGRESS, A.DISCONTINUE): S.DISCONTINUED,
    (S.COMPLETED, A.REPORT): S.REPORTED,
    (S.REPORTED, A.REPORT): S.REPORTED,  # addendum or correction
    (S.REPORTED, A.BILL): S.BILLED,
    (S.ORDERED, A.CANCEL): S.CANCELLED,
    (S.SCHEDULED, A.CANCEL): S.CANCELLED,
}

TERMINAL_STATES: frozenset[ExamState] = frozenset({S.BILLED, S.CANCELLED, S.DISCONTINUED})

del S, A


def next_state(state: ExamState, action: ExamAction) -> ExamState | None:
    """The state after `action`, or None when the table forbids it."""
    return TRANSITIONS.get((state, action))


def reachable_states() -> frozenset[ExamState]:
    """Every state reachable from ORDERED by the table (ORDERED included)."""
    seen = {ExamState.ORDERED}
    frontier = [ExamState.ORDERED]
    while frontier:
        state = frontier.pop()
        for (source, _), target in TRANSITIONS.items():
            if source == state and target not in seen:
                seen.add(target)
                frontier.append(target)
    return frozenset(seen)
