"""The Patient aggregate: registration, updates that keep what was not sent, idempotency keys,
deterministic ids, and reconstruction from stored events."""

from __future__ import annotations

from uuid import UUID

import pytest
from eventsourcing.persistence import IntegrityError

from domain.commands import PatientDemographics
from domain.patient import Patient, patient_id
from tests.unit.exam_builders import in_memory_application, provenance, recorded

JANE = PatientDemographics(id="P0001", issuer="HOSP", name="DOE^JANE", birth_date="19800102", sex="F")


def test_registering_a_patient_keeps_the_demographics_and_the_patient_class() -> None:
    patient = Patient.register(JANE, "O", provenance())
    assert patient.key == "HOSP|P0001"
    assert patient.demographics == {"id": "P0001", "issuer": "HOSP", "name": "DOE^JANE", "birth_date": "19800102", "sex": "F"}
    assert patient.patient_class == "O"
    assert patient.version == 1


def test_the_registered_event_carries_the_provenance_of_the_message() -> None:
    by = provenance(control_id="ADT1")
    [registered] = recorded(Patient.register(JANE, "O", by))
    assert type(registered).__name__ == "PatientRegistered"
    assert registered.provenance == by.as_dict()


def test_an_update_records_only_the_fields_that_changed_with_its_provenance() -> None:
    patient = Patient.register(JANE, "O", provenance())
    by = provenance(control_id="ADT2")
    patient.update(PatientDemographics(id="P0001", issuer="HOSP", name="SMITH^JANE", birth_date="19800102", sex="F"), "I", by)
    [_, updated] = recorded(patient)
    assert type(updated).__name__ == "PatientUpdated"
    assert updated.changes == {"name": "SMITH^JANE", "patient_class": "I"}
    assert updated.provenance == by.as_dict()
    assert patient.demographics["name"] == "SMITH^JANE"
    assert patient.patient_class == "I"


def test_empty_fields_in_an_update_mean_not_sent_and_keep_the_old_values() -> None:
    patient = Patient.register(JANE, "O", provenance())
    patient.update(PatientDemographics(id="P0001", issuer="HOSP", sex="U"), "", provenance())
    assert patient.demographics == {"id": "P0001", "issuer": "HOSP", "name": "DOE^JANE", "birth_date": "19800102", "sex": "U"}
    assert patient.patient_class == "O"


def test_an_update_that_changes_nothing_still_records_that_the_message_was_applied() -> None:
    patient = Patient.register(JANE, "O", provenance())
    by = provenance(control_id="ADT3")
    patient.update(JANE, "O", by)
    assert recorded(patient)[-1].changes == {}
    assert patient.has_applied(by)
    assert patient.demographics["name"] == "DOE^JANE"


def test_a_patient_knows_every_message_it_applied_and_no_other() -> None:
    registered_by, updated_by = provenance(control_id="A1"), provenance(control_id="A2")
    patient = Patient.register(JANE, "O", registered_by)
    patient.update(JANE, "I", updated_by)
    assert patient.has_applied(registered_by)
    assert patient.has_applied(updated_by)
    assert not patient.has_applied(provenance(control_id="A3"))


def test_the_patient_id_is_derived_from_issuer_and_identifier() -> None:
    assert Patient.register(JANE, "O", provenance()).id == patient_id("HOSP|P0001")
    assert patient_id("HOSP|P0001") != patient_id("OTHER|P0001")
    assert PatientDemographics(id="P0001").key == "|P0001"


def test_the_patient_id_of_a_key_never_changes_between_releases() -> None:
    assert patient_id("HOSP|P1") == UUID("5657b867-718c-5324-b273-09d9ea8a94c2")


def test_registering_the_same_identity_twice_collides_in_the_store() -> None:
    app = in_memory_application()
    app.save(Patient.register(JANE, "O", provenance()))
    with pytest.raises(IntegrityError):
        app.save(Patient.register(JANE, "I", provenance()))


def test_a_patient_rebuilt_from_its_events_equals_the_patient_that_recorded_them() -> None:
    app = in_memory_application()
    registered_by, updated_by = provenance(control_id="A1"), provenance(control_id="A2")
    patient = Patient.register(JANE, "O", registered_by)
    patient.update(PatientDemographics(id="P0001", issuer="HOSP", name="SMITH^JANE"), "I", updated_by)
    app.save(patient)
    rebuilt: Patient = app.repository.get(patient_id("HOSP|P0001"))
    assert (rebuilt.key, rebuilt.demographics, rebuilt.patient_class, rebuilt.version) == (
        "HOSP|P0001",
        {"id": "P0001", "issuer": "HOSP", "name": "SMITH^JANE", "birth_date": "19800102", "sex": "F"},
        "I",
        2,
    )
    assert rebuilt.has_applied(registered_by)
    assert rebuilt.has_applied(updated_by)
