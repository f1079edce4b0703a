"""The order status feed: which exam events become ORM^O01 status messages, what they say (read
back with python-hl7, a parser nobody here wrote), and that a replay enqueues nothing twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hl7
import pytest

from adapters.outbound_config import Destination, Destinations, parse_destinations
from adapters.outbound_log import OutboundLog
from adapters.settings import Settings
from adapters.sql import Database
from domain.commands import PatientDemographics
from domain.exam import Exam
from domain.patient import Patient
from projections.hl7_text import control_id, hl7_timestamp
from projections.order_status_feed import OrderStatus, OrderStatusFeed, order_status_message
from projections.runner import TRACKING_SCHEMA
from tests.unit.exam_builders import place_order, provenance

DESTINATIONS = parse_destinations(
    """
destinations:
  - {name: RIS_A, facility: HOSP, host: 127.0.0.1, port: 1}
  - {name: MR_ONLY, host: 127.0.0.1, port: 2, filters: {modality: [MR]}}
  - {name: INPATIENTS, host: 127.0.0.1, port: 3, filters: {patient_class: [I]}}
"""
)


def _status(**changes: Any) -> OrderStatus:
    order = {
        "patient": {
            "id": "P1",
            "issuer": "HOSP",
            "name": "O'BRIEN^ANNE|X",
            "birth_date": "1980-01-02",
            "sex": "F",
        },
        "placer_order_number": "PL1",
        "filler_order_number": "FI1",
        "procedure_code": "CTHEAD",
        "procedure_text": "CT head & neck",
        "modality": "CT",
        "requested_procedure_id": "RP1",
        "scheduled_at": "2024-03-16T09:00:00+01:00",
    }
    values: dict[str, Any] = {
        "accession": "ACC1",
        "order": order,
        "order_status": "SC",
        "result_status": "",
        "patient_class": "O",
        "occurred_at": "2024-03-15T10:30:00+00:00",
    }
    values.update(changes)
    return OrderStatus(**values)


def test_status_message_carries_orc_obr_and_pid_where_ihe_expects_them() -> None:
    text = order_status_message(
        _status(), Destination(name="RIS_A", host="h", port=1, facility="HOSP"), "RF1"
    )
    message = hl7.parse(text)
    assert str(message.segment("MSH")[9]) == "ORM^O01^ORM_O01"
    assert (str(message["MSH.F5"]), str(message["MSH.F6"]), str(message["MSH.F10"])) == (
        "RIS_A",
        "HOSP",
        "RF1",
    )
    assert str(message["MSH.F7"]) == "20240315103000+0000"
    orc = message.segment("ORC")
    assert (str(orc[1]), str(orc[2]), str(orc[3]), str(orc[5])) == ("SC", "PL1", "FI1", "SC")
    assert str(orc[7]) == "^^^20240316090000+0100"
    obr = message.segment("OBR")
    assert (str(obr[18]), str(obr[19]), str(obr[24]), str(obr[25])) == ("ACC1", "RP1", "CT", "")
    assert message.unescape(str(obr[4])) == "CTHEAD^CT head & neck"
    pid = message.segment("PID")
    assert str(pid[3]) == "P1^^^HOSP" and str(pid[7]) == "19800102" and str(pid[8]) == "F"
    assert message.unescape(str(pid[5][0][1])) == "ANNE|X"  # a delimiter in a name is escaped
    assert str(message.segment("PV1")[2]) == "O"


def test_reported_is_completed_with_final_result_status() -> None:
    text = order_status_message(
        _status(order_status="CM", result_status="F"), Destination(name="R", host="h", port=1), "RF2"
    )
    message = hl7.parse(text)
    assert str(message.segment("ORC")[5]) == "CM" and str(message.segment("OBR")[25]) == "F"


def test_control_id_is_deterministic_per_destination_and_event_and_fits_msh10() -> None:
    first = control_id("RIS_A", "exam-id:3")
    assert first == control_id("RIS_A", "exam-id:3")
    assert first != control_id("RIS_B", "exam-id:3") != control_id("RIS_A", "exam-id:4")
    assert len(first) == 20


def test_hl7_timestamp_keeps_the_offset_and_ignores_garbage() -> None:
    assert hl7_timestamp("2024-03-16T09:00:00") == "20240316090000"
    assert hl7_timestamp("2024-03-16T09:00:00-05:00") == "20240316090000-0500"
    assert hl7_timestamp("tomorrow") == "" and hl7_timestamp("") == ""


@pytest.fixture
def outbound(tmp_path: Path) -> OutboundLog:
    db = Database.for_file(Settings(data_dir=tmp_path), tmp_path / "messages.sqlite")
    log = OutboundLog(db)
    log.create_schema()
    db.executescript([*TRACKING_SCHEMA, *OrderStatusFeed.schema])
    return log


def _feed(outbound: OutboundLog, events: list[Any], destinations: Destinations = DESTINATIONS) -> None:
    feed = OrderStatusFeed(destinations)
    with outbound.db.transaction() as cur:
        for event in events:
            feed.handle(cur, event)


def _exam_events(modality: str = "CT") -> list[Any]:
    order = place_order("ACC77")
    order = type(order)(**{**vars(order), "modality": modality})
    exam = Exam.place(order)
    exam.schedule("2024-03-16T09:00:00", provenance())
    exam.start(provenance())
    exam.complete(provenance())
    exam.report(provenance())
    exam.bill(provenance())
    return list(exam.collect_events())


def test_every_state_change_but_order_and_bill_is_queued_once_per_matching_destination(
    outbound: OutboundLog,
) -> None:
    _feed(outbound, _exam_events())
    rows = sorted(outbound.search(limit=100), key=lambda r: r["id"])
    assert [(r["destination"], r["event_type"], r["order_status"]) for r in rows] == [
        ("RIS_A", "ExamScheduled", "SC"),
        ("RIS_A", "ExamStarted", "IP"),
        ("RIS_A", "ExamCompleted", "CM"),
        ("RIS_A", "ExamReported", "CM"),
    ]
    assert {r["lane"] for r in rows} == {"HOSP|P0001"}
    assert {r["status"] for r in rows} == {"queued"}
    last = outbound.get(rows[-1]["id"])
    assert last is not None
    reported = hl7.parse(last["message"])
    assert str(reported.segment("OBR")[25]) == "F" and str(reported.segment("OBR")[18]) == "ACC77"


def test_a_replayed_event_enqueues_nothing_twice(outbound: OutboundLog) -> None:
    events = _exam_events()
    _feed(outbound, events)
    before = outbound.search(limit=100)
    with outbound.db.transaction() as cur:
        cur.execute("DELETE FROM order_status_exams")  # a rebuild drops the feed's own tables
    _feed(outbound, events)
    assert len(outbound.search(limit=100)) == len(before) == 4


def test_patient_class_from_the_patient_feed_selects_destinations(outbound: OutboundLog) -> None:
    patient = Patient.register(
        PatientDemographics(id="P0001", issuer="HOSP", name="DOE^JANE"), "I", provenance()
    )
    _feed(outbound, [*patient.collect_events(), *_exam_events(modality="MR")])
    destinations = {r["destination"] for r in outbound.search(limit=100)}
    assert destinations == {"RIS_A", "MR_ONLY", "INPATIENTS"}
    row = outbound.get(outbound.search(destination="INPATIENTS", limit=1)[0]["id"])
    assert row is not None
    message = hl7.parse(row["message"])
    assert str(message.segment("PV1")[2]) == "I"


def test_no_destinations_means_nothing_queued(outbound: OutboundLog) -> None:
    _feed(outbound, _exam_events(), Destinations())
    assert outbound.search(limit=10) == []
