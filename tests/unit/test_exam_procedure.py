"""The Exam and its performed procedure step (MPPS): what the modality said is kept in the
events, only the step that started an exam may end it, and exams stored before these events
carried MPPS data still load."""

from __future__ import annotations

from typing import Any

import pytest
from eventsourcing.persistence import StoredEvent

from domain.commands import PerformedSeries, ReferencedInstance
from domain.errors import DomainError, ForeignProcedureStep, IllegalTransition
from domain.exam import Exam, exam_id
from domain.lifecycle import ExamState
from tests.unit.exam_builders import exam_in, in_memory_application, place_order, provenance, recorded

SERIES = (
    PerformedSeries(
        series_instance_uid="1.2.3.1",
        description="axial",
        protocol_name="HEAD",
        instances=(ReferencedInstance("1.2.840.10008.5.1.4.1.1.2", "1.2.3.1.1"), ReferencedInstance("1.2.840.10008.5.1.4.1.1.2", "1.2.3.1.2")),
    ),
)
SERIES_AS_STORED = [
    {
        "series_instance_uid": "1.2.3.1",
        "description": "axial",
        "protocol_name": "HEAD",
        "retrieve_ae_title": "",
        "instances": [
            {"sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "sop_instance_uid": "1.2.3.1.1"},
            {"sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "sop_instance_uid": "1.2.3.1.2"},
        ],
    }
]


def started(accession: str = "ACC-P", mpps_uid: str = "1.2.9.1") -> Exam:
    exam = exam_in(ExamState.SCHEDULED, accession)
    exam.start(provenance(kind="dicom"), mpps_uid=mpps_uid, performed_station_ae="CT01", started_at="2024-03-16T09:02:00")
    exam.collect_events()
    return exam


def test_starting_records_the_step_the_station_and_the_start_in_the_started_event() -> None:
    exam = exam_in(ExamState.SCHEDULED)
    by = provenance(kind="dicom", actor="CT01")
    exam.start(
        by,
        mpps_uid="1.2.9.1",
        performed_station_ae="CT01",
        procedure_step_id="PPS7",
        started_at="2024-03-16T09:02:00",
        modality="CT",
        study_instance_uid="1.2.9.100",
    )
    [event] = recorded(exam)
    assert type(event).__name__ == "ExamStarted"
    assert (event.mpps_uid, event.performed_station_ae, event.procedure_step_id) == ("1.2.9.1", "CT01", "PPS7")
    assert (event.started_at, event.modality, event.study_instance_uid) == ("2024-03-16T09:02:00", "CT", "1.2.9.100")
    assert event.provenance == by.as_dict()
    assert exam.state is ExamState.IN_PROGRESS
    assert exam.mpps_uid == "1.2.9.1"


def test_completing_records_the_end_and_every_referenced_series_and_instance() -> None:
    exam = started()
    exam.complete(provenance(kind="dicom"), mpps_uid="1.2.9.1", ended_at="2024-03-16T09:30:00", series=SERIES)
    [event] = recorded(exam)
    assert type(event).__name__ == "ExamCompleted"
    assert (event.mpps_uid, event.ended_at) == ("1.2.9.1", "2024-03-16T09:30:00")
    assert event.series == SERIES_AS_STORED
    assert exam.state is ExamState.COMPLETED


def test_discontinuing_records_the_reason_and_what_was_acquired_before_stopping() -> None:
    exam = started()
    exam.discontinue("110526^Resource failure^DCM", provenance(kind="dicom"), mpps_uid="1.2.9.1", ended_at="x", series=SERIES)
    [event] = recorded(exam)
    assert type(event).__name__ == "ExamDiscontinued"
    assert (event.reason, event.mpps_uid, event.series) == ("110526^Resource failure^DCM", "1.2.9.1", SERIES_AS_STORED)
    assert exam.state is ExamState.DISCONTINUED


@pytest.mark.parametrize("end", ["complete", "discontinue"])
def test_a_step_that_did_not_start_the_exam_cannot_end_it(end: str) -> None:
    exam = started("ACC-F", mpps_uid="1.2.9.1")
    version, applied = exam.version, list(exam.applied)
    by = provenance(kind="dicom")
    with pytest.raises(ForeignProcedureStep) as refused:
        if end == "complete":
            exam.complete(by, mpps_uid="1.2.9.2")
        else:
            exam.discontinue("stopped", by, mpps_uid="1.2.9.2")
    assert str(refused.value) == "exam ACC-F: performed procedure step 1.2.9.2 did not start it (started by 1.2.9.1)"
    assert isinstance(refused.value, DomainError)
    assert (exam.state, exam.version, exam.applied, exam.pending_events) == (ExamState.IN_PROGRESS, version, applied, [])
    assert not exam.has_applied(by)


def test_an_exam_started_without_a_step_can_be_ended_by_any_step_and_the_reverse() -> None:
    by_person = exam_in(ExamState.IN_PROGRESS, "ACC-1")  # started by the table's path, no step
    by_person.complete(provenance(kind="dicom"), mpps_uid="1.2.9.5")
    by_step = started("ACC-2")
    by_step.complete(provenance(kind="api"))
    assert by_person.state is by_step.state is ExamState.COMPLETED


def test_the_lifecycle_is_checked_before_the_step() -> None:
    exam = exam_in(ExamState.ORDERED, "ACC-O")
    with pytest.raises(IllegalTransition, match="exam ACC-O: cannot complete while ordered"):
        exam.complete(provenance(kind="dicom"), mpps_uid="1.2.9.1")


def test_a_rebuilt_exam_remembers_the_step_that_started_it_and_keeps_refusing_others() -> None:
    app = in_memory_application()
    exam = Exam.place(place_order("ACC-R"))
    exam.start(provenance(kind="dicom"), mpps_uid="1.2.9.1")
    app.save(exam)
    rebuilt: Exam = app.repository.get(exam_id("ACC-R"))
    assert rebuilt.mpps_uid == "1.2.9.1"
    with pytest.raises(ForeignProcedureStep):
        rebuilt.complete(provenance(kind="dicom"), mpps_uid="1.2.9.2")
    rebuilt.complete(provenance(kind="dicom"), mpps_uid="1.2.9.1", series=SERIES)
    app.save(rebuilt)
    *_, completed = app.events.get(exam_id("ACC-R"))
    assert completed.series == SERIES_AS_STORED  # type: ignore[attr-defined]


# events stored before MPPS existed (class_version 1)


V1_SHAPES: dict[str, dict[str, Any]] = {
    "ExamStarted": {"provenance": provenance().as_dict()},
    "ExamCompleted": {"provenance": provenance().as_dict()},
    "ExamDiscontinued": {"reason": "patient unwell", "provenance": provenance().as_dict()},
}


def _as_version_1(app: Any, event: Any) -> StoredEvent:
    """The stored form this event had before MPPS: only its version-1 fields, no class_version."""
    stored = app.mapper.to_stored_event(event)
    state = app.mapper.transcoder.decode(stored.state)
    kept = {k: v for k, v in state.items() if k in ("timestamp", *V1_SHAPES[type(event).__name__])}
    return StoredEvent(stored.originator_id, stored.originator_version, stored.topic, app.mapper.transcoder.encode(kept))


@pytest.mark.parametrize("final", ["complete", "discontinue"])
def test_exams_stored_before_mpps_load_with_empty_mpps_fields(final: str) -> None:
    app = in_memory_application()
    exam = Exam.place(place_order("ACC-OLD"))
    exam.start(provenance())
    if final == "complete":
        exam.complete(provenance())
    else:
        exam.discontinue("patient unwell", provenance())
    events = recorded(exam)
    stored = [app.mapper.to_stored_event(e) for e in events[:-2]] + [_as_version_1(app, e) for e in events[-2:]]
    assert all(b"class_version" not in s.state and b"mpps_uid" not in s.state for s in stored[-2:])
    app.recorder.insert_events(stored)

    started_event, ended_event = list(app.events.get(exam_id("ACC-OLD")))[-2:]
    rebuilt: Exam = app.repository.get(exam_id("ACC-OLD"))

    assert (started_event.mpps_uid, started_event.performed_station_ae, started_event.started_at) == ("", "", "")  # type: ignore[attr-defined]
    assert (started_event.modality, started_event.study_instance_uid, started_event.procedure_step_id) == ("", "", "")  # type: ignore[attr-defined]
    assert (ended_event.mpps_uid, ended_event.ended_at, ended_event.series) == ("", "", [])  # type: ignore[attr-defined]
    assert rebuilt.state is (ExamState.COMPLETED if final == "complete" else ExamState.DISCONTINUED)
    assert rebuilt.mpps_uid == ""
    if final == "discontinue":
        assert ended_event.reason == "patient unwell"  # type: ignore[attr-defined]
