"""The Exam aggregate: one requested procedure, from order to bill.

Command methods check the rules and then trigger a past-tense event; the event methods only
change state, because they also run when the exam is rebuilt from the store.
"""

from __future__ import annotations

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.commands import PlaceOrder
from domain.errors import IllegalTransition
from domain.lifecycle import TERMINAL_STATES, ExamAction, ExamState, next_state
from domain.provenance import Provenance

EXAM_NAMESPACE = uuid5(NAMESPACE_URL, "urn:radflow:exam")


def exam_id(accession: str) -> UUID:
    """Deterministic, so that a retried 'create' collides instead of creating a twin."""
    return uuid5(EXAM_NAMESPACE, accession)


class Exam(Aggregate):
    @staticmethod
    def create_id(accession: str, **_: Any) -> UUID:
        return exam_id(accession)

    @event("ExamOrdered")
    def __init__(self, accession: str, order: dict[str, Any], provenance: dict[str, Any]) -> None:
        self.accession = accession
        self.order = order
        self.state = ExamState.ORDERED
        self.applied: list[str] = [Provenance.from_dict(provenance).dedupe_key]

    @classmethod
    def place(cls, command: PlaceOrder) -> Exam:
        order = command.as_dict()
        for key in ("kind", "provenance", "accession"):
            order.pop(key)
        return cls(
            accession=command.accession, order=order, provenance=command.provenance.as_dict()
        )

    def has_applied(self, provenance: Provenance) -> bool:
        return provenance.dedupe_key in self.applied

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def _check(self, action: ExamAction) -> ExamState:
        target = next_state(self.state, action)
        if target is None:
            raise IllegalTransition(self.accession, self.state.value, action.value)
        return target

    def cancel(self, reason: str, provenance: Provenance) -> None:
        self._check(ExamAction.CANCEL)
        self._cancelled(reason=reason, provenance=provenance.as_dict())

    def schedule(self, scheduled_at: str, provenance: Provenance) -> None:
        self._check(ExamAction.SCHEDULE)
        self._scheduled(scheduled_at=scheduled_at, provenance=provenance.as_dict())

    def start(self, provenance: Provenance) -> None:
        self._check(ExamAction.START)
        self._started(provenance=provenance.as_dict())

    def complete(self, provenance: Provenance) -> None:
        self._check(ExamAction.COMPLETE)
        self._completed(provenance=provenance.as_dict())

    def discontinue(self, reason: str, provenance: Provenance) -> None:
        self._check(ExamAction.DISCONTINUE)
        self._discontinued(reason=reason, provenance=provenance.as_dict())

    def report(self, provenance: Provenance) -> None:
        self._check(ExamAction.REPORT)
        self._reported(provenance=provenance.as_dict())

    def bill(self, provenance: Provenance) -> None:
        self._check(ExamAction.BILL)
        self._billed(provenance=provenance.as_dict())

    def _moved(self, action: ExamAction, provenance: dict[str, Any]) -> None:
        target = next_state(self.state, action)
        if target is not None:  # checked before the event was triggered
            self.state = target
        self.applied.append(Provenance.from_dict(provenance).dedupe_key)

    @event("ExamCancelled")
    def _cancelled(self, reason: str, provenance: dict[str, Any]) -> None:
        self._moved(ExamAction.CANCEL, provenance)

    @event("ExamScheduled")
    def _scheduled(self, scheduled_at: str, provenance: dict[str, Any]) -> None:
        self.order = {**self.order, "scheduled_at": scheduled_at}
        self._moved(ExamAction.SCHEDULE, provenance)

    @event("ExamStarted")
    def _started(self, provenance: dict[str, Any]) -> None:
        self._moved(ExamAction.START, provenance)

    @event("ExamCompleted")
    def _completed(self, provenance: dict[str, Any]) -> None:
        self._moved(ExamAction.COMPLETE, provenance)

    @event("ExamDiscontinued")
    def _discontinued(self, reason: str, provenance: dict[str, Any]) -> None:
        self._moved(ExamAction.DISCONTINUE, provenance)

    @event("ExamReported")
    def _reported(self, provenance: dict[str, Any]) -> None:
        self._moved(ExamAction.REPORT, provenance)

    @event("ExamBilled")
    def _billed(self, provenance: dict[str, Any]) -> None:
        self._moved(ExamAction.BILL, provenance)
