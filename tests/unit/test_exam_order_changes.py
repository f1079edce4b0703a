"""Order changes (XO), appointments (SIU) and external reports (ORU) on the Exam aggregate."""

from __future__ import annotations

from typing import Any, cast

import pytest
from eventsourcing.application import Application

from domain.errors import IllegalTransition, OrderFrozen
from domain.exam import Exam
from domain.lifecycle import ExamAction, ExamState
from tests.unit.exam_builders import perform, place_order, provenance


def exam_in(*actions: ExamAction) -> Exam:
    exam = Exam.place(place_order())
    for action in actions:
        perform(exam, action)
    exam.collect_events()
    return exam


def test_an_order_change_records_only_what_differs_and_nothing_when_nothing_does() -> None:
    exam = exam_in()
    assert exam.modify({"modality": "MR", "priority": "STAT", "accession": "X", "patient": "Y"}, provenance())
    [event] = exam.collect_events()
    assert type(event).__name__ == "OrderModified"
    assert cast(Any, event).changes == {"modality": "MR"}
    assert exam.order["modality"] == "MR"
    assert exam.modify({"modality": "MR", "procedure_text": ""}, provenance()) is False
    assert exam.collect_events() == []


@pytest.mark.parametrize("state", [ExamAction.START, ExamAction.CANCEL])
def test_an_order_cannot_change_once_begun_or_cancelled(state: ExamAction) -> None:
    exam = exam_in(state)
    with pytest.raises(OrderFrozen):
        exam.modify({"modality": "MR"}, provenance())


def test_an_appointment_books_moves_and_cancels_back_to_ordered() -> None:
    exam = exam_in()
    exam.schedule(
        "2024-03-16T09:00:00", provenance(), appointment_id="A1", location="CT room 1", duration_min=20
    )
    exam.schedule("2024-03-17T09:00:00", provenance(), appointment_id="A1")
    exam.cancel_appointment("patient asked", provenance(), appointment_id="A1")
    assert exam.state is ExamState.ORDERED
    assert exam.order["scheduled_at"] == ""
    booked, moved, cancelled = exam.collect_events()
    assert isinstance(booked, Exam.ExamScheduled) and isinstance(moved, Exam.ExamScheduled)
    assert (booked.location, booked.duration_min, moved.scheduled_at) == (
        "CT room 1",
        20,
        "2024-03-17T09:00:00",
    )
    assert type(cancelled).__name__ == "AppointmentCancelled"
    with pytest.raises(IllegalTransition):
        exam.cancel_appointment("again", provenance())


def test_a_final_report_moves_to_reported_a_preliminary_one_does_not() -> None:
    exam = exam_in(ExamAction.START, ExamAction.COMPLETE)
    exam.report(provenance(), text="prelim", result_status="P", author="DR^A")
    assert exam.state is ExamState.COMPLETED
    exam.report(provenance(), text="No acute findings.", result_status="F", author="DR^A", source="external")
    assert exam.state is ExamState.REPORTED
    prelim, final = exam.collect_events()
    assert type(prelim).__name__ == "PreliminaryReportRecorded"
    assert (final.text, final.source) == ("No acute findings.", "external")
    with pytest.raises(IllegalTransition):
        exam.report(provenance(), text="late prelim", result_status="P")


def test_scheduled_and_reported_events_round_trip_and_version_1_states_are_upcast() -> None:
    app: Application = Application()
    exam = Exam.place(place_order())
    exam.schedule("2024-03-16T09:00:00", provenance(), appointment_id="A1")
    for action in (ExamAction.START, ExamAction.COMPLETE):
        perform(exam, action)
    exam.report(provenance(), text="ok", author="DR^A")
    app.save(exam)
    loaded: Exam = app.repository.get(exam.id)
    assert (loaded.state, loaded.version) == (ExamState.REPORTED, exam.version)
    scheduled = {"scheduled_at": "2024", "provenance": {}}
    Exam.ExamScheduled.upcast_v1_v2(scheduled)
    assert scheduled == {
        "scheduled_at": "2024",
        "provenance": {},
        "appointment_id": "",
        "location": "",
        "duration_min": 0,
    }
    reported: dict[str, object] = {"provenance": {}}
    Exam.ExamReported.upcast_v1_v2(reported)
    assert reported["result_status"] == "F" and reported["text"] == ""


def test_a_merge_moves_the_exam_in_any_state_once() -> None:
    exam = exam_in(ExamAction.CANCEL)
    survivor = {"id": "P9", "issuer": "HOSP", "name": "DOE^JANE", "birth_date": "", "sex": "F"}
    assert exam.change_patient(survivor, "HOSP|P0001", "merge", provenance())
    assert exam.order["patient"]["id"] == "P9"
    assert exam.change_patient(survivor, "HOSP|P0001", "merge", provenance()) is False
