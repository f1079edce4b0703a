"""The report feed: issued report revisions become ORU^R01 messages (read back with hl7apy's
strict v2.5.1 validation and with python-hl7, parsers nobody here wrote), one per subscribed
destination, the whole current report on an addendum, and a replay enqueues nothing twice."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.outbound_config import (
    Destination,
    Destinations,
    OutboundConfigError,
    parse_destinations,
)
from adapters.outbound_log import OutboundLog
from adapters.settings import Settings
from adapters.sql import Database
from domain.commands import PatientDemographics
from domain.exam import Exam
from domain.patient import Patient
from domain.provenance import Provenance, Source
from domain.report import Report, current_text, report_id
from projections.hl7_text import control_id
from projections.report_feed import (
    SECTION_CODES,
    IssuedReport,
    ReportFeed,
    report_message,
    text_lines,
)
from projections.runner import TRACKING_SCHEMA
from tests.unit.exam_builders import place_order, provenance

DESTINATIONS = parse_destinations(
    """
destinations:
  - {name: RIS_A, facility: HOSP, host: 127.0.0.1, port: 1, events: [order_status, report]}
  - {name: EHR, host: 127.0.0.1, port: 2, events: [report]}
  - {name: STATUS_ONLY, host: 127.0.0.1, port: 3}
  - {name: MR_REPORTS, host: 127.0.0.1, port: 4, events: [report], filters: {modality: [MR]}}
  - {name: INPATIENT_REPORTS, host: 127.0.0.1, port: 5, events: [report], filters: {patient_class: [I]}}
  - {name: FROM_HIS, host: 127.0.0.1, port: 6, events: [report], filters: {sending_application: [HIS]}}
"""
)
DESTINATION = Destination(name="RIS_A", host="h", port=1, facility="HOSP")
_numbers = itertools.count(1)


def at(minute: int, actor: str = "dr.house") -> Provenance:
    """A radiologist's action `minute` minutes after 11:00 UTC on the exam day."""
    return Provenance(
        actor=actor,
        source=Source(kind="api", application="RADFLOW", control_id=f"UI{next(_numbers):06d}"),
        occurred_at=f"2024-03-15T{11 + minute // 60:02d}:{minute % 60:02d}:00+00:00",
    )


def exam_dict(**changes: Any) -> dict[str, Any]:
    exam: dict[str, Any] = {
        "accession": "ACC1",
        "patient": {
            "id": "P1",
            "issuer": "HOSP",
            "name": "O'BRIEN^ANNE|X",
            "birth_date": "1980-01-02",
            "sex": "F",
        },
        "placer_order_number": "PL1",
        "filler_order_number": "FI1",
        "requested_procedure_id": "RP1",
        "procedure_code": "CTHEAD",
        "procedure_text": "CT head & neck",
        "modality": "CT",
        "referring_physician": "123^WELBY^MARCUS",
        "reason": "headache",
        "completed_at": "2024-03-15T10:45:00+00:00",
        "state": "completed",
    }
    exam.update(changes)
    return exam


def revision(n: int, kind: str = "final", **changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "revision": n,
        "kind": kind,
        "result_status": {"preliminary": "P", "final": "F"}.get(kind, "C"),
        "sections": {"findings": "No bleed.\nNo mass.", "impression": "Normal CT head."},
        "text": "",
        "author": "dr.house",
        "signed_at": f"2024-03-15T11:{n:02d}:00+00:00",
        "critical": False,
        "exam": exam_dict(),
    }
    values.update(changes)
    return values


def build(*revisions: dict[str, Any], patient_class: str = "O") -> hl7.Message:
    report = IssuedReport.from_revisions(
        list(revisions), patient_class=patient_class, occurred_at="2024-03-15T11:30:01+00:00"
    )
    return hl7.parse(report_message(report, DESTINATION, "RF1"))


def obx_values(message: hl7.Message, code: str = "") -> list[str]:
    return [
        message.unescape(str(obx[5]))
        for obx in message.segments("OBX")
        if not code or str(obx[3][0][0]) == code
    ]


def validate_strictly(text: str) -> Any:
    """hl7apy's strict validation against its v2.5.1 ORU_R01 structure: every segment in its
    group, required fields present, data types and lengths right."""
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert message.validate() is True
    return message


# --- the message --------------------------------------------------------------------------


def test_final_report_passes_hl7apy_strict_v251_oru_r01_validation() -> None:
    text = report_message(IssuedReport.from_revisions([revision(1)]), DESTINATION, "RF1")
    message = validate_strictly(text)
    assert message.name == "ORU_R01" and message.msh.msh_12.value == "2.5.1"
    result = message.oru_r01_patient_result
    assert result.oru_r01_patient.pid.pid_3.value == "P1^^^HOSP"
    order = result.oru_r01_order_observation
    assert order.orc.orc_1.value == "RE" and order.obr.obr_25.value == "F"
    assert len(order.oru_r01_observation) == 3  # two findings lines and the impression


def test_strict_validation_would_notice_a_missing_required_field() -> None:
    """The check above can fail: an OBX without OBX-11 (required) is refused."""
    text = report_message(IssuedReport.from_revisions([revision(1)]), DESTINATION, "RF1")
    broken = text.replace("|||F|||", "||||||", 1)
    with pytest.raises(HL7apyException):
        validate_strictly(broken)


def test_oru_carries_order_numbers_accession_times_and_author_where_hl7_expects_them() -> None:
    message = build(revision(1))
    msh = message.segment("MSH")
    assert str(msh[9]) == "ORU^R01^ORU_R01" and str(msh[12]) == "2.5.1" and str(msh[18]) == "UNICODE UTF-8"
    assert (str(msh[5]), str(msh[6]), str(msh[10])) == ("RIS_A", "HOSP", "RF1")
    assert str(msh[7]) == "20240315113001+0000"
    pid = message.segment("PID")
    assert str(pid[3]) == "P1^^^HOSP" and str(pid[7]) == "19800102" and str(pid[8]) == "F"
    assert message.unescape(str(pid[5][0][1])) == "ANNE|X"
    assert str(message.segment("PV1")[2]) == "O"
    orc = message.segment("ORC")
    assert (str(orc[1]), str(orc[2]), str(orc[3]), str(orc[5])) == ("RE", "PL1", "FI1", "CM")
    obr = message.segment("OBR")
    assert (str(obr[2]), str(obr[3])) == ("PL1", "FI1")
    assert message.unescape(str(obr[4])) == "CTHEAD^CT head & neck"
    assert str(obr[7]) == "20240315104500+0000"  # completed
    assert (str(obr[18]), str(obr[19]), str(obr[24]), str(obr[25])) == ("ACC1", "RP1", "CT", "F")
    assert str(obr[22]) == "20240315110100+0000"  # signed
    assert str(obr[32]) == "dr.house" and str(obr[16]) == "123^WELBY^MARCUS"
    for obx in message.segments("OBX"):
        assert str(obx[2]) == "TX" and str(obx[11]) == "F"
        assert str(obx[14]) == "20240315110100+0000" and str(obx[16]) == "dr.house"
        assert str(obx[8]) == ""  # not critical
    assert [str(o[1]) for o in message.segments("OBX")] == ["1", "2", "3"]


def test_each_section_goes_under_its_loinc_code_in_reading_order() -> None:
    sections = {
        "impression": "Normal.",
        "findings": "Clear.",
        "indication": "Headache.",
        "technique": "Axial CT.",
        "comparison": "None.",
        "recommendation": "Follow up.",
    }
    message = build(revision(1, sections=sections))
    codes = [str(obx[3][0][0]) for obx in message.segments("OBX")]
    assert codes == ["18785-6", "55111-9", "18834-2", "59776-5", "19005-8", "RECOMMENDATION"]
    assert [str(obx[3][0][2]) for obx in message.segments("OBX")] == ["LN"] * 5 + ["L"]
    assert obx_values(message, SECTION_CODES["impression"][0]) == ["Normal."]


def test_delimiters_in_report_text_are_escaped_and_empty_lines_kept() -> None:
    findings = "A | B ^ C & D ~ E \\ F\n\n  indented\r\nlast"
    message = build(revision(1, sections={"findings": findings}))
    raw = [str(obx[5]) for obx in message.segments("OBX")]
    assert raw[0] == "A \\F\\ B \\S\\ C \\T\\ D \\R\\ E \\E\\ F"
    assert obx_values(message) == ["A | B ^ C & D ~ E \\ F", "", "  indented", "last"]


def test_preliminary_is_p_and_a_final_after_it_is_f_with_only_the_final_text() -> None:
    preliminary = revision(1, "preliminary", sections={"impression": "Probably normal."})
    assert str(build(preliminary).segment("OBR")[25]) == "P"
    final = build(preliminary, revision(2, sections={"impression": "Normal."}))
    assert str(final.segment("OBR")[25]) == "F" and obx_values(final) == ["Normal."]


def test_an_addendum_sends_the_whole_report_with_every_addendum_under_its_heading_as_c() -> None:
    first = revision(
        2, "addendum", sections={"findings": "Small cyst."}, text="FINDINGS:\nSmall cyst.", author="dr.wilson"
    )
    second = revision(3, "addendum", sections={"impression": "See above."}, text="IMPRESSION:\nSee above.")
    message = build(revision(1), first, second)
    assert str(message.segment("OBR")[25]) == "C"
    assert {str(obx[11]) for obx in message.segments("OBX")} == {"C"}
    assert obx_values(message, "59776-5") == ["No bleed.", "No mass."]
    assert obx_values(message, "55107-7") == [
        "ADDENDUM 1 (dr.wilson, 2024-03-15T11:02:00+00:00):",
        "FINDINGS:",
        "Small cyst.",
        "ADDENDUM 2 (dr.house, 2024-03-15T11:03:00+00:00):",
        "IMPRESSION:",
        "See above.",
    ]
    addenda = [obx for obx in message.segments("OBX") if str(obx[3][0][0]) == "55107-7"]
    assert [str(o[4]) for o in addenda] == ["1"] * 3 + ["2"] * 3  # OBX-4: which addendum
    assert str(addenda[0][16]) == "dr.wilson" and str(addenda[0][14]) == "20240315110200+0000"
    validate_strictly(
        report_message(IssuedReport.from_revisions([revision(1), first, second]), DESTINATION, "X")
    )


def test_a_correction_replaces_the_text_and_drops_earlier_addenda() -> None:
    addendum = revision(2, "addendum", sections={"findings": "x"}, text="FINDINGS:\nx")
    correction = revision(3, "correction", sections={"impression": "Left, not right."})
    message = build(revision(1), addendum, correction)
    assert str(message.segment("OBR")[25]) == "C"
    assert obx_values(message) == ["Left, not right."]


def test_a_critical_result_is_flagged_on_every_obx_and_said_in_an_nte() -> None:
    message = build(revision(1, critical=True))
    assert {str(obx[8]) for obx in message.segments("OBX")} == {"AA"}
    assert "CRITICAL RESULT" in message.unescape(str(message.segment("NTE")[3]))
    later = build(revision(1, critical=True), revision(2, "addendum", text="ok"))
    assert {str(obx[8]) for obx in later.segments("OBX")} == {"AA"}  # still the same report
    validate_strictly(
        report_message(IssuedReport.from_revisions([revision(1, critical=True)]), DESTINATION, "X")
    )
    with pytest.raises(KeyError):
        build(revision(1)).segment("NTE")


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text(alphabet=st.characters(codec="utf-8", max_codepoint=0x7F), max_size=60))
def test_any_text_comes_back_from_the_obx_lines_unchanged(findings: str, impression: str) -> None:
    """Whatever a radiologist types (delimiters, escape characters, control characters, any
    script): each line is one OBX-5 that python-hl7 reads back to the very same line, and
    hl7apy still finds a valid ORU_R01."""
    report = IssuedReport.from_revisions(
        [revision(1, sections={"findings": findings, "impression": impression})]
    )
    text = report_message(report, DESTINATION, "RF1")
    assert "\n" not in text and "\x0b" not in text and "\x1c" not in text
    message = hl7.parse(text)
    assert obx_values(message, "59776-5") == text_lines(findings)
    assert obx_values(message, "19005-8") == text_lines(impression)
    validate_strictly(_within_hl7apy_limits(text))


def _within_hl7apy_limits(text: str) -> str:
    """hl7apy types OBX-5 ("varies") as ST, 199 characters, whatever OBX-2 says; TX allows
    65,536 and a radiologist's paragraph is one line. Long values are shortened for hl7apy's
    structural check only: python-hl7 above read them back whole."""
    segments = []
    for segment in text.split("\r"):
        fields = segment.split("|")
        if fields[0] == "OBX" and len(fields) > 5 and len(fields[5]) > 199:
            short = fields[5][:190]
            # escape sequences open and close with a backslash: never cut one in two
            fields[5] = short.rsplit("\\", 1)[0] if short.count("\\") % 2 else short
        segments.append("|".join(fields))
    return "\r".join(segments)


# --- the feed -----------------------------------------------------------------------------


@pytest.fixture
def outbound(tmp_path: Path) -> OutboundLog:
    db = Database.for_file(Settings(data_dir=tmp_path), tmp_path / "messages.sqlite")
    log = OutboundLog(db)
    log.create_schema()
    db.executescript([*TRACKING_SCHEMA, *ReportFeed.schema])
    return log


def _feed(outbound: OutboundLog, events: list[Any], destinations: Destinations = DESTINATIONS) -> None:
    feed = ReportFeed(destinations)
    with outbound.db.transaction() as cur:
        for event in events:
            feed.handle(cur, event)


def reported_exam(
    accession: str = "ACC77",
    kinds: tuple[str, ...] = ("preliminary", "final", "addendum"),
    *,
    modality: str = "CT",
    critical: bool = False,
) -> list[Any]:
    """An exam driven to completed, then a radiologist claims it and issues `kinds` in turn, by
    the aggregates' own methods (as the apply_command activity does): every event, in order."""
    order = place_order(accession)
    order = type(order)(**{**vars(order), "modality": modality})
    exam = Exam.place(order)
    exam.schedule("2024-03-16T09:00:00", provenance())
    exam.start(provenance())
    exam.complete(provenance())
    events = list(exam.collect_events())
    report = Report.open(accession, at(0))
    report.claim("dr.house", 30, exam.state.value, at(1))
    for minute, kind in enumerate(kinds, start=2):
        by = at(minute)
        revision_ = report.issue(
            kind,
            "dr.house",
            {"findings": f"{kind} findings\n\nline 3", "impression": f"{kind} impression"},
            exam={
                **exam.order,
                "accession": accession,
                "state": exam.state.value,
                "completed_at": exam.completed_at,
            },
            exam_state=exam.state.value,
            minutes=30,
            provenance=by,
            critical_contacts=[{"role": "referring_physician", "name": "Dr Welby"}] if critical else None,
            ack_minutes=15,
        )
        exam.report(
            by,
            text=current_text(report.revisions),
            result_status=revision_["result_status"],
            author="dr.house",
            reported_at=revision_["signed_at"],
            source="radflow",
        )
        events += [*report.collect_events(), *exam.collect_events()]
    return events


def _rows(outbound: OutboundLog) -> list[dict[str, Any]]:
    return outbound.db.query("SELECT * FROM outbound_messages ORDER BY id")


def test_every_issued_revision_is_queued_once_per_destination_subscribed_to_reports(
    outbound: OutboundLog,
) -> None:
    _feed(outbound, reported_exam())
    rows = _rows(outbound)
    assert [(r["destination"], r["order_status"]) for r in rows] == [
        ("RIS_A", "P"),
        ("EHR", "P"),
        ("FROM_HIS", "P"),
        ("RIS_A", "F"),
        ("EHR", "F"),
        ("FROM_HIS", "F"),
        ("RIS_A", "C"),
        ("EHR", "C"),
        ("FROM_HIS", "C"),
    ]
    assert {r["message_type"] for r in rows} == {"ORU^R01"}
    assert {r["event_type"] for r in rows} == {"ReportIssued"}
    assert {r["lane"] for r in rows} == {"HOSP|P0001"}  # the order status lane: one order per patient
    assert {r["accession"] for r in rows} == {"ACC77"}
    addendum = hl7.parse(rows[-1]["message"])
    assert str(addendum.segment("OBR")[25]) == "C"
    assert obx_values(addendum, "59776-5") == ["final findings", "", "line 3"]
    assert obx_values(addendum, "55107-7")[0].startswith("ADDENDUM 1 (dr.house, 2024-03-15T11:04:00")


def test_control_id_is_derived_from_destination_report_and_version(outbound: OutboundLog) -> None:
    events = reported_exam(kinds=("final",))
    _feed(outbound, events)
    issued = next(e for e in events if type(e).__name__ == "ReportIssued")
    key = f"{report_id('ACC77')}:{issued.originator_version}"
    row = _rows(outbound)[0]
    assert row["event_key"] == key and row["control_id"] == control_id("RIS_A", key)
    assert str(hl7.parse(row["message"])["MSH.F10"]) == row["control_id"]
    assert str(hl7.parse(row["message"])["MSH.F7"]) == issued.timestamp.strftime("%Y%m%d%H%M%S%z")


def test_a_replay_enqueues_nothing_twice(outbound: OutboundLog) -> None:
    events = reported_exam()
    _feed(outbound, events)
    before = _rows(outbound)
    _feed(outbound, events)
    assert _rows(outbound) == before


def test_the_rebuilt_feed_builds_the_very_same_messages(outbound: OutboundLog, tmp_path: Path) -> None:
    events = reported_exam()
    _feed(outbound, events)
    other_db = Database.for_file(Settings(data_dir=tmp_path), tmp_path / "other.sqlite")
    other = OutboundLog(other_db)
    other.create_schema()
    other_db.executescript([*TRACKING_SCHEMA, *ReportFeed.schema])
    _feed(other, events)
    assert [r["message"] for r in _rows(other)] == [r["message"] for r in _rows(outbound)]


def test_modality_patient_class_and_sending_application_filters_apply(outbound: OutboundLog) -> None:
    patient = Patient.register(
        PatientDemographics(id="P0001", issuer="HOSP", name="DOE^JANE"), "I", provenance()
    )
    _feed(outbound, [*patient.collect_events(), *reported_exam(modality="MR", kinds=("final",))])
    rows = _rows(outbound)
    assert sorted(r["destination"] for r in rows) == [
        "EHR",
        "FROM_HIS",
        "INPATIENT_REPORTS",
        "MR_REPORTS",
        "RIS_A",
    ]
    assert str(hl7.parse(rows[0]["message"]).segment("PV1")[2]) == "I"


def test_patient_discharged_is_no_longer_an_inpatient(outbound: OutboundLog) -> None:
    patient = Patient.register(
        PatientDemographics(id="P0001", issuer="HOSP", name="DOE^JANE"), "I", provenance()
    )
    patient.discharge("2024-03-15T10:00:00", provenance())
    _feed(outbound, [*patient.collect_events(), *reported_exam(kinds=("final",))])
    assert "INPATIENT_REPORTS" not in {r["destination"] for r in _rows(outbound)}


def test_a_destination_without_report_in_its_events_gets_no_oru(outbound: OutboundLog) -> None:
    _feed(outbound, reported_exam(), Destinations(items=(Destination(name="ORM", host="h", port=1),)))
    assert _rows(outbound) == []


def test_critical_report_events_are_queued_with_the_critical_flag(outbound: OutboundLog) -> None:
    _feed(outbound, reported_exam(kinds=("final",), critical=True))
    message = hl7.parse(_rows(outbound)[0]["message"])
    assert {str(obx[8]) for obx in message.segments("OBX")} == {"AA"}


# --- configuration ------------------------------------------------------------------------


def test_destinations_accept_the_report_event() -> None:
    parsed = parse_destinations("destinations:\n  - {name: EHR, host: h, port: 1, events: [report]}\n")
    assert parsed.items[0].events == ("report",)
    with pytest.raises(OutboundConfigError, match="known: order_status, report"):
        parse_destinations("destinations:\n  - {name: EHR, host: h, port: 1, events: [reports]}\n")
