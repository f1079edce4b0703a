"""Any sequence of commands keeps an exam on the table: a hypothesis state machine drives one
exam with random commands and provenance, next to a model computed from TRANSITIONS alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from domain.errors import IllegalTransition
from domain.exam import Exam
from domain.lifecycle import TERMINAL_STATES, TRANSITIONS, ExamAction, ExamState, reachable_states
from domain.provenance import Provenance, Source
from tests.unit.exam_builders import in_memory_application, place_order

texts = st.text(max_size=12)
provenances = st.builds(
    Provenance,
    actor=texts,
    source=st.builds(
        Source,
        kind=st.sampled_from(["hl7", "dicom", "api", "system"]),
        application=texts,
        facility=texts,
        control_id=texts,
        message_id=st.one_of(st.just(""), texts),
    ),
    occurred_at=texts,
    extra=st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


class ExamLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.app = in_memory_application()
        self.exam = Exam.place(place_order("ACC-SM"))
        self.model = ExamState.ORDERED
        self.accepted = 1  # events the exam recorded so far, the order included
        self.saved = 0  # of which already handed to the store

    def attempt(self, action: ExamAction, by: Provenance, command: Callable[[], None]) -> None:
        exam = self.exam
        before = (exam.state, exam.version, list(exam.pending_events), dict(exam.order), list(exam.applied))
        applied_before = exam.has_applied(by)
        expected = TRANSITIONS.get((self.model, action))
        try:
            command()
        except IllegalTransition as refused:
            assert expected is None, f"{action} refused in {self.model} though the table allows it"
            assert (refused.accession, refused.state, refused.action) == ("ACC-SM", self.model.value, action.value)
            after = (exam.state, exam.version, list(exam.pending_events), dict(exam.order), list(exam.applied))
            assert after == before
            assert exam.has_applied(by) == applied_before
            return
        assert expected is not None, f"{action} accepted in {self.model} though the table forbids it"
        self.model = expected
        self.accepted += 1
        assert exam.has_applied(by)
        latest: Any = exam.pending_events[-1]
        assert latest.provenance == by.as_dict()

    @rule(by=provenances, reason=texts)
    def cancel(self, by: Provenance, reason: str) -> None:
        self.attempt(ExamAction.CANCEL, by, lambda: self.exam.cancel(reason, by))

    @rule(by=provenances, scheduled_at=texts)
    def schedule(self, by: Provenance, scheduled_at: str) -> None:
        self.attempt(ExamAction.SCHEDULE, by, lambda: self.exam.schedule(scheduled_at, by))

    @rule(by=provenances, reason=texts)
    def cancel_appointment(self, by: Provenance, reason: str) -> None:
        self.attempt(ExamAction.UNSCHEDULE, by, lambda: self.exam.cancel_appointment(reason, by))

    @rule(by=provenances)
    def start(self, by: Provenance) -> None:
        self.attempt(ExamAction.START, by, lambda: self.exam.start(by))

    @rule(by=provenances)
    def complete(self, by: Provenance) -> None:
        self.attempt(ExamAction.COMPLETE, by, lambda: self.exam.complete(by))

    @rule(by=provenances, reason=texts)
    def discontinue(self, by: Provenance, reason: str) -> None:
        self.attempt(ExamAction.DISCONTINUE, by, lambda: self.exam.discontinue(reason, by))

    @rule(by=provenances)
    def report(self, by: Provenance) -> None:
        self.attempt(ExamAction.REPORT, by, lambda: self.exam.report(by))

    @rule(by=provenances)
    def bill(self, by: Provenance) -> None:
        self.attempt(ExamAction.BILL, by, lambda: self.exam.bill(by))

    @rule()
    def save_and_rebuild(self) -> None:
        """Carry on with the exam as the store gives it back, as a workflow would after a restart."""
        self.app.save(self.exam)
        self.saved = self.accepted
        rebuilt: Exam = self.app.repository.get(self.exam.id)
        assert (rebuilt.state, rebuilt.version, rebuilt.order, rebuilt.applied) == (
            self.exam.state,
            self.exam.version,
            self.exam.order,
            self.exam.applied,
        )
        self.exam = rebuilt

    @invariant()
    def the_exam_is_where_the_table_says(self) -> None:
        event(f"in {self.model}")
        assert self.exam.state is self.model
        assert self.exam.state in reachable_states()
        assert self.exam.is_terminal == (self.model in TERMINAL_STATES)

    @invariant()
    def every_accepted_command_is_one_event(self) -> None:
        assert self.exam.version == self.accepted
        assert len(self.exam.pending_events) == self.accepted - self.saved
        assert len(self.exam.applied) == self.accepted


ExamLifecycle.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_any_sequence_of_commands_keeps_the_exam_on_the_table = ExamLifecycle.TestCase
