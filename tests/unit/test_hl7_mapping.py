"""HL7 v2 messages to commands: which field each value comes from, which messages are refused
and with which acknowledgement code."""

from __future__ import annotations

import pytest

from domain.commands import CancelOrder, Command, PlaceOrder, RegisterPatient, UpdatePatient
from interfaces.hl7 import acks
from interfaces.hl7.decoding import decode
from interfaces.hl7.intake import interpret
from interfaces.hl7.mapping import Mapped, Refused, hl7_timestamp, map_message
from interfaces.hl7.message import Message, read_header
from tests.unit.hl7_builders import adt, ipc, message, msh, obr, orc, order, pid, segment, tq1, zds

RECEIVED_AT = "2024-03-15T09:00:00+00:00"


def mapped(text: str) -> Mapped:
    """The real path: bytes decoded, header read, message parsed, then mapped."""
    decoded, _ = decode(text.encode("utf-8"))
    header = read_header(decoded)
    assert header is not None
    return map_message(Message(decoded), header, RECEIVED_AT)


def commands(text: str) -> list[Command]:
    return mapped(text).commands


def the_order(*segments: str, message_type: str = "ORM^O01") -> PlaceOrder:
    [command] = commands(message(msh(message_type=message_type), pid(), *segments))
    assert isinstance(command, PlaceOrder)
    return command


def refusal(text: str) -> Refused:
    with pytest.raises(Refused) as refused:
        mapped(text)
    return refused.value


# orders


def test_a_new_orm_order_becomes_a_place_order_with_patient_and_order_fields() -> None:
    command = the_order(orc(placer="PL9", filler="FL9"), obr(accession="ACC9", procedure="CTHEAD^CT head"))
    assert command == PlaceOrder(
        provenance=command.provenance,
        accession="ACC9",
        patient=command.patient,
        placer_order_number="PL9",
        filler_order_number="FL9",
        procedure_code="CTHEAD",
        procedure_text="CT head",
    )
    assert (command.patient.id, command.patient.issuer, command.patient.name) == ("P0001", "HOSP", "DOE^JANE^Q")
    assert (command.patient.birth_date, command.patient.sex) == ("19800102", "F")


def test_the_accession_comes_from_obr18_before_ipc1() -> None:
    assert the_order(orc(), obr(accession="FROM-OBR"), ipc(accession="FROM-IPC")).accession == "FROM-OBR"


def test_the_accession_comes_from_ipc1_when_obr18_is_empty() -> None:
    assert the_order(orc(), obr(accession=""), ipc(accession="FROM-IPC")).accession == "FROM-IPC"


def test_the_requested_procedure_id_comes_from_obr19_else_ipc2() -> None:
    assert the_order(orc(), obr(requested_procedure_id="RP-OBR"), ipc(requested_procedure_id="RP-IPC")).requested_procedure_id == "RP-OBR"
    assert the_order(orc(), obr(), ipc(requested_procedure_id="RP-IPC")).requested_procedure_id == "RP-IPC"


def test_the_study_instance_uid_comes_from_ipc3_else_zds1() -> None:
    assert the_order(orc(), obr(), ipc(study_uid="1.2.3.4"), zds("9.9.9")).study_instance_uid == "1.2.3.4"
    assert the_order(orc(), obr(), zds("1.2.840.99")).study_instance_uid == "1.2.840.99"
    assert the_order(orc(), obr()).study_instance_uid == ""


def test_a_zds_sent_before_the_only_order_still_gives_its_study_instance_uid() -> None:
    assert the_order(zds("1.2.840.5"), orc(), obr()).study_instance_uid == "1.2.840.5"


def test_each_order_of_a_message_keeps_its_own_study_instance_uid() -> None:
    first, second = commands(message(msh(), pid(), orc(), obr(accession="A1"), zds("1.2.1"), orc(), obr(accession="A2")))
    assert isinstance(first, PlaceOrder)
    assert isinstance(second, PlaceOrder)
    assert first.study_instance_uid == "1.2.1"
    assert second.study_instance_uid == ""  # a study uid belongs to one requested procedure


@pytest.mark.parametrize(("code", "priority"), [("S", "STAT"), ("A", "ASAP"), ("R", "ROUTINE"), ("s", "STAT"), ("STAT", "STAT"), ("Z", "ROUTINE")])
def test_the_priority_code_in_orc7_6_is_translated(code: str, priority: str) -> None:
    assert the_order(orc(priority=code), obr()).priority == priority


@pytest.mark.parametrize(("code", "priority"), [("S", "STAT"), ("A", "ASAP"), ("R", "ROUTINE")])
def test_the_priority_falls_back_to_obr5(code: str, priority: str) -> None:
    assert the_order(orc(), obr(priority=code)).priority == priority


@pytest.mark.parametrize(("code", "priority"), [("S", "STAT"), ("A", "ASAP"), ("R", "ROUTINE")])
def test_the_priority_falls_back_to_tq1_9(code: str, priority: str) -> None:
    assert the_order(orc(), tq1(priority=code), obr(), message_type="OMI^O23").priority == priority


def test_orc7_6_wins_over_obr5_which_wins_over_tq1_9() -> None:
    assert the_order(orc(priority="S"), tq1(priority="R"), obr(priority="A")).priority == "STAT"
    assert the_order(orc(), tq1(priority="R"), obr(priority="A")).priority == "ASAP"


def test_an_order_without_any_priority_is_routine() -> None:
    assert the_order(orc(), obr()).priority == "ROUTINE"


def test_the_modality_comes_from_ipc5_else_obr24_and_only_when_it_is_a_dicom_modality() -> None:
    assert the_order(orc(), obr(modality="ct"), ipc(modality="MR")).modality == "MR"
    assert the_order(orc(), obr(modality="ct")).modality == "CT"
    assert the_order(orc(), obr(modality="XRAY")).modality == ""


def test_the_scheduled_time_comes_from_obr36_else_tq1_7_as_iso8601() -> None:
    assert the_order(orc(), obr(scheduled_at="202403161000")).scheduled_at == "2024-03-16T10:00:00"
    assert the_order(orc(), tq1(scheduled_at="20240317083000+0100"), obr()).scheduled_at == "2024-03-17T08:30:00+01:00"


def test_the_referring_physician_and_reason_come_from_obr16_and_obr31() -> None:
    command = the_order(orc(), segment("OBR", {1: "1", 16: "1234^WELBY^MARCUS^^^DR", 18: "ACC1", 31: "R51^Headache"}))
    assert command.referring_physician == "1234^WELBY^MARCUS"
    assert command.reason == "Headache"


def test_an_omi_o23_order_is_mapped_like_an_orm_o01_order() -> None:
    command = the_order(
        orc(priority="S"),
        tq1(scheduled_at="202403161000"),
        obr(accession=""),
        ipc(accession="ACC-OMI", requested_procedure_id="RP1", study_uid="1.2.3", modality="MR"),
        message_type="OMI^O23^OMI_O23",
    )
    assert (command.accession, command.requested_procedure_id, command.study_instance_uid) == ("ACC-OMI", "RP1", "1.2.3")
    assert (command.priority, command.modality, command.scheduled_at) == ("STAT", "MR", "2024-03-16T10:00:00")


@pytest.mark.parametrize("message_type", ["ORM^O01", "OMI^O23^OMI_O23"])
def test_an_order_control_ca_becomes_a_cancel_with_the_reason_from_orc16(message_type: str) -> None:
    [command] = commands(message(msh(message_type=message_type), pid(), orc(control="CA", reason="DUP^Duplicate order"), obr(accession="ACC-X")))
    assert command == CancelOrder(provenance=command.provenance, accession="ACC-X", reason="Duplicate order")


def test_a_cancel_can_name_its_accession_in_ipc1() -> None:
    [command] = commands(message(msh(message_type="OMI^O23"), pid(), orc(control="CA"), obr(accession=""), ipc(accession="ACC-I")))
    assert isinstance(command, CancelOrder)
    assert command.accession == "ACC-I"


def test_a_message_with_two_orders_gives_two_commands_in_order() -> None:
    result = mapped(message(msh(), pid(), orc(), obr(accession="A1"), orc(control="CA"), obr(accession="A2")))
    assert [(type(c).__name__, c.accession) for c in result.commands] == [("PlaceOrder", "A1"), ("CancelOrder", "A2")]  # type: ignore[attr-defined]
    assert result.accession == "A1"
    assert result.patient_id == "P0001"


def test_the_provenance_names_the_sender_and_the_control_id_and_the_time_in_msh7() -> None:
    command = commands(order(control_id="MSG-77"))[0]
    assert command.provenance.actor == "HIS"
    assert (command.provenance.source.kind, command.provenance.source.application) == ("hl7", "HIS")
    assert (command.provenance.source.facility, command.provenance.source.control_id) == ("GENERAL", "MSG-77")
    assert command.provenance.occurred_at == "2024-03-15T10:30:00"


def test_an_unreadable_msh7_makes_the_arrival_time_the_time_of_the_event() -> None:
    [command] = commands(message(msh(sent_at="yesterday"), pid(), orc(), obr()))
    assert command.provenance.occurred_at == RECEIVED_AT


def test_the_patient_id_falls_back_to_pid2_for_v23_feeds() -> None:
    [command] = commands(message(msh(), segment("PID", {1: "1", 2: "OLD1^^^LEGACY", 5: "DOE^JOHN"}), orc(), obr()))
    assert isinstance(command, PlaceOrder)
    assert (command.patient.id, command.patient.issuer) == ("OLD1", "LEGACY")


def test_escape_sequences_in_fields_are_unescaped() -> None:
    [command] = commands(message(msh(), pid(name="O\\F\\BRIEN^ANN\\T\\MARIE"), orc(), obr(accession="A\\S\\1")))
    assert isinstance(command, PlaceOrder)
    assert command.patient.name == "O|BRIEN^ANN&MARIE"
    assert command.accession == "A^1"


def test_an_accession_with_a_lone_backslash_is_not_cut_short() -> None:
    # cut at the backslash, 'ACC\2' would become 'ACC' and land on another patient's exam
    assert the_order(orc(), obr(accession="ACC\\2")).accession == "ACC\\2"


def test_an_explicit_hl7_null_reads_as_empty() -> None:
    assert the_order(orc(), obr(accession='""'), ipc(accession="ACC-IPC")).accession == "ACC-IPC"


# refused orders


@pytest.mark.parametrize("control", ["NW", "CA"])
def test_an_order_without_an_accession_is_an_application_error(control: str) -> None:
    # a cancel may name its order by placer/filler number instead; this one names none at all
    refused = refusal(message(msh(), pid(), orc(control=control, placer="", filler=""), obr(accession="")))
    assert refused.code == "AE"
    assert "without an accession number" in refused.reason
    assert refused.condition == acks.REQUIRED_FIELD_MISSING


def test_an_order_control_other_than_nw_ca_xo_or_sc_is_rejected_naming_the_control() -> None:
    refused = refusal(message(msh(), pid(), orc(control="RP"), obr()))
    assert (refused.code, refused.condition, refused.location) == ("AR", acks.UNSUPPORTED_EVENT_CODE, "ORC^1^1")
    assert "RP" in refused.reason


def test_an_order_message_without_an_orc_is_an_application_error() -> None:
    refused = refusal(message(msh(), pid(), obr()))
    assert (refused.code, refused.condition) == ("AE", acks.SEGMENT_SEQUENCE_ERROR)


def test_an_order_without_a_patient_is_an_application_error() -> None:
    assert refusal(message(msh(), orc(), obr())).reason == "PID segment is missing"
    assert refusal(message(msh(), segment("PID", {1: "1", 5: "DOE"}), orc(), obr())).code == "AE"


# patients


@pytest.mark.parametrize("trigger", ["A01", "A04"])
def test_an_admission_or_registration_registers_the_patient(trigger: str) -> None:
    [command] = commands(adt(trigger, patient_id="P42", name="ROE^RICHARD", patient_class="E"))
    assert isinstance(command, RegisterPatient)
    assert (command.patient.id, command.patient.issuer, command.patient.name) == ("P42", "HOSP", "ROE^RICHARD")
    assert command.patient_class == "E"


def test_an_a08_updates_the_patient() -> None:
    result = mapped(adt("A08", patient_id="P42"))
    [command] = result.commands
    assert isinstance(command, UpdatePatient)
    assert command.patient.id == "P42"
    assert (result.patient_id, result.accession) == ("P42", "")


def test_an_adt_event_radflow_does_not_handle_is_rejected_as_an_unsupported_event() -> None:
    refused = refusal(adt("A02"))
    assert (refused.code, refused.condition, refused.location) == ("AR", acks.UNSUPPORTED_EVENT_CODE, "MSH^1^9")
    assert refused.reason == "unsupported message type ADT^A02"


@pytest.mark.parametrize("message_type", ["MDM^T02", "DFT^P03", "ZZZ^Z01"])
def test_an_unsupported_message_type_is_rejected(message_type: str) -> None:
    refused = refusal(message(msh(message_type=message_type), pid()))
    assert refused.code == "AR"
    assert refused.reason.startswith("unsupported message type")
    assert refused.condition == acks.UNSUPPORTED_MESSAGE_TYPE


@pytest.mark.parametrize("message_type", ["ORM^O02", "SIU^S26", "ORU^R30"])
def test_an_unknown_trigger_of_a_supported_message_is_an_unsupported_event(message_type: str) -> None:
    refused = refusal(message(msh(message_type=message_type), pid()))
    assert (refused.code, refused.condition) == ("AR", acks.UNSUPPORTED_EVENT_CODE)


def test_a_message_type_that_is_not_a_word_is_rejected_as_unreadable() -> None:
    refused = refusal(message(msh(message_type="12^X"), pid()))
    assert refused.code == "AR"
    assert refused.reason.startswith("unreadable message type")


def test_a_message_without_msh9_is_rejected() -> None:
    refused = refusal(message(msh(message_type=""), pid()))
    assert (refused.code, refused.condition, refused.location) == ("AR", acks.REQUIRED_FIELD_MISSING, "MSH^1^9")
    assert "MSH-9" in refused.reason


# the whole intake


def test_intake_turns_an_accepted_order_into_commands_for_the_exam_workflow() -> None:
    inbound = interpret(order(accession="ACC-IN", control_id="C-IN").encode(), "10.0.0.1:5000", RECEIVED_AT)
    assert inbound.refusal is None
    assert (inbound.control_id, inbound.message_type, inbound.sending_application) == ("C-IN", "ORM^O01", "HIS")
    assert (inbound.accession, inbound.patient_id) == ("ACC-IN", "P0001")
    [entry] = inbound.commands
    assert entry["workflow_id"] == "exam-ACC-IN"
    assert entry["command"]["kind"] == "place_order"


def test_intake_rejects_a_message_without_a_control_id() -> None:
    inbound = interpret(order(control_id="").encode(), "peer", RECEIVED_AT)
    assert inbound.refusal is not None
    assert inbound.refusal[0] == "AR"
    assert "MSH-10" in inbound.refusal[1]
    assert inbound.commands == []


def test_intake_rejects_a_message_with_an_msh_that_is_not_first() -> None:
    inbound = interpret(("PID|1||P1\r" + order()).encode(), "peer", RECEIVED_AT)
    assert inbound.refusal is not None
    assert inbound.refusal[0] == "AR"


@pytest.mark.parametrize("separator", ["\r", "\n", "\r\n"], ids=["CR", "LF", "CRLF"])
def test_intake_maps_the_same_order_whatever_the_segment_separator(separator: str) -> None:
    inbound = interpret(order(accession="ACC-S", separator=separator).encode(), "peer", RECEIVED_AT)
    assert inbound.refusal is None
    assert inbound.accession == "ACC-S"


# timestamps


@pytest.mark.parametrize(
    ("value", "iso"),
    [
        ("2024", "2024-01-01T00:00:00"),
        ("202403", "2024-03-01T00:00:00"),
        ("20240315", "2024-03-15T00:00:00"),
        ("2024031510", "2024-03-15T10:00:00"),
        ("202403151030", "2024-03-15T10:30:00"),
        ("20240315103045", "2024-03-15T10:30:45"),
        ("20240315103045.1234", "2024-03-15T10:30:45"),
        ("20240315103045+0100", "2024-03-15T10:30:45+01:00"),
        ("20240315103045.5-0500", "2024-03-15T10:30:45-05:00"),
        ("20240315+01", "2024-03-15T00:00:00"),
        ("20240315+9999", "2024-03-15T00:00:00"),
        ("20240315-2400", "2024-03-15T00:00:00"),
        ("20240315+0160", "2024-03-15T00:00:00"),
        ("20240315-000\u0660", "2024-03-15T00:00:00"),
        (" 20240315 ", "2024-03-15T00:00:00"),
        ("", ""),
        ("2024-03-15", ""),
        ("20241315", ""),
        ("2024031", ""),
        ("yesterday", ""),
    ],
)
def test_hl7_timestamps_become_iso8601_or_empty_when_unreadable(value: str, iso: str) -> None:
    assert hl7_timestamp(value) == iso
