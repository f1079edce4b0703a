"""What radflow would do with a message, without doing it: the parsed tree, the commands, the
warnings and the ACK, through the same intake code as the listener. No database, no network."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import hl7

from interfaces.hl7.decoding import decode
from interfaces.hl7.intake import interpret
from interfaces.hl7.message import read_header

RECORD_TIME_NOTE = (
    "checks against earlier messages are not part of a dry run "
    "(unknown accession or order number, duplicate control id, duplicate order)"
)
HEADER_FIELDS = (
    "sending_application",
    "sending_facility",
    "receiving_application",
    "receiving_facility",
    "sent_at",
    "message_type",
    "control_id",
    "processing_id",
    "version",
    "charset",
)


class UnknownChannel(ValueError):
    """The dry run was asked for a channel the configuration does not have."""


def dry_run(raw: bytes, channels: Any = None, channel: str | None = None) -> dict[str, Any]:
    """The dry-run report for one message; raises UnknownChannel for a channel name that is not
    configured (a usage error, unlike a refused message, which is a normal answer)."""
    if channel:
        channels = _only(channels, channel)
    now = datetime.now(UTC).isoformat()
    inbound = interpret(raw, peer="dry-run", received_at=now, channels=channels)
    text, _ = decode(raw)
    header = read_header(text)
    code, reason = inbound.refusal or ("AA", "")
    ack = inbound.build_ack(code, reason).decode("utf-8", errors="replace")
    ack_text = "\n".join(s for s in ack.replace("\r\n", "\r").split("\r") if s)
    refusal = None
    if inbound.refusal is not None:
        condition, location = _err_of(ack)
        refusal = {"code": code, "reason": reason, "condition": condition, "location": location}
    commands = [{"workflow_id": entry["workflow_id"], **entry["command"]} for entry in inbound.commands]
    warnings = [str(w) for w in getattr(inbound, "warnings", []) or []]
    return {
        "channel": inbound.channel or channel or "",
        "header": {name: _header_value(header, name) for name in HEADER_FIELDS} if header else None,
        "tree": message_tree(text),
        "commands": commands,
        "warnings": warnings,
        "refusal": refusal,
        "outcome": code,
        "ack": ack_text,
        "ack_code": _msa_code(ack),
        "ack_note": ""
        if ack_text
        else "MSH-15 asks for no acknowledgement of this outcome: none would be sent",
        "note": RECORD_TIME_NOTE,
    }


def _only(channels: Any, name: str) -> Any:
    """The configuration narrowed to the named channel: the same intake code then selects it
    (or says why it would not take this message)."""
    from interfaces.hl7 import channels as channel_config

    config = channels if channels is not None else channel_config.builtin()
    try:
        chosen = config.by_name(name)
    except KeyError as error:
        raise UnknownChannel(str(error.args[0]) if error.args else f"no channel named {name!r}") from error
    return dataclasses.replace(config, channels=(chosen,))


def _msa_code(ack: str) -> str:
    """MSA-1 of an ACK (AA/AE/AR, or CA/CE/CR in enhanced mode); '' when there is no ACK."""
    msa = next((seg for seg in ack.replace("\r\n", "\r").split("\r") if seg.startswith("MSA")), "")
    return msa[4:].split(msa[3:4] or "|")[0] if len(msa) > 4 else ""


def _header_value(header: Any, name: str) -> str:
    return str(getattr(header, name, ""))


def _err_of(ack: str) -> tuple[str, str]:
    """ERR-3 condition (code^text) and ERR-2 location of an ACK; ('', '') without ERR."""
    segments = ack.replace("\r\n", "\r").split("\r")
    msh = next((s for s in segments if s.startswith("MSH")), "MSH|^~\\&")
    sep = msh[3:4] or "|"
    comp = msh[4:5] or "^"
    err = next((s for s in segments if s.startswith("ERR")), "")
    fields = err.split(sep)
    if len(fields) < 4:
        return "", ""
    condition = fields[3].split(comp)
    return comp.join(condition[:2]), fields[2]


def message_tree(text: str) -> list[dict[str, Any]]:
    """Segments and their non-empty fields with HL7 positions (MSH-1 is the field separator).
    A field with repetitions or components also lists them (raw, split with the message's own
    separators) and its components unescaped, positioned like "PID-5.1" (2nd repetition:
    "PID-3[2].1")."""
    try:
        parsed = hl7.parse(text)
        separators = parsed.separators  # segment, field, repetition, component, subcomponent
    except Exception as error:  # a message the listener refused may not parse at all
        return [{"error": f"cannot parse: {type(error).__name__}: {str(error)[:200]}"}]
    rep_sep, comp_sep = (separators + "~^")[2], (separators + "~^~^")[3]
    tree = []
    for segment in parsed:
        name = str(segment[0])
        fields = []
        for position in range(1, len(segment)):
            value = str(segment[position])
            if not value:
                continue
            where = f"{name}-{position}"
            entry: dict[str, Any] = {"position": where, "value": value}
            if not (name == "MSH" and position <= 2):
                text = _unescape(parsed, value)
                if text != value:  # only fields with escape sequences read differently
                    entry["text"] = text
                if rep_sep in value or comp_sep in value:
                    reps = [rep.split(comp_sep) for rep in value.split(rep_sep)]
                    entry["repetitions"] = reps
                    entry["components"] = [
                        {
                            "position": f"{where}{f'[{r}]' if len(reps) > 1 else ''}.{c}",
                            "value": _unescape(parsed, component),
                        }
                        for r, rep in enumerate(reps, start=1)
                        for c, component in enumerate(rep, start=1)
                        if component
                    ]
            fields.append(entry)
        tree.append({"segment": name, "fields": fields})
    return tree


def _unescape(parsed: hl7.Message, value: str) -> str:
    if parsed.esc not in value or value.count(parsed.esc) % 2:
        return value
    try:
        return str(parsed.unescape(value))
    except Exception:  # a broken escape sequence: show the text as sent
        return value
