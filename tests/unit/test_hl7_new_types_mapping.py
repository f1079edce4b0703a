"""The new inbound types of the interface engine to commands: discharge, cancel admit, A31,
merges (A40/A47), order change (XO) and status (SC), OMG, appointments (SIU) and external
reports (ORU); each refusal with its ACK code, HL7 0357 condition and ERR location."""

from __future__ import annotations

import pytest

from domain.commands import (
    CancelAdmission,
    CancelAppointment,
    CancelOrder,
    CompleteProcedure,
    DischargePatient,
    DiscontinueProcedure,
    MergePatients,
    ModifyOrder,
    PlaceOrder,
    RecordReport,
    ScheduleExam,
    StartProcedure,
    UpdatePatient,
    workflow_id_for,
)
from interfaces.hl7 import acks
from interfaces.hl7.decoding import decode
from interfaces.hl7.mapping import Mapped, Refused, map_message
from interfaces.hl7.message import Message, read_header
from tests.unit.hl7_builders import message, msh, obr, orc, pid, segment, tq1

RECEIVED_AT = "2024-03-15T09:00:00+00:00"


def mapped(text: str) -> Mapped:
    decoded, _ = decode(text.encode("utf-8"))
    header = read_header(decoded)
    assert header is not None
    return map_message(Message(decoded), header, RECEIVED_AT)


def refusal(text: str) -> Refused:
    with pytest.raises(Refused) as refused:
        mapped(text)
    return refused.value


def pv1(patient_class: str = "I", discharged_at: str = "") -> str:
    fields = {1: "1", 2: patient_class}
    if discharged_at:
        fields[45] = discharged_at
    return segment("PV1", fields)


def mrg(prior: str = "OLD1^^^HOSP", name: str = "") -> str:
    return segment("MRG", {1: prior, 7: name} if name else {1: prior})


def adt(trigger: str, *body: str) -> str:
    return message(msh(message_type=f"ADT^{trigger}"), segment("EVN", {1: trigger}), *body)


# --- ADT ------------------------------------------------------------------------------------


def test_a03_discharges_the_patient_at_pv1_45() -> None:
    [command] = mapped(adt("A03", pid(), pv1(discharged_at="202403151200"))).commands
    assert isinstance(command, DischargePatient)
    assert command.patient.id == "P0001"
    assert command.discharged_at == "2024-03-15T12:00:00"
    assert workflow_id_for(command) == "patient-HOSP|P0001"


def test_a11_cancels_the_admission_and_a31_updates_the_patient() -> None:
    [cancel] = mapped(adt("A11", pid(), pv1())).commands
    [update] = mapped(adt("A31", pid(name="ROE^RICHARD"), pv1(patient_class="O"))).commands
    assert isinstance(cancel, CancelAdmission) and cancel.patient.id == "P0001"
    assert isinstance(update, UpdatePatient)
    assert (update.patient.name, update.patient_class) == ("ROE^RICHARD", "O")


def test_a40_merges_the_prior_mrg1_into_the_survivor_in_pid3() -> None:
    [merge] = mapped(adt("A40", pid(patient_id="NEW1"), mrg("OLD1^^^OTHER", name="DOE^JANE"))).commands
    assert isinstance(merge, MergePatients)
    assert (merge.patient.id, merge.patient.issuer) == ("NEW1", "HOSP")
    assert (merge.prior.id, merge.prior.issuer, merge.prior.name) == ("OLD1", "OTHER", "DOE^JANE")
    assert merge.how == "merge"
    assert workflow_id_for(merge) == "patient-HOSP|NEW1"


def test_the_prior_issuer_falls_back_to_the_survivors() -> None:
    [merge] = mapped(adt("A40", pid(patient_id="NEW1"), mrg("OLD1"))).commands
    assert isinstance(merge, MergePatients)
    assert merge.prior.key == "HOSP|OLD1"


def test_an_a40_with_two_pid_mrg_pairs_gives_one_merge_each() -> None:
    text = adt("A40", pid(patient_id="S1"), mrg("P1"), pid(patient_id="S2"), pv1(), mrg("P2"))
    merges = mapped(text).commands
    assert [(m.patient.id, m.prior.id) for m in merges if isinstance(m, MergePatients)] == [
        ("S1", "P1"),
        ("S2", "P2"),
    ]


def test_an_a40_without_mrg_is_refused_ae_naming_mrg_1() -> None:
    refused = refusal(adt("A40", pid(patient_id="NEW1")))
    assert (refused.code, refused.condition, refused.location) == (
        "AE",
        acks.REQUIRED_FIELD_MISSING,
        "MRG^1^1",
    )
    second = refusal(adt("A40", pid(patient_id="S1"), mrg("P1"), pid(patient_id="S2")))
    assert second.location == "MRG^2^1"


def test_an_a40_naming_the_same_patient_twice_is_refused() -> None:
    refused = refusal(adt("A40", pid(patient_id="SAME"), mrg("SAME^^^HOSP")))
    assert refused.code == "AE" and "same patient" in refused.reason


def test_a47_is_an_identifier_change() -> None:
    [change] = mapped(adt("A47", pid(patient_id="NEWID"), mrg("OLDID^^^HOSP"))).commands
    assert isinstance(change, MergePatients)
    assert (change.patient.id, change.prior.id, change.how) == ("NEWID", "OLDID", "identifier_change")


# --- orders: XO and SC ------------------------------------------------------------------------


def orm(*groups: str, message_type: str = "ORM^O01") -> str:
    return message(msh(message_type=message_type), pid(), *groups)


def test_xo_becomes_modify_order_with_only_the_fields_the_message_carries() -> None:
    [change] = mapped(orm(orc("XO"), obr(procedure="MRKNEE^MR knee", modality="MR"))).commands
    assert isinstance(change, ModifyOrder)
    assert change.accession == "ACC0001"
    assert change.changes == {
        "placer_order_number": "PL0001",
        "filler_order_number": "FL0001",
        "procedure_code": "MRKNEE",
        "procedure_text": "MR knee",
        "modality": "MR",
    }


def test_nw_and_xo_read_the_same_fields() -> None:
    group = (orc("NW", priority="S"), obr(scheduled_at="20240320080000"))
    [order] = mapped(orm(*group)).commands
    [change] = mapped(orm(orc("XO", priority="S"), group[1])).commands
    assert isinstance(order, PlaceOrder) and isinstance(change, ModifyOrder)
    for name, value in change.changes.items():
        assert getattr(order, name) == value
    assert change.changes["priority"] == "STAT"


def sc(status: str, *extra: str, accession: str = "ACC0001", scheduled_at: str = "") -> str:
    return orm(
        segment("ORC", {1: "SC", 2: "PL0001", 3: "FL0001", 5: status, 9: "20240315110000"}),
        *extra,
        obr(accession=accession, scheduled_at=scheduled_at),
    )


def test_sc_with_status_sc_schedules_the_exam_at_obr36_or_tq1_7() -> None:
    [from_obr] = mapped(sc("SC", scheduled_at="202403201000")).commands
    [from_tq1] = mapped(sc("SC", tq1(scheduled_at="202403211100"))).commands
    assert isinstance(from_obr, ScheduleExam) and from_obr.scheduled_at == "2024-03-20T10:00:00"
    assert isinstance(from_tq1, ScheduleExam) and from_tq1.scheduled_at == "2024-03-21T11:00:00"


def test_sc_scheduled_without_a_time_is_refused_ae() -> None:
    refused = refusal(sc("SC"))
    assert (refused.code, refused.condition) == ("AE", acks.REQUIRED_FIELD_MISSING)


@pytest.mark.parametrize(
    ("status", "kind"),
    [("IP", StartProcedure), ("CM", CompleteProcedure), ("CA", CancelOrder), ("DC", DiscontinueProcedure)],
)
def test_sc_statuses_map_to_the_exam_transitions(status: str, kind: type) -> None:
    [command] = mapped(sc(status)).commands
    assert isinstance(command, kind)
    assert getattr(command, "accession", None) == "ACC0001"
    if hasattr(command, "mpps_uid"):
        assert command.mpps_uid == ""


@pytest.mark.parametrize("status", ["", "HD", "ZZ"])
def test_other_sc_statuses_are_refused_ar_naming_orc5(status: str) -> None:
    refused = refusal(sc(status))
    assert (refused.code, refused.condition, refused.location) == (
        "AR",
        acks.UNSUPPORTED_EVENT_CODE,
        "ORC^1^5",
    )
    assert "ORC-5" in refused.reason


def test_each_order_of_a_multi_order_message_keeps_its_own_err_location() -> None:
    text = orm(orc("NW"), obr("A1"), segment("ORC", {1: "SC", 2: "P2", 5: "ZZ"}), obr("A2"))
    assert refusal(text).location == "ORC^2^5"


def test_an_order_named_only_by_order_number_is_emitted_with_an_empty_accession() -> None:
    result = mapped(orm(orc("XO", placer="PL9", filler="FL9"), obr(accession="", procedure="X^Y")))
    [change] = result.commands
    assert isinstance(change, ModifyOrder) and change.accession == ""
    assert result.order_numbers == [("PL9", "FL9")]


def test_a_cancel_without_accession_or_order_number_is_refused_ae() -> None:
    refused = refusal(orm(orc("CA", placer="", filler=""), obr(accession="")))
    assert (refused.code, refused.location) == ("AE", "OBR^1^18")


def test_a_new_order_without_accession_is_still_refused_even_with_order_numbers() -> None:
    assert refusal(orm(orc("NW"), obr(accession=""))).code == "AE"


@pytest.mark.parametrize("control", ["NW", "CA", "XO"])
def test_omg_o19_is_handled_like_omi(control: str) -> None:
    [command] = mapped(orm(orc(control), obr(), message_type="OMG^O19")).commands
    assert isinstance(command, (PlaceOrder, CancelOrder, ModifyOrder))
    assert command.accession == "ACC0001"


def test_unsupported_order_controls_stay_ar_201() -> None:
    refused = refusal(orm(orc("RP"), obr()))
    assert (refused.code, refused.condition, refused.location) == (
        "AR",
        acks.UNSUPPORTED_EVENT_CODE,
        "ORC^1^1",
    )


# --- SIU ----------------------------------------------------------------------------------------


def siu(trigger: str, sch: dict[int, str], *body: str) -> str:
    return message(msh(message_type=f"SIU^{trigger}"), segment("SCH", sch), pid(), *body)


def test_s12_books_the_exam_named_by_its_order_numbers() -> None:
    sch = {1: "APT1", 9: "30", 10: "MIN", 11: "^^^20240316100000", 26: "PL7", 27: "FL7"}
    result = mapped(siu("S12", sch, segment("AIL", {1: "1", 3: "CT^Room 2^Bed 1"})))
    [book] = result.commands
    assert isinstance(book, ScheduleExam)
    assert (book.accession, book.scheduled_at) == ("", "2024-03-16T10:00:00")
    assert (book.appointment_id, book.duration_min, book.location) == ("APT1", 30, "CT / Room 2 / Bed 1")
    assert result.order_numbers == [("PL7", "FL7")]


def test_an_siu_with_an_obr_names_the_exam_by_obr18() -> None:
    sch = {2: "APT2", 26: "PL7"}
    body = (segment("AIS", {1: "1", 4: "202403171415", 7: "1", 8: "HR"}), obr(accession="ACC5"))
    [book] = mapped(siu("S13", sch, *body)).commands
    assert isinstance(book, ScheduleExam)
    assert (book.accession, book.scheduled_at, book.duration_min, book.appointment_id) == (
        "ACC5",
        "2024-03-17T14:15:00",
        60,
        "APT2",
    )


def test_the_tq_duration_in_sch11_3_counts_when_sch9_is_absent() -> None:
    [book] = mapped(siu("S14", {1: "A", 11: "^^M45^202403161000", 27: "F1"})).commands
    assert isinstance(book, ScheduleExam) and book.duration_min == 45


def test_an_appointment_without_a_start_is_refused_ae() -> None:
    refused = refusal(siu("S12", {1: "A", 27: "F1"}))
    assert (refused.code, refused.location) == ("AE", "SCH^1^11")


def test_an_appointment_naming_no_order_is_refused_ae() -> None:
    assert refusal(siu("S12", {1: "A", 11: "^^^202403161000"})).code == "AE"


def test_s15_cancels_the_appointment_with_the_reason_from_sch6() -> None:
    result = mapped(siu("S15", {1: "APT1", 6: "PT^Patient request", 26: "PL7"}))
    [cancel] = result.commands
    assert isinstance(cancel, CancelAppointment)
    assert (cancel.appointment_id, cancel.reason) == ("APT1", "Patient request")
    assert result.order_numbers == [("PL7", "")]


def test_an_siu_without_sch_is_refused() -> None:
    text = message(msh(message_type="SIU^S12"), pid())
    assert refusal(text).condition == acks.SEGMENT_SEQUENCE_ERROR


# --- ORU --------------------------------------------------------------------------------------


def oru(*body: str) -> str:
    return message(msh(message_type="ORU^R01", sent_at="20240315150000"), pid(), *body)


def report_obr(accession: str = "ACC0001", **extra: str) -> str:
    fields = {1: "1", 2: "PL0001", 4: "CTHEAD", 18: accession}
    fields.update({int(k[1:]): v for k, v in extra.items()})
    return segment("OBR", fields)


def test_an_oru_becomes_a_report_with_unescaped_text_joined_by_newlines() -> None:
    text = oru(
        report_obr(f25="P", f32="123&Smith&John", f22="20240315143000"),
        segment("OBX", {1: "1", 2: "FT", 3: "REPORT", 5: "Findings:\\.br\\No bleed \\T\\ no mass"}),
        segment("OBX", {1: "2", 2: "NM", 3: "SIZE", 5: "12"}),
        segment("OBX", {1: "3", 2: "TX", 3: "IMPRESSION", 5: "Normal~Second line"}),
        segment("OBX", {1: "4", 2: "CE", 3: "CODE", 5: "N^Normal^L"}),
    )
    [report] = mapped(text).commands
    assert isinstance(report, RecordReport)
    assert report.text == "Findings:\nNo bleed & no mass\nNormal\nSecond line\nNormal"
    assert (report.accession, report.result_status, report.author) == ("ACC0001", "P", "123 Smith John")
    assert report.reported_at == "2024-03-15T14:30:00"


def test_the_report_time_falls_back_to_obr7_then_msh7_and_the_status_to_final() -> None:
    obx = segment("OBX", {1: "1", 2: "TX", 5: "text"})
    [with_obr7] = mapped(oru(report_obr(f7="202403151400"), obx)).commands
    [with_msh7] = mapped(oru(report_obr(), obx)).commands
    assert isinstance(with_obr7, RecordReport) and with_obr7.reported_at == "2024-03-15T14:00:00"
    assert isinstance(with_msh7, RecordReport) and with_msh7.reported_at == "2024-03-15T15:00:00"
    assert with_msh7.result_status == "F"


def test_a_report_without_text_is_refused_ae_at_obx_5() -> None:
    refused = refusal(oru(report_obr(), segment("OBX", {1: "1", 2: "NM", 5: "12"})))
    assert (refused.code, refused.condition, refused.location) == (
        "AE",
        acks.REQUIRED_FIELD_MISSING,
        "OBX^1^5",
    )


def test_a_report_named_only_by_placer_number_carries_it() -> None:
    result = mapped(oru(report_obr(accession=""), segment("OBX", {1: "1", 2: "ST", 5: "ok"})))
    assert [c.accession for c in result.commands if isinstance(c, RecordReport)] == [""]
    assert result.order_numbers == [("PL0001", "")]


# --- unknown trigger events ---------------------------------------------------------------------


@pytest.mark.parametrize("message_type", ["ADT^A02", "SIU^S26", "ORU^R30", "OMG^O21"])
def test_unknown_trigger_events_are_refused_ar_201(message_type: str) -> None:
    refused = refusal(message(msh(message_type=message_type), pid()))
    assert (refused.code, refused.condition, refused.location) == (
        "AR",
        acks.UNSUPPORTED_EVENT_CODE,
        "MSH^1^9",
    )
