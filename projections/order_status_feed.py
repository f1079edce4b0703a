"""The first outbound producer: an ORM^O01 status update (ORC-1 SC, ORC-5 per HL7 table 0038) to
each destination that wants `order_status`, on every exam state change (IHE RAD-3 style).

Where it runs: as its own projection over the event store, with its own position, in the
*messages* database (not the projections database), because that is where the outbound queue
lives. So the queue rows and the feed's position commit in one transaction: a crash never
loses a status update and a replay (or a rebuild) enqueues nothing twice, which the UNIQUE
(destination, event_key) key guarantees as well. Only the feed's own exam and patient tables
are dropped on a rebuild; the queue with its delivery history is never dropped.

What the placer gets: ExamScheduled -> SC, ExamStarted -> IP, ExamCompleted -> CM,
ExamDiscontinued -> DC, ExamCancelled -> CA, ExamReported -> CM with OBR-25 F, an order
change (an exam event carrying `changes`) -> the exam's current status. ExamOrdered sends
nothing (the placer created the order); ExamBilled sends nothing (billing is no order status);
a cancelled appointment (the exam is ordered again) sends nothing: table 0038 has no
"ordered, not scheduled" value.

MSH-10 is derived from (destination, exam id, event version), and MSH-7 from the event's
recorded time, so a replay builds the very same message: receivers that dedupe by MSH-10 see a
re-delivery (at-least-once) as the repeat it is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from adapters.outbound_config import Destination, Destinations
from adapters.sql import Cursor
from domain.patient import patient_id
from projections.hl7_text import components, escape, hl7_timestamp, msh, pid
from projections.outbound_queueing import Outgoing, queue_for_subscribers

EVENT = "order_status"

# event type -> ORC-5 (HL7 table 0038); "" means: the exam's current status
ORDER_STATUS = {
    "ExamScheduled": "SC",
    "ExamStarted": "IP",
    "ExamCompleted": "CM",
    "ExamDiscontinued": "DC",
    "ExamCancelled": "CA",
    "ExamReported": "CM",
}
STATE_STATUS = {
    "ordered": "",
    "scheduled": "SC",
    "in_progress": "IP",
    "completed": "CM",
    "reported": "CM",
    "billed": "CM",
    "discontinued": "DC",
    "cancelled": "CA",
}
STATE_AFTER = {
    "ExamScheduled": "scheduled",
    "ExamStarted": "in_progress",
    "ExamCompleted": "completed",
    "ExamDiscontinued": "discontinued",
    "ExamCancelled": "cancelled",
    "ExamReported": "reported",
    "ExamBilled": "billed",
    "AppointmentCancelled": "ordered",  # the order stands, unscheduled: no 0038 status to send
}

# operations forced the exam into a state (domain/lifecycle.py FORCED_TRANSITIONS): the placer
# hears the new state's status, as if the modality had said it
FORCED = "ExamStateForced"

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS order_status_exams (
        exam_id TEXT PRIMARY KEY,
        accession TEXT NOT NULL,
        patient_ref TEXT NOT NULL,
        patient TEXT NOT NULL,
        state TEXT NOT NULL,
        order_json TEXT NOT NULL,
        sending_application TEXT NOT NULL,
        sending_facility TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS order_status_patients (
        patient_ref TEXT PRIMARY KEY,
        patient_class TEXT NOT NULL,
        demographics TEXT NOT NULL
    )""",
]


@dataclass(frozen=True)
class OrderStatus:
    """Everything one ORM^O01 status message says, already read from the exam."""

    accession: str
    order: dict[str, Any]  # the exam's order: patient, placer/filler numbers, procedure, ...
    order_status: str  # ORC-5
    result_status: str  # OBR-25 ("F" once reported)
    patient_class: str  # PV1-2
    occurred_at: str  # ISO 8601: the event's recorded time (MSH-7, ORC-9)


def order_status_message(status: OrderStatus, destination: Destination, msh10: str) -> str:
    """The ORM^O01 text (segments joined by CR)."""
    order, patient = status.order, status.order.get("patient", {})
    placer, filler = order.get("placer_order_number", ""), order.get("filler_order_number", "")
    timing = f"^^^{hl7_timestamp(order.get('scheduled_at', ''))}" if order.get("scheduled_at") else ""
    when = hl7_timestamp(status.occurred_at)
    segments = [
        msh(destination.name, destination.facility, when, "ORM^O01^ORM_O01", msh10),
        pid(patient),
        "|".join(["PV1", "1", escape(status.patient_class or "U")]),
        "|".join(
            [
                "ORC",
                "SC",
                escape(placer),
                escape(filler),
                "",
                status.order_status,
                "",
                timing,
                "",
                when,
            ]
        ),
        "|".join(
            [
                "OBR",
                "1",
                escape(placer),
                escape(filler),
                components(order.get("procedure_code", ""), order.get("procedure_text", "")),
                *[""] * 13,  # OBR-5 .. OBR-17
                escape(status.accession),  # OBR-18: accession number (IHE RAD TF-2 4.4)
                escape(order.get("requested_procedure_id", "")),  # OBR-19
                "",
                "",
                "",
                "",
                escape(order.get("modality", "")),  # OBR-24 diagnostic service section
                status.result_status,  # OBR-25
                "",
                timing,  # OBR-27 quantity/timing
            ]
        ),
    ]
    return "\r".join(segments)


class OrderStatusFeed:
    """A projection (see projections/runner.py) whose `handle` enqueues outbound messages."""

    name = "order_status_feed"
    schema_version = 1
    schema: Sequence[str] = SCHEMA
    tables: Sequence[str] = ("order_status_exams", "order_status_patients")

    def __init__(self, destinations: Destinations) -> None:
        self.destinations = destinations

    def handle(self, cur: Cursor, event: Any) -> None:
        kind = type(event).__name__
        if kind == "ExamOrdered":
            self._ordered(cur, event)
        elif kind in ("PatientRegistered", "PatientUpdated"):
            self._patient(cur, event, kind)
        elif kind in STATE_AFTER or kind == FORCED or hasattr(event, "changes") or hasattr(event, "patient"):
            self._exam_changed(cur, event, kind)

    def _ordered(self, cur: Cursor, event: Any) -> None:
        patient = event.order["patient"]
        source = event.provenance.get("source", {})
        cur.execute(
            "INSERT INTO order_status_exams (exam_id, accession, patient_ref, patient, state, "
            "order_json, sending_application, sending_facility) VALUES (?, ?, ?, ?, 'ordered', ?, ?, ?) "
            "ON CONFLICT (exam_id) DO NOTHING",
            (
                str(event.originator_id),
                event.accession,
                str(patient_id(f"{patient['issuer']}|{patient['id']}")),
                f"{patient['issuer']}|{patient['id']}",
                json.dumps(event.order),
                source.get("application", ""),
                source.get("facility", ""),
            ),
        )

    def _patient(self, cur: Cursor, event: Any, kind: str) -> None:
        ref = str(event.originator_id)
        row = cur.execute(
            "SELECT patient_class, demographics FROM order_status_patients WHERE patient_ref = ?", (ref,)
        ).fetchone()
        changes = dict(event.demographics if kind == "PatientRegistered" else event.changes)
        patient_class = (
            getattr(event, "patient_class", "")
            if kind == "PatientRegistered"
            else changes.get("patient_class", "")
        )
        demographics = json.loads(row["demographics"]) if row else {}
        demographics.update({k: v for k, v in changes.items() if k in ("name", "birth_date", "sex") and v})
        cur.execute(
            "INSERT INTO order_status_patients (patient_ref, patient_class, demographics) VALUES (?, ?, ?) "
            "ON CONFLICT (patient_ref) DO UPDATE SET patient_class = excluded.patient_class, "
            "demographics = excluded.demographics",
            (ref, patient_class or (row["patient_class"] if row else ""), json.dumps(demographics)),
        )

    def _exam_changed(self, cur: Cursor, event: Any, kind: str) -> None:
        exam_id = str(event.originator_id)
        row = cur.execute("SELECT * FROM order_status_exams WHERE exam_id = ?", (exam_id,)).fetchone()
        if row is None:  # not an exam radflow holds an order for (e.g. a study's event)
            return
        order = json.loads(row["order_json"])
        state = event.to_state if kind == FORCED else STATE_AFTER.get(kind, row["state"])
        if kind == "ExamScheduled":
            order["scheduled_at"] = event.scheduled_at
        changes = getattr(event, "changes", None)
        if isinstance(changes, dict):  # an order change (ORM XO): keep the fields it carried
            order.update({k: v for k, v in changes.items() if k in order and k != "patient"})
        new_patient = getattr(event, "patient", None)
        if isinstance(new_patient, dict) and new_patient.get("id"):  # the exam moved to another patient
            order["patient"] = {**order.get("patient", {}), **new_patient}
        patient = order["patient"]
        patient_key = f"{patient.get('issuer', '')}|{patient['id']}"
        patient_ref = str(patient_id(patient_key))
        cur.execute(
            "UPDATE order_status_exams SET state = ?, order_json = ?, patient_ref = ?, patient = ? "
            "WHERE exam_id = ?",
            (state, json.dumps(order), patient_ref, patient_key, exam_id),
        )
        if kind in ORDER_STATUS:
            order_status = ORDER_STATUS[kind]
        elif kind == FORCED or isinstance(changes, dict) or isinstance(new_patient, dict):
            order_status = STATE_STATUS.get(state, "")
        else:
            return
        if not order_status:
            return
        known = cur.execute(
            "SELECT patient_class, demographics FROM order_status_patients WHERE patient_ref = ?",
            (patient_ref,),
        ).fetchone()
        patient_class = known["patient_class"] if known else ""
        if known:  # the latest demographics the patient feed gave win over the order's copy
            order["patient"] = {**patient, **json.loads(known["demographics"])}
        status = OrderStatus(
            accession=row["accession"],
            order=order,
            order_status=order_status,
            result_status="F" if kind == "ExamReported" else "",
            patient_class=patient_class,
            occurred_at=event.timestamp.isoformat(),
        )
        outgoing = Outgoing(
            event=EVENT,
            event_key=f"{exam_id}:{event.originator_version}",
            lane=patient_key,
            accession=row["accession"],
            patient_id=str(patient["id"]),
            event_type=kind,
            order_status=order_status,
            modality=str(order.get("modality", "")),
            patient_class=patient_class,
            sending_application=row["sending_application"],
        )
        queue_for_subscribers(
            cur, self.destinations, outgoing, lambda to, msh10: order_status_message(status, to, msh10)
        )
