"""Building HL7 v2 text for the outbound feeds (order status ORM^O01, report ORU^R01): escaping,
components, timestamps, the deterministic MSH-10 and the MSH / PID segments they share.

Builders, not a parser: the text uses the standard delimiters `|^~\\&` only, so every value is
escaped with the v2.5 escape sequences (section 2.7) before it lands in a field.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

SENDER = "RADFLOW"
HL7_VERSION = "2.5.1"
ENCODING_CHARACTERS = "^~\\&"

_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}


def escape(text: str) -> str:
    """HL7 escape sequences for the standard delimiters `|^~\\&` (v2.5 section 2.7); a line break
    becomes a blank (a CR would end the segment)."""
    out = [_ESCAPES.get(ch, ch) for ch in str(text)]
    return "".join(out).replace("\r", " ").replace("\n", " ")


def escape_text(line: str) -> str:
    """One line of free text (a TX / FT value): the delimiters escaped as in `escape`, and the
    control characters that would break the segment or the MLLP frame (CR, LF, VT 0x0B, FS 0x1C
    and the rest of C0 but TAB) as hexadecimal escapes `\\Xhh\\`, so nothing is lost."""
    out = []
    for ch in str(line):
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif (ord(ch) < 0x20 and ch != "\t") or ch == "\x7f":
            out.append(f"\\X{ord(ch):02X}\\")
        else:
            out.append(ch)
    return "".join(out)


def components(*parts: str) -> str:
    return "^".join(escape(p) for p in parts).rstrip("^")


def split_components(value: str) -> str:
    """A value already holding `^`-separated components (an XPN name, an XCN person): each
    component escaped on its own, the separators kept."""
    return "^".join(escape(part) for part in str(value).split("^"))


def hl7_timestamp(iso: str) -> str:
    """ISO 8601 as HL7 TS (YYYYMMDDHHMMSS[+ZZZZ]); "" for empty or unreadable input."""
    if not iso:
        return ""
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return ""
    text = moment.strftime("%Y%m%d%H%M%S")
    return text + moment.strftime("%z") if moment.tzinfo else text


def control_id(destination: str, event_key: str) -> str:
    """MSH-10, 20 characters (the v2.5 length): the same for the same (destination, event)."""
    return "RF" + hashlib.sha1(f"{destination}|{event_key}".encode()).hexdigest()[:18].upper()


def msh(
    receiving_application: str,
    receiving_facility: str,
    when: str,
    message_type: str,
    msh10: str,
    *,
    charset: str = "",
) -> str:
    """The MSH segment; `when` is HL7 TS already, `charset` MSH-18 (e.g. "UNICODE UTF-8")."""
    fields = [
        "MSH",
        ENCODING_CHARACTERS,
        SENDER,
        SENDER,
        escape(receiving_application),
        escape(receiving_facility),
        when,
        "",
        message_type,
        msh10,
        "P",
        HL7_VERSION,
    ]
    if charset:
        fields += ["", "", "", "", "", charset]  # MSH-13 .. MSH-18
    return "|".join(fields)


def pid(patient: dict[str, Any]) -> str:
    """PID-3 id^^^issuer, PID-5 the XPN name, PID-7 birth date, PID-8 sex."""
    return "|".join(
        [
            "PID",
            "1",
            "",
            components(patient.get("id", ""), "", "", patient.get("issuer", "")),
            "",
            split_components(str(patient.get("name", ""))),
            "",
            escape(str(patient.get("birth_date", "")).replace("-", "")),
            escape(patient.get("sex", "")),
        ]
    )
