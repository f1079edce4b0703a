"""Commands and provenance as plain dicts: what travels through the message log and Temporal."""

from __future__ import annotations

import json

import pytest

from domain.commands import (
    CancelOrder,
    Command,
    PatientDemographics,
    RegisterPatient,
    UpdatePatient,
    command_from_dict,
    workflow_id_for,
)
from domain.provenance import SCHEMA_VERSION, Provenance, Source
from tests.unit.exam_builders import place_order, provenance

PATIENT = PatientDemographics(id="P1", issuer="HOSP", name="DOE^JANE")
COMMANDS: list[Command] = [
    place_order("ACC-1"),
    CancelOrder(provenance=provenance(), accession="ACC-1", reason="in error"),
    RegisterPatient(provenance=provenance(), patient=PATIENT, patient_class="I"),
    UpdatePatient(provenance=provenance(message_id="hl7:3"), patient=PATIENT),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.kind)
def test_a_command_survives_a_trip_through_json(command: Command) -> None:
    assert command_from_dict(json.loads(json.dumps(command.as_dict()))) == command


@pytest.mark.parametrize(
    ("command", "workflow_id"),
    [(COMMANDS[0], "exam-ACC-1"), (COMMANDS[1], "exam-ACC-1"), (COMMANDS[2], "patient-HOSP|P1"), (COMMANDS[3], "patient-HOSP|P1")],
    ids=lambda value: getattr(value, "kind", value),
)
def test_each_exam_has_one_workflow_and_each_patient_identity_another(command: Command, workflow_id: str) -> None:
    assert workflow_id_for(command) == workflow_id


def test_a_provenance_without_schema_version_or_extra_reads_as_the_current_schema() -> None:
    stored = {"actor": "HIS", "source": {"kind": "hl7", "application": "HIS"}, "occurred_at": "2024-03-15T10:30:00"}
    read = Provenance.from_dict(stored)
    assert read == Provenance(actor="HIS", source=Source(kind="hl7", application="HIS"), occurred_at="2024-03-15T10:30:00")
    assert read.schema_version == SCHEMA_VERSION
    assert read.extra == {}


def test_the_dedupe_key_is_sender_and_control_id_until_the_message_log_names_the_message() -> None:
    by_wire = Provenance(actor="HIS", source=Source(kind="hl7", application="HIS", facility="GEN", control_id="42"), occurred_at="")
    by_log = Provenance(actor="HIS", source=Source(kind="hl7", application="HIS", control_id="42", message_id="hl7:7"), occurred_at="")
    assert by_wire.dedupe_key == "hl7:HIS:GEN:42"
    assert by_log.dedupe_key == "hl7:7"
