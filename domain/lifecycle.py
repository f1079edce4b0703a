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

# Forced moves: what operations may do by hand (with a reason) when the world and the record
# disagree and no message will ever fix it. Each is a compensating event (ExamStateForced),
# never an edit of history; a move missing here is refused. The value names the case:
FORCED_TRANSITIONS: dict[tuple[ExamState, ExamState], str] = {
    # the modality never sent MPPS COMPLETED (crashed, no MPPS support, step lost)
    (S.IN_PROGRESS, S.COMPLETED): "the modality never reported the procedure completed",
    # the procedure was abandoned and the modality never sent MPPS DISCONTINUED
    (S.IN_PROGRESS, S.DISCONTINUED): "the procedure stopped and the modality never said so",
    # MPPS IN PROGRESS was sent for the wrong order, or by mistake: the exam waits again
    (S.IN_PROGRESS, S.SCHEDULED): "the procedure was started in error",
    (S.IN_PROGRESS, S.ORDERED): "the procedure was started in error (no appointment)",
    # a COMPLETED sent too early (more images or series to acquire): reopen before reporting
    (S.COMPLETED, S.IN_PROGRESS): "the procedure was completed in error and goes on",
}
# (ordered and scheduled exams need no forced move to be cancelled: operations send the placer's
# CancelOrder, a normal transition)

del S, A


def next_state(state: ExamState, action: ExamAction) -> ExamState | None:
    """The state after `action`, or None when the table forbids it."""
    return TRANSITIONS.get((state, action))


def forced_move(state: ExamState, target: ExamState) -> str | None:
    """Why operations may force `state` to `target` (the documented case), or None."""
    return FORCED_TRANSITIONS.get((state, target))


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
