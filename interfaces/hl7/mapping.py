"""HL7 v2 messages to domain commands: the built-in base mapping for IHE Scheduled Workflow
feeds. Each message family has its own module (map_adt, map_orders, map_siu, map_oru); this
one reads the header and picks the family. A channel (channels.py) wraps this mapping."""

from __future__ import annotations

from domain.provenance import Provenance, Source
from interfaces.hl7 import acks
from interfaces.hl7.map_adt import ADT_TRIGGERS, adt_commands
from interfaces.hl7.map_common import Mapped, Refused, demographics, hl7_timestamp
from interfaces.hl7.map_orders import (
    DICOM_MODALITIES,
    ORDER_SEGMENTS,
    PRIORITIES,
    order_commands,
    order_fields,
)
from interfaces.hl7.map_oru import oru_commands
from interfaces.hl7.map_siu import SIU_TRIGGERS, siu_commands
from interfaces.hl7.message import Header, Message

__all__ = [
    "DICOM_MODALITIES",
    "KNOWN_MESSAGE_TYPES",
    "ORDER_SEGMENTS",
    "PRIORITIES",
    "SUPPORTED",
    "Mapped",
    "Refused",
    "demographics",
    "hl7_timestamp",
    "map_message",
    "order_fields",
]

KNOWN_MESSAGE_TYPES = frozenset(
    [
        "ACK",
        "ADT",
        "BAR",
        "DFT",
        "MDM",
        "MFN",
        "OMG",
        "OMI",
        "OML",
        "ORM",
        "ORR",
        "ORU",
        "OSR",
        "QBP",
        "QRY",
        "RDE",
        "RSP",
        "SIU",
        "SRM",
        "VXU",
    ]
)
ORDER_TYPES = frozenset([("ORM", "O01"), ("OMI", "O23"), ("OMG", "O19")])
# every (message code, trigger event) the base mapping turns into commands
SUPPORTED = frozenset(
    {("ADT", t) for t in ADT_TRIGGERS} | ORDER_TYPES | {("SIU", t) for t in SIU_TRIGGERS} | {("ORU", "R01")}
)


def provenance_of(header: Header, received_at: str) -> Provenance:
    return Provenance(
        actor=header.sending_application or "unknown-sender",
        source=Source(
            kind="hl7",
            application=header.sending_application,
            facility=header.sending_facility,
            control_id=header.control_id,
        ),
        occurred_at=hl7_timestamp(header.sent_at) or received_at,
    )


def map_message(message: Message, header: Header, received_at: str) -> Mapped:
    """Commands for a supported message, or `Refused` with the reason the sender will read.
    `Mapped.order_numbers` holds the (placer, filler) order numbers of each command."""
    if not header.message_code:
        raise Refused("AR", "MSH-9 message type is missing", acks.REQUIRED_FIELD_MISSING, "MSH^1^9")
    provenance = provenance_of(header, received_at)
    code, trigger = header.message_code, header.trigger_event
    if code == "ADT" and trigger in ADT_TRIGGERS:
        return adt_commands(message, trigger, provenance)
    if (code, trigger) in ORDER_TYPES:
        return order_commands(message, provenance)
    if code == "SIU" and trigger in SIU_TRIGGERS:
        return siu_commands(message, trigger, provenance)
    if (code, trigger) == ("ORU", "R01"):
        return oru_commands(message, header.sent_at, provenance)
    if code in KNOWN_MESSAGE_TYPES or code.isalpha():
        raise Refused(
            "AR",
            f"unsupported message type {header.message_type}",
            acks.UNSUPPORTED_EVENT_CODE
            if code in {c for c, _ in SUPPORTED}
            else acks.UNSUPPORTED_MESSAGE_TYPE,
            "MSH^1^9",
        )
    raise Refused(
        "AR", f"unreadable message type {header.message_type!r}", acks.UNSUPPORTED_MESSAGE_TYPE, "MSH^1^9"
    )
