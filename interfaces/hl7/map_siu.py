"""Scheduling messages (SIU^S12/S13/S14 booked/rescheduled/modified, S15 cancelled) to exam
commands. The exam is named by OBR-18 when the message carries an OBR, else by its order
numbers (SCH-26 placer, SCH-27 filler), which the message log resolves to an accession."""

from __future__ import annotations

import hl7

from domain.commands import CancelAppointment, ScheduleExam
from domain.provenance import Provenance
from interfaces.hl7 import acks
from interfaces.hl7.map_common import Mapped, Refused, hl7_timestamp
from interfaces.hl7.message import Message

SIU_TRIGGERS = frozenset(["S12", "S13", "S14", "S15"])
MINUTES_PER_UNIT = {"MIN": 1, "M": 1, "MINUTES": 1, "MINUTE": 1, "HR": 60, "H": 60, "HOURS": 60, "HOUR": 60}


def siu_commands(message: Message, trigger: str, provenance: Provenance) -> Mapped:
    sch = message.first_segment("SCH")
    if sch is None:
        raise Refused("AE", "scheduling message without an SCH segment", acks.SEGMENT_SEQUENCE_ERROR, "SCH")
    v = message.value
    accession = v("OBR", 18)
    placer, filler = v(sch, 26), v(sch, 27)
    if not (accession or placer or filler):
        raise Refused(
            "AE",
            "appointment without an accession (OBR-18) or order number (SCH-26 / SCH-27)",
            acks.REQUIRED_FIELD_MISSING,
            "SCH^1^27",
        )
    appointment_id = v(sch, 1) or v(sch, 2)
    mapped = Mapped()
    if trigger == "S15":
        reason = v(sch, 6, 2) or v(sch, 6)
        cancel = CancelAppointment(
            provenance=provenance, accession=accession, appointment_id=appointment_id, reason=reason
        )
        mapped.add(cancel, placer, filler)
        return mapped
    ais, aig, ail = (message.first_segment(s) for s in ("AIS", "AIG", "AIL"))
    scheduled_at = hl7_timestamp(v(sch, 11, 4) or v(ais, 4) or v(aig, 8) or v(ail, 6))
    if not scheduled_at:
        raise Refused(
            "AE",
            "appointment without a start time (SCH-11.4, AIS-4, AIG-8 or AIL-6)",
            acks.REQUIRED_FIELD_MISSING,
            "SCH^1^11",
        )
    command = ScheduleExam(
        provenance=provenance,
        accession=accession,
        scheduled_at=scheduled_at,
        appointment_id=appointment_id,
        location=_location(message, ail, aig),
        duration_min=_duration(message, sch, ais),
    )
    mapped.add(command, placer, filler)
    return mapped


def _minutes(amount: str, unit: str) -> int:
    try:
        value = float(amount)
    except ValueError:
        return 0
    per_unit = MINUTES_PER_UNIT.get(unit.upper() or "MIN")
    if per_unit is None or value < 0:
        return 0
    return round(value * per_unit)


def _duration(message: Message, sch: hl7.Segment, ais: hl7.Segment | None) -> int:
    """Minutes from SCH-9/SCH-10, else the TQ duration in SCH-11.3 (e.g. M30), else AIS-7/AIS-8."""
    v = message.value
    if v(sch, 9):
        return _minutes(v(sch, 9), v(sch, 10))
    tq_duration = v(sch, 11, 3).upper()
    if tq_duration[:1] in ("M", "H") and tq_duration[1:]:
        return _minutes(tq_duration[1:], tq_duration[:1])
    if tq_duration[:1] == "S" and tq_duration[1:].isdigit():
        return int(tq_duration[1:]) // 60
    if v(ais, 7):
        return _minutes(v(ais, 7), v(ais, 8))
    return 0


def _location(message: Message, ail: hl7.Segment | None, aig: hl7.Segment | None) -> str:
    """AIL-3 (point of care^room^bed) joined readably, else the AIG-3 resource."""
    parts = [message.value(ail, 3, n) for n in (1, 2, 3)]
    joined = " / ".join(p for p in parts if p)
    return joined or message.value(aig, 3, 2) or message.value(aig, 3)
