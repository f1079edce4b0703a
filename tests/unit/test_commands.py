"""Commands and provenance as plain dicts: what travels through the message log and Temporal."""

from __future__ import annotations

import json

import pytest

from domain.commands import (
    CancelOrder,
    Command,
    CompleteProcedure,
    DiscontinueProcedure,
    PatientDemographics,
    PerformedSeries,
    ReferencedInstance,
    RegisterPatient,
    StartProcedure,
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
SERIES = (
    PerformedSeries("1.2.3", "axial", "HEAD", "RADFLOW", (ReferencedInstance("1.2.840.10008.5.1.4.1.1.2", "1.2.3.1"),)),
    PerformedSeries("1.2.4"),
)
MPPS = provenance(kind="dicom", actor="CT01", message_id="mpps:9")
PROCEDURE_COMMANDS: list[Command] = [
    StartProcedure(provenance=MPPS, accession="ACC-1", mpps_uid="1.2.9", performed_station_ae="CT01", started_at="2024-03-16T09:00:00"),
    CompleteProcedure(provenance=MPPS, accession="ACC-1", mpps_uid="1.2.9", ended_at="2024-03-16T09:30:00", series=SERIES),
    DiscontinueProcedure(provenance=MPPS, accession="ACC-1", mpps_uid="1.2.9", series=SERIES[:1], reason="110526^Resource failure^DCM"),
]


@pytest.mark.parametrize("command", [*COMMANDS, *PROCEDURE_COMMANDS], ids=lambda c: c.kind)
def test_a_command_survives_a_trip_through_json(command: Command) -> None:
    assert command_from_dict(json.loads(json.dumps(command.as_dict()))) == command


@pytest.mark.parametrize(
    ("command", "workflow_id"),
    [(COMMANDS[0], "exam-ACC-1"), (COMMANDS[1], "exam-ACC-1"), (COMMANDS[2], "patient-HOSP|P1"), (COMMANDS[3], "patient-HOSP|P1")],
    ids=lambda value: getattr(value, "kind", value),
)
def test_each_exam_has_one_workflow_and_each_patient_identity_another(command: Command, workflow_id: str) -> None:
    assert workflow_id_for(command) == workflow_id


@pytest.mark.parametrize("command", PROCEDURE_COMMANDS, ids=lambda c: c.kind)
def test_every_mpps_command_goes_to_the_workflow_of_its_exam(command: Command) -> None:
    assert workflow_id_for(command) == "exam-ACC-1"


def test_referenced_series_travel_as_plain_lists_and_dicts() -> None:
    data = json.loads(json.dumps(PROCEDURE_COMMANDS[1].as_dict()))
    assert data["series"][0]["instances"] == [{"sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "sop_instance_uid": "1.2.3.1"}]
    assert data["series"][1] == {"series_instance_uid": "1.2.4", "description": "", "protocol_name": "", "retrieve_ae_title": "", "instances": []}


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
