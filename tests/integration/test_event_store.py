"""The event store on SQLite and on PostgreSQL: aggregates round-trip with their history and
provenance, ids and versions are deterministic, and the notification log is readable."""

from __future__ import annotations

from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError

from adapters.event_store import EventStore
from domain.commands import command_from_dict
from domain.exam import Exam, exam_id
from domain.lifecycle import ExamState
from domain.patient import Patient, patient_id
from tests.integration.builders import patient, place_order, provenance


def ordered_exam(accession: str, message_id: str = "hl7:1") -> Exam:
    return Exam.place(command_from_dict(place_order(accession, message_id)))  # type: ignore[arg-type]


def test_a_saved_exam_loads_with_its_events_in_order_and_their_provenance(
    store: EventStore, uid: str
) -> None:
    accession = f"ACC{uid}"
    exam = ordered_exam(accession, f"hl7:{uid}-1")
    exam.cancel("ordered in error", provenance(f"hl7:{uid}-2", control_id="CANCEL1"))
    store.save(exam)

    loaded: Exam = store.repository.get(exam_id(accession))
    assert loaded.state is ExamState.CANCELLED
    assert loaded.version == 2
    assert loaded.order["procedure_code"] == "CTHEAD"
    assert loaded.has_applied(provenance(f"hl7:{uid}-1")) and loaded.has_applied(provenance(f"hl7:{uid}-2"))

    events: list[Any] = store.events_of(exam_id(accession))
    assert [type(e).__name__ for e in events] == ["ExamOrdered", "ExamCancelled"]
    assert [e.originator_version for e in events] == [1, 2]
    assert events[0].timestamp <= events[1].timestamp
    assert events[0].provenance["source"]["message_id"] == f"hl7:{uid}-1"
    assert events[1].provenance["source"] == {
        "kind": "hl7",
        "application": "HIS",
        "facility": "GENERAL",
        "control_id": "CANCEL1",
        "message_id": f"hl7:{uid}-2",
    }
    assert events[1].provenance["actor"] == "HIS"
    assert events[1].provenance["schema_version"] == 1
    assert events[1].reason == "ordered in error"


def test_a_saved_patient_loads_with_its_updates_applied(store: EventStore, uid: str) -> None:
    demographics = patient(f"P{uid}", name="DOE^JANE")
    registered = Patient.register(demographics, "O", provenance(f"hl7:{uid}-1"))
    store.save(registered)
    reloaded: Patient = store.repository.get(patient_id(demographics.key))
    reloaded.update(patient(f"P{uid}", name="ROE^JANE"), "I", provenance(f"hl7:{uid}-2"))
    store.save(reloaded)

    loaded: Patient = store.repository.get(patient_id(f"HOSP|P{uid}"))
    assert loaded.demographics["name"] == "ROE^JANE"
    assert loaded.demographics["birth_date"] == "19800102"
    assert loaded.patient_class == "I"
    events: list[Any] = store.events_of(loaded.id)
    assert [type(e).__name__ for e in events] == ["PatientRegistered", "PatientUpdated"]
    assert events[1].changes == {"name": "ROE^JANE", "patient_class": "I"}
    assert events[1].provenance["source"]["message_id"] == f"hl7:{uid}-2"


def test_an_unknown_aggregate_is_none_rather_than_an_error(store: EventStore, uid: str) -> None:
    assert store.get_or_none(exam_id(f"NEVER{uid}")) is None


def test_placing_the_same_accession_twice_collides_on_its_deterministic_id(
    store: EventStore, uid: str
) -> None:
    accession = f"ACC{uid}"
    store.save(ordered_exam(accession, f"hl7:{uid}-1"))
    twin = ordered_exam(accession, f"hl7:{uid}-2")
    assert twin.id == exam_id(accession)

    with pytest.raises(IntegrityError):
        store.save(twin)

    events: list[Any] = store.events_of(exam_id(accession))
    assert len(events) == 1
    assert events[0].provenance["source"]["message_id"] == f"hl7:{uid}-1"


def test_two_writers_of_the_same_exam_version_cannot_both_save(store: EventStore, uid: str) -> None:
    accession = f"ACC{uid}"
    store.save(ordered_exam(accession))
    first: Exam = store.repository.get(exam_id(accession))
    second: Exam = store.repository.get(exam_id(accession))
    first.cancel("duplicate order", provenance(f"hl7:{uid}-2"))
    second.cancel("patient declined", provenance(f"hl7:{uid}-3"))
    store.save(first)

    with pytest.raises(IntegrityError):
        store.save(second)

    events: list[Any] = store.events_of(exam_id(accession))
    assert [e.originator_version for e in events] == [1, 2]
    assert events[1].reason == "duplicate order"


def test_saved_events_are_readable_in_order_as_notifications(store: EventStore, uid: str) -> None:
    before = store.max_notification_id()
    exam = ordered_exam(f"ACC{uid}", f"hl7:{uid}-1")
    exam.cancel("ordered in error", provenance(f"hl7:{uid}-2"))
    store.save(exam)
    store.save(Patient.register(patient(f"P{uid}"), "O", provenance(f"hl7:{uid}-3")))

    notifications = store.recorder.select_notifications(start=before + 1, limit=10)

    assert [(n.originator_id, n.originator_version) for n in notifications] == [
        (exam.id, 1),
        (exam.id, 2),
        (patient_id(f"HOSP|P{uid}"), 1),
    ]
    assert [n.topic.rsplit(".", 1)[-1] for n in notifications] == [
        "ExamOrdered",
        "ExamCancelled",
        "PatientRegistered",
    ]
    assert [n.id for n in notifications] == sorted(n.id for n in notifications)
    assert store.max_notification_id() == notifications[-1].id
    cancelled: Any = store.mapper.to_domain_event(notifications[1])
    assert cancelled.provenance["source"]["message_id"] == f"hl7:{uid}-2"
    assert store.recorder.select_notifications(start=notifications[-1].id + 1, limit=10) == []
