"""HL7 acknowledgements in original mode: MSA-1 AA/AE/AR, MSA-2 echoing MSH-10, ERR on refusal."""

from __future__ import annotations

import itertools
import os
from datetime import UTC, datetime

from interfaces.hl7.message import Header

# HL7 table 0357 (message error condition codes) used by radflow
SEGMENT_SEQUENCE_ERROR = ("100", "Segment sequence error")
REQUIRED_FIELD_MISSING = ("101", "Required field missing")
UNSUPPORTED_MESSAGE_TYPE = ("200", "Unsupported message type")
UNSUPPORTED_EVENT_CODE = ("201", "Unsupported event code")
UNKNOWN_KEY = ("204", "Unknown key identifier")
DUPLICATE_KEY = ("205", "Duplicate key identifier")
INTERNAL_ERROR = ("207", "Application internal error")

_counter = itertools.count(1)
_prefix = f"RF{os.getpid():x}"


def _control_id() -> str:
    return f"{_prefix}{datetime.now(UTC):%Y%m%d%H%M%S}{next(_counter):06d}"


def _clean(text: str, header: Header | None) -> str:
    """Keep reasons from breaking the ACK's own syntax."""
    specials = "\r\n|^~\\&" if header is None else "\r\n" + header.field_separator + header.encoding_characters
    return "".join(" " if ch in specials else ch for ch in text)[:200]


def build_ack(
    header: Header | None,
    code: str,
    reason: str = "",
    condition: tuple[str, str] = INTERNAL_ERROR,
    location: str = "",
) -> str:
    """The ACK text (segments joined by CR). Without a readable MSH it is a bare NAK."""
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
    if header is None:
        sep, enc = "|", "^~\\&"
        msh = [
            "MSH", enc, "RADFLOW", "RADFLOW", "", "", now, "", "ACK", _control_id(), "P", "2.5",
        ]
        received_control_id = ""
    else:
        sep, enc = header.field_separator, header.encoding_characters
        comp = header.component_separator
        msh = [
            "MSH",
            enc,
            header.receiving_application or "RADFLOW",
            header.receiving_facility,
            header.sending_application,
            header.sending_facility,
            now,
            "",
            comp.join(["ACK", header.trigger_event, "ACK"]) if header.trigger_event else "ACK",
            _control_id(),
            header.processing_id or "P",
            header.version or "2.5",
        ]
        if header.charset:
            msh += [""] * 5 + [header.charset]
        received_control_id = header.control_id
    comp = enc[:1]
    segments = [sep.join(msh), sep.join(["MSA", code, received_control_id, _clean(reason, header)])]
    if code != "AA":
        err_code = comp.join([condition[0], condition[1], "HL70357"])
        severity = "E"
        segments.append(
            sep.join(["ERR", "", location, err_code, severity, "", "", "", _clean(reason, header)])
        )
    return "\r".join(segments)
