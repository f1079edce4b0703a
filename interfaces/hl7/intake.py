"""One received frame -> an `Inbound` record for the message log: decoded, parsed, accepted or
refused by its channel, mapped, with an ACK builder bound to its header and ACK mode. Never
raises: every failure becomes a refusal."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from adapters.message_log import Inbound
from domain.commands import workflow_id_for
from interfaces.hl7 import acks
from interfaces.hl7.channels import Applied, ChannelConfig, builtin
from interfaces.hl7.decoding import decode
from interfaces.hl7.mapping import ORDER_SEGMENTS, Mapped, Refused, map_message
from interfaces.hl7.message import Header, Message, ParseError, read_header

log = logging.getLogger(__name__)


def _ack_bytes(
    header: Header | None,
    codec: str,
    condition: tuple[str, str],
    location: str,
    code: str,
    reason: str,
    accept_type: str = "",
) -> bytes:
    """The ACK; b'' when the sender's MSH-15 (enhanced mode) asked not to get this one."""
    if accept_type and not acks.commit_ack_wanted(accept_type, code):
        return b""
    text = acks.build_ack(header, code, reason, condition, location, enhanced=bool(accept_type))
    return text.encode(codec if codec not in ("ascii",) else "utf-8", errors="replace")


def interpret(raw: bytes, peer: str, received_at: str, channels: ChannelConfig | None = None) -> Inbound:
    """`channels`: the site's configuration loaded at start; None means the built-in default."""
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
    accept_type = acks.accept_ack_type(text, header)
    ack = partial(_ack_bytes, header, codec)
    inbound.build_ack = partial(ack, acks.INTERNAL_ERROR, "", accept_type=accept_type)
    inbound.build_error_ack = partial(_error_ack, ack, accept_type)
    message: Message | None = None
    try:
        channel = (channels or builtin()).select(header)
        inbound.channel = channel.name
        if channel.ack_mode == "original":
            accept_type = ""
            inbound.build_ack = partial(ack, acks.INTERNAL_ERROR, "")
            inbound.build_error_ack = partial(_error_ack, ack, "")
        if not header.control_id:
            raise Refused(
                "AR", "MSH-10 message control id is missing", acks.REQUIRED_FIELD_MISSING, "MSH^1^10"
            )
        channel.check(text, header)
        message = Message(text)
        mapped = map_message(message, header, received_at)
        applied = Applied(mapped.commands) if channel.is_plain else channel.apply(message, mapped.commands)
    except Refused as refused:
        inbound.refusal = (refused.code, refused.reason)
        _order_numbers(inbound, message, text)
        inbound.build_ack = partial(ack, refused.condition, refused.location, accept_type=accept_type)
        return inbound
    except ParseError as error:
        inbound.refusal = ("AR", str(error)[:200])
        inbound.build_ack = partial(ack, acks.SEGMENT_SEQUENCE_ERROR, "", accept_type=accept_type)
        return inbound
    except Exception as error:  # a mapping bug must not kill the listener; the sender sees AR
        log.exception("mapping failed", extra={"control_id": header.control_id})
        inbound.refusal = ("AR", f"internal error while mapping: {type(error).__name__}")
        return inbound
    _attach(inbound, mapped, applied)
    return inbound


def _error_ack(
    ack: Any, accept_type: str, code: str, reason: str, condition: tuple[str, str], location: str
) -> bytes:
    """For the message log's own refusals (unknown accession 204, duplicate 205)."""
    return ack(condition, location, code, reason, accept_type=accept_type)  # type: ignore[no-any-return]


def _group_numbers(message: Message) -> list[tuple[str, str]]:
    """(placer, filler) per order group: ORC-2/3, else OBR-2/3."""
    numbers = []
    for group in message.groups("ORC", ORDER_SEGMENTS):
        orc = (group.get("ORC") or [None])[0]
        obr = (group.get("OBR") or [None])[0]
        numbers.append(
            (message.value(orc, 2) or message.value(obr, 2), message.value(orc, 3) or message.value(obr, 3))
        )
    return numbers


def _order_numbers(inbound: Inbound, message: Message | None, text: str) -> None:
    """A refused order is still found by its numbers in the browser, when they are readable."""
    if message is None:
        try:
            message = Message(text)
        except ParseError:
            return
    if not (message.has("ORC") or message.has("OBR")):
        return
    numbers = _group_numbers(message)
    if numbers:
        inbound.placer_order_number, inbound.filler_order_number = next(
            (n for n in numbers if n[0] or n[1]), numbers[0]
        )


def _attach(inbound: Inbound, mapped: Mapped, applied: Applied) -> None:
    entries: list[dict[str, Any]] = []
    for index, command in enumerate(applied.commands):
        data = command.as_dict()
        # the log resolves an order named only by its numbers (accession "") with these keys
        placer, filler = mapped.numbers_of(index)
        data.setdefault("placer_order_number", placer)
        data.setdefault("filler_order_number", filler)
        entries.append({"workflow_id": workflow_id_for(command), "command": data})
    inbound.commands = entries
    accessions = (str(getattr(c, "accession", "")) for c in applied.commands)
    inbound.accession = next((a for a in accessions if a), "") or mapped.accession
    inbound.patient_id = mapped.patient_id
    inbound.warnings = [*applied.warnings, *(_enrichment_note(e) for e in applied.enrichment)]
    if not (inbound.placer_order_number or inbound.filler_order_number):
        inbound.placer_order_number, inbound.filler_order_number = next(
            (n for n in mapped.order_numbers if n[0] or n[1]), ("", "")
        )


def _enrichment_note(entry: dict[str, Any]) -> str:
    """The procedure table's billing and scheduling facts, which the exam does not carry (yet)."""
    facts = [
        f"CPT {entry['cpt']}" if "cpt" in entry else "",
        f"{entry['duration_min']} min" if "duration_min" in entry else "",
    ]
    where = f" (accession {entry['accession']})" if entry.get("accession") else ""
    return f"procedure {entry['procedure_code']}{where}: " + ", ".join(f for f in facts if f)
