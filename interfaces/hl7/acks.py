"""HL7 acknowledgements: original mode (MSA-1 AA/AE/AR) and, when the sender asks for it in
MSH-15, enhanced-mode commit ACKs (CA/CE/CR); MSA-2 echoes MSH-10, ERR on refusal."""

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
UNSUPPORTED_VERSION = ("203", "Unsupported version id")
TABLE_VALUE_NOT_FOUND = ("103", "Table value not found")
UNKNOWN_KEY = ("204", "Unknown key identifier")
DUPLICATE_KEY = ("205", "Duplicate key identifier")
UNSUPPORTED_VERSION = ("203", "Unsupported version id")
TABLE_VALUE_NOT_FOUND = ("103", "Table value not found")
INTERNAL_ERROR = ("207", "Application internal error")

# enhanced mode: the same decision as a commit acknowledgement
COMMIT_CODES = {"AA": "CA", "AE": "CE", "AR": "CR"}
ACCEPT_ACK_TYPES = frozenset(["AL", "NE", "ER", "SU"])  # HL7 table 0155

_counter = itertools.count(1)
_prefix = f"RF{os.getpid():x}"


def _control_id() -> str:
    return f"{_prefix}{datetime.now(UTC):%Y%m%d%H%M%S}{next(_counter):06d}"


def _clean(text: str, header: Header | None) -> str:
    """Keep reasons from breaking the ACK's own syntax."""
    specials = (
        "\r\n|^~\\&" if header is None else "\r\n" + header.field_separator + header.encoding_characters
    )
    return "".join(" " if ch in specials else ch for ch in text)[:200]


def build_ack(
    header: Header | None,
    code: str,
    reason: str = "",
    condition: tuple[str, str] = INTERNAL_ERROR,
    location: str = "",
    enhanced: bool = False,
) -> str:
    """The ACK text (segments joined by CR). Without a readable MSH it is a bare NAK.
    `enhanced`: answer as a commit ACK (CA/CE/CR), for senders that asked in MSH-15."""
    if enhanced:
        code = COMMIT_CODES.get(code, code)
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
    if header is None:
        sep, enc = "|", "^~\\&"
        msh = [
            "MSH",
            enc,
            "RADFLOW",
            "RADFLOW",
            "",
            "",
            now,
            "",
            "ACK",
            _control_id(),
            "P",
            "2.5",
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
    if code not in ("AA", "CA"):
        err_code = comp.join([condition[0], condition[1], "HL70357"])
        severity = "E"
        segments.append(
            sep.join(["ERR", "", location, err_code, severity, "", "", "", _clean(reason, header)])
        )
    return "\r".join(segments)


def accept_ack_type(text: str, header: Header | None) -> str:
    """MSH-15 (accept acknowledgement type) when it holds a table 0155 value, else ''."""
    if header is None:
        return ""
    start = text.find("MSH")
    end = text.find("\r", start)
    segment = text[start : end if end >= 0 else len(text)] if start >= 0 else ""
    fields = ["MSH", header.field_separator, *segment[4:].split(header.field_separator)]
    value = fields[15].strip().upper() if len(fields) > 15 else ""
    return value if value in ACCEPT_ACK_TYPES else ""


def commit_ack_wanted(accept_type: str, code: str) -> bool:
    """Whether MSH-15 asks for a commit ACK with this outcome (NE never, ER on error, SU on success)."""
    if accept_type == "NE":
        return False
    if accept_type == "ER":
        return code not in ("AA", "CA")
    if accept_type == "SU":
        return code in ("AA", "CA")
    return True
