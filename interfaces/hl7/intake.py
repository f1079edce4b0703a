"""One received frame -> an `Inbound` record for the message log: decoded, parsed, mapped, with
an ACK builder bound to its header. Never raises: every failure becomes a refusal."""

from __future__ import annotations

import logging
from functools import partial

from adapters.message_log import Inbound
from domain.commands import workflow_id_for
from interfaces.hl7 import acks
from interfaces.hl7.decoding import decode
from interfaces.hl7.mapping import Mapped, Refused, map_message
from interfaces.hl7.message import Header, Message, ParseError, read_header

log = logging.getLogger(__name__)


def _ack_bytes(
    header: Header | None, codec: str, condition: tuple[str, str], location: str, code: str, reason: str
) -> bytes:
    text = acks.build_ack(header, code, reason, condition, location)
    return text.encode(codec if codec not in ("ascii",) else "utf-8", errors="replace")


def interpret(raw: bytes, peer: str, received_at: str) -> Inbound:
    text, codec = decode(raw)
    header = read_header(text)
    inbound = Inbound(
        raw=raw,
        peer=peer,
        received_at=received_at,
        build_ack=partial(_ack_bytes, header, codec, acks.INTERNAL_ERROR, ""),
    )
    if header is None:
        inbound.refusal = ("AR", "no MSH segment: not an HL7 v2 message")
        inbound.build_ack = partial(_ack_bytes, None, codec, acks.SEGMENT_SEQUENCE_ERROR, "MSH")
        return inbound
    inbound.sending_application = header.sending_application
    inbound.sending_facility = header.sending_facility
    inbound.control_id = header.control_id
    inbound.message_type = header.message_type
    try:
        if not header.control_id:
            raise Refused("AR", "MSH-10 message control id is missing", acks.REQUIRED_FIELD_MISSING, "MSH^1^10")
        mapped = map_message(Message(text), header, received_at)
    except Refused as refused:
        inbound.refusal = (refused.code, refused.reason)
        inbound.build_ack = partial(_ack_bytes, header, codec, refused.condition, refused.location)
        return inbound
    except ParseError as error:
        inbound.refusal = ("AR", str(error)[:200])
        inbound.build_ack = partial(_ack_bytes, header, codec, acks.SEGMENT_SEQUENCE_ERROR, "")
        return inbound
    except Exception as error:  # a mapping bug must not kill the listener; the sender sees AR
        log.exception("mapping failed", extra={"control_id": header.control_id})
        inbound.refusal = ("AR", f"internal error while mapping: {type(error).__name__}")
        return inbound
    _attach(inbound, mapped)
    return inbound


def _attach(inbound: Inbound, mapped: Mapped) -> None:
    inbound.commands = [
        {"workflow_id": workflow_id_for(c), "command": c.as_dict()} for c in mapped.commands
    ]
    inbound.accession = mapped.accession
    inbound.patient_id = mapped.patient_id
