"""What every HL7 mapping family shares: the refusal, the mapped result with the order numbers
each command was named by, HL7 timestamps and patient demographics from a PID."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import hl7

from domain.commands import CancelOrder, Command, PatientDemographics, PlaceOrder
from interfaces.hl7 import acks
from interfaces.hl7.message import Message


class Refused(Exception):
    """The message cannot be applied; carries the ACK code and an HL7 error condition."""

    def __init__(
        self,
        code: str,
        reason: str,
        condition: tuple[str, str] = acks.INTERNAL_ERROR,
        location: str = "",
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.condition = condition
        self.location = location


@dataclass
class Mapped:
    """The commands a message asks for.

    `order_numbers` runs parallel to `commands`: `order_numbers[i]` is the (placer, filler)
    order number pair that named command i ("" when absent). A command that names its order
    only by number has accession ""; the intake step puts the pair into the command's dict as
    "placer_order_number" / "filler_order_number" so the message log can resolve the accession
    from the order that carried those numbers (or refuse AE "unknown accession")."""

    commands: list[Command] = field(default_factory=list)
    order_numbers: list[tuple[str, str]] = field(default_factory=list)

    def add(self, command: Command, placer: str = "", filler: str = "") -> None:
        self.commands.append(command)
        self.order_numbers.append((placer, filler))

    def numbers_of(self, index: int) -> tuple[str, str]:
        """(placer, filler) of command `index`; ('', '') for commands added without them."""
        return self.order_numbers[index] if index < len(self.order_numbers) else ("", "")

    @property
    def accession(self) -> str:
        return next(
            (c.accession for c in self.commands if isinstance(c, (PlaceOrder, CancelOrder))), ""
        ) or next(
            (str(getattr(c, "accession", "")) for c in self.commands if getattr(c, "accession", "")), ""
        )

    @property
    def patient_id(self) -> str:
        for c in self.commands:
            patient = getattr(c, "patient", None)
            if patient is not None:
                return str(patient.id)
        return ""


def hl7_timestamp(value: str) -> str:
    """HL7 TS/DTM (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]) as ISO 8601; '' if unreadable."""
    value = value.strip()
    if not value:
        return ""
    zone = ""
    for sign in ("+", "-"):
        if sign in value[4:]:
            idx = value.rindex(sign)
            value, zone = value[:idx], value[idx:]
    digits = value.split(".")[0]
    formats = {4: "%Y", 6: "%Y%m", 8: "%Y%m%d", 10: "%Y%m%d%H", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
    fmt = formats.get(len(digits))
    if fmt is None or not digits.isdigit():
        return ""
    try:
        moment = datetime.strptime(digits, fmt)
    except ValueError:
        return ""
    iso = moment.isoformat()
    # an offset that is not +/-HHMM in ASCII digits, under 24 h, would make the result unreadable
    # as ISO 8601 downstream: drop it like any other malformed zone
    if (
        len(zone) == 5
        and zone[1:].isascii()
        and zone[1:].isdigit()
        and int(zone[1:3]) < 24
        and int(zone[3:]) < 60
    ):
        iso += f"{zone[:3]}:{zone[3:]}"
    return iso


def demographics_of(message: Message, pid: hl7.Segment | None, number: int = 1) -> PatientDemographics:
    """The patient a PID names; `number` is the PID's place in the message, for the ERR."""
    if pid is None:
        raise Refused("AE", "PID segment is missing", acks.SEGMENT_SEQUENCE_ERROR, "PID")
    patient_id = message.value(pid, 3)
    issuer = message.value(pid, 3, 4)
    if not patient_id:  # v2.3 feeds still use PID-2 (external id)
        patient_id, issuer = message.value(pid, 2), message.value(pid, 2, 4)
    if not patient_id:
        raise Refused(
            "AE", "patient identifier PID-3 is missing", acks.REQUIRED_FIELD_MISSING, f"PID^{number}^3"
        )
    return PatientDemographics(
        id=patient_id,
        issuer=issuer,
        name=person_name(message, pid, 5),
        birth_date=message.value(pid, 7)[:8],
        sex=message.value(pid, 8),
    )


def demographics(message: Message) -> PatientDemographics:
    return demographics_of(message, message.first_segment("PID"))


def person_name(message: Message, segment: hl7.Segment | None, field_number: int) -> str:
    """An XPN/XCN as family^given^middle with the message's component separator."""
    comp = message.component_separator
    return comp.join(message.value(segment, field_number, n) for n in (1, 2, 3)).rstrip(comp)
