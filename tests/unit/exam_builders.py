"""Exams, provenances and paths through the lifecycle table for the domain unit tests."""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate

from domain.commands import PatientDemographics, PlaceOrder
from domain.exam import Exam
from domain.lifecycle import TRANSITIONS, ExamAction, ExamState
from domain.provenance import Provenance, Source

_numbers = itertools.count(1)


def provenance(control_id: str = "", kind: str = "hl7", actor: str = "HIS", message_id: str = "") -> Provenance:
    """A fresh provenance: each call is another inbound message unless told otherwise."""
    return Provenance(
        actor=actor,
        source=Source(
            kind=kind,
            application="HIS",
            facility="GENERAL",
            control_id=control_id or f"CTRL{next(_numbers):06d}",
            message_id=message_id,
        ),
        occurred_at="2024-03-15T10:30:00",
    )


def place_order(accession: str = "ACC0001", by: Provenance | None = None) -> PlaceOrder:
    return PlaceOrder(
        provenance=by or provenance(),
        accession=accession,
        patient=PatientDemographics(id="P0001", issuer="HOSP", name="DOE^JANE", birth_date="19800102", sex="F"),
        placer_order_number="PL0001",
        requested_procedure_id="RP0001",
        priority="STAT",
        procedure_code="CTHEAD",
        modality="CT",
    )


def perform(exam: Exam, action: ExamAction, by: Provenance | None = None) -> None:
    """Call the exam's command method for `action` (the way a workflow would)."""
    by = by or provenance()
    match action:
        case ExamAction.SCHEDULE:
            exam.schedule("2024-03-16T09:00:00", by)
        case ExamAction.START:
            exam.start(by)
        case ExamAction.COMPLETE:
            exam.complete(by)
        case ExamAction.DISCONTINUE:
            exam.discontinue("patient unwell", by)
        case ExamAction.REPORT:
            exam.report(by)
        case ExamAction.BILL:
            exam.bill(by)
        case ExamAction.CANCEL:
            exam.cancel("ordered in error", by)
        case ExamAction.UNSCHEDULE:
            exam.cancel_appointment("patient asked for another day", by)


def path_to(state: ExamState) -> list[ExamAction]:
    """The shortest list of actions that takes a new exam (ORDERED) to `state`, from the table."""
    paths: dict[ExamState, list[ExamAction]] = {ExamState.ORDERED: []}
    queue = deque([ExamState.ORDERED])
    while queue:
        current = queue.popleft()
        for (source, action), target in TRANSITIONS.items():
            if source == current and target not in paths:
                paths[target] = [*paths[current], action]
                queue.append(target)
    return paths[state]


def exam_in(state: ExamState, accession: str = "ACC0001") -> Exam:
    """A new exam driven through the table to `state`, with its events already collected."""
    exam = Exam.place(place_order(accession))
    for action in path_to(state):
        perform(exam, action)
    exam.collect_events()
    return exam


def recorded(aggregate: Aggregate) -> list[Any]:
    """The aggregate's new events; typed loosely because they are declared by name only."""
    return list(aggregate.collect_events())


def in_memory_application() -> Application[UUID]:
    return Application(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
