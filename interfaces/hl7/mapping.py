"""HL7 v2 messages to domain commands: the built-in mapping for IHE Scheduled Workflow feeds
(ADT A01/A04/A08, ORM^O01 and OMI^O23 with order control NW and CA)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from domain.commands import (
    CancelOrder,
    Command,
    PatientDemographics,
    PlaceOrder,
    RegisterPatient,
    UpdatePatient,
)
from domain.provenance import Provenance, Source
from interfaces.hl7 import acks
from interfaces.hl7.message import Header, Message

PRIORITIES = {"S": "STAT", "STAT": "STAT", "A": "ASAP", "ASAP": "ASAP", "R": "ROUTINE", "ROUTINE": "ROUTINE"}
DICOM_MODALITIES = frozenset(
    ["CR", "CT", "DX", "ES", "IO", "MG", "MR", "NM", "OT", "PT", "RF", "RG", "SC", "US", "XA", "XC", "BMD", "OCT", "OP", "ECG", "IVUS"]
)
KNOWN_MESSAGE_TYPES = frozenset(
    ["ACK", "ADT", "BAR", "DFT", "MDM", "MFN", "OMG", "OMI", "OML", "ORM", "ORR", "ORU", "OSR", "QBP", "QRY", "RDE", "RSP", "SIU", "SRM", "VXU"]
)
ORDER_SEGMENTS = ("TQ1", "OBR", "IPC", "ZDS", "NTE", "OBX", "DG1", "CTD", "FT1", "BLG", "CTI", "TQ2")


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
    commands: list[Command] = field(default_factory=list)

    @property
    def accession(self) -> str:
        return next((c.accession for c in self.commands if isinstance(c, (PlaceOrder, CancelOrder))), "")

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
    if len(zone) == 5 and zone[1:].isascii() and zone[1:].isdigit() and int(zone[1:3]) < 24 and int(zone[3:]) < 60:
        iso += f"{zone[:3]}:{zone[3:]}"
    return iso


def map_message(message: Message, header: Header, received_at: str) -> Mapped:
    """Commands for a supported message, or `Refused` with the reason the sender will read."""
    if not header.message_code:
        raise Refused("AR", "MSH-9 message type is missing", acks.REQUIRED_FIELD_MISSING, "MSH^1^9")
    provenance = Provenance(
        actor=header.sending_application or "unknown-sender",
        source=Source(
            kind="hl7",
            application=header.sending_application,
            facility=header.sending_facility,
            control_id=header.control_id,
        ),
        occurred_at=hl7_timestamp(header.sent_at) or received_at,
    )
    code, trigger = header.message_code, header.trigger_event
    if code == "ADT" and trigger in ("A01", "A04", "A08"):
        return Mapped([_patient_command(message, trigger, provenance)])
    if (code, trigger) in (("ORM", "O01"), ("OMI", "O23")):
        return Mapped(_order_commands(message, provenance))
    if code in KNOWN_MESSAGE_TYPES or code.isalpha():
        raise Refused(
            "AR",
            f"unsupported message type {header.message_type}",
            acks.UNSUPPORTED_MESSAGE_TYPE if code != "ADT" else acks.UNSUPPORTED_EVENT_CODE,
            "MSH^1^9",
        )
    raise Refused("AR", f"unreadable message type {header.message_type!r}", acks.UNSUPPORTED_MESSAGE_TYPE, "MSH^1^9")


def _demographics(message: Message) -> PatientDemographics:
    pid = message.first_segment("PID")
    if pid is None:
        raise Refused("AE", "PID segment is missing", acks.SEGMENT_SEQUENCE_ERROR, "PID")
    patient_id = message.value(pid, 3)
    issuer = message.value(pid, 3, 4)
    if not patient_id:  # v2.3 feeds still use PID-2 (external id)
        patient_id, issuer = message.value(pid, 2), message.value(pid, 2, 4)
    if not patient_id:
        raise Refused("AE", "patient identifier PID-3 is missing", acks.REQUIRED_FIELD_MISSING, "PID^1^3")
    comp = message.component_separator
    name_parts = [message.value(pid, 5, n) for n in (1, 2, 3)]
    return PatientDemographics(
        id=patient_id,
        issuer=issuer,
        name=comp.join(name_parts).rstrip(comp),
        birth_date=message.value(pid, 7)[:8],
        sex=message.value(pid, 8),
    )


def _patient_command(message: Message, trigger: str, provenance: Provenance) -> Command:
    patient = _demographics(message)
    patient_class = message.value("PV1", 2)
    if trigger == "A08":
        return UpdatePatient(provenance=provenance, patient=patient, patient_class=patient_class)
    return RegisterPatient(provenance=provenance, patient=patient, patient_class=patient_class)


def _order_commands(message: Message, provenance: Provenance) -> list[Command]:
    orders = [g for g in message.groups("ORC", ORDER_SEGMENTS) if "ORC" in g]
    if not orders:
        raise Refused("AE", "order message without an ORC segment", acks.SEGMENT_SEQUENCE_ERROR, "ORC")
    patient = _demographics(message)
    # a ZDS outside every order group can only be meant for a lone order: in a message with
    # several orders, a Study Instance UID belongs to one requested procedure, never to all
    loose_zds = message.first_segment("ZDS") if len(orders) == 1 else None
    commands: list[Command] = []
    for number, group in enumerate(orders, start=1):
        commands.append(_order_command(message, group, number, patient, provenance, loose_zds))
    return commands


def _order_command(
    message: Message,
    group: dict[str, Any],
    number: int,
    patient: PatientDemographics,
    provenance: Provenance,
    loose_zds: Any = None,
) -> Command:
    orc = group["ORC"][0]
    obr = group.get("OBR", [None])[0]
    ipc = group.get("IPC", [None])[0]
    tq1 = group.get("TQ1", [None])[0]
    zds = group.get("ZDS", [None])[0] or loose_zds
    v = message.value
    control = v(orc, 1).upper()
    accession = v(obr, 18) or v(ipc, 1)
    if control not in ("NW", "CA"):
        raise Refused(
            "AR",
            f"unsupported order control {control or '(empty)'} in ORC-1 (order {number})",
            acks.UNSUPPORTED_EVENT_CODE,
            f"ORC^{number}^1",
        )
    if not accession:
        action = "order" if control == "NW" else "cancel"
        raise Refused(
            "AE",
            f"{action} without an accession number (OBR-18 or IPC-1) in order {number}",
            acks.REQUIRED_FIELD_MISSING,
            f"OBR^{number}^18",
        )
    if control == "CA":
        return CancelOrder(
            provenance=provenance, accession=accession, reason=v(orc, 16, 2) or v(orc, 16)
        )
    priority_code = (v(orc, 7, 6) or v(obr, 5) or v(tq1, 9) or "R").upper()
    modality = v(ipc, 5) or v(obr, 24)
    return PlaceOrder(
        provenance=provenance,
        accession=accession,
        patient=patient,
        placer_order_number=v(orc, 2) or v(obr, 2),
        filler_order_number=v(orc, 3) or v(obr, 3),
        requested_procedure_id=v(obr, 19) or v(ipc, 2),
        study_instance_uid=v(ipc, 3) or v(zds, 1),
        priority=PRIORITIES.get(priority_code, "ROUTINE"),
        procedure_code=v(obr, 4) or v(obr, 44),
        procedure_text=v(obr, 4, 2) or v(obr, 44, 2),
        modality=modality.upper() if modality.upper() in DICOM_MODALITIES else "",
        scheduled_at=hl7_timestamp(v(obr, 36) or v(tq1, 7) or v(orc, 7, 4)),
        referring_physician=message.component_separator.join(
            [v(obr, 16), v(obr, 16, 2), v(obr, 16, 3)]
        ).rstrip(message.component_separator),
        reason=v(obr, 31, 2) or v(obr, 31),
    )
