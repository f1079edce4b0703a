"""From raw frame bytes to HL7 text: character set by MSH-18, segment separators normalised.

Real feeds send LF or CRLF instead of CR, a UTF-8 BOM, and cp1252 bytes under a UTF-8 label;
the raw bytes stay in the message log untouched, this only decides how to read them.
"""

from __future__ import annotations

import re

# HL7 table 0211 names -> Python codecs
CHARSETS: dict[str, str] = {
    "": "ascii",
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "ISO IR6": "ascii",
    "ISO IR100": "latin-1",
    "ISO IR192": "utf-8",
    "ISO IR87": "iso2022_jp",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "CNS 11643-1992": "big5",
    "BIG-5": "big5",
    "WINDOWS-1252": "cp1252",
}

_SEGMENT_BREAK = re.compile(r"\r\n|\n\r|\n|\r")


class DecodingError(ValueError):
    """The frame cannot be read as HL7 text at all."""


def declared_charset(raw: bytes) -> str:
    """MSH-18 read straight from the bytes (ASCII-safe in every HL7 charset we accept)."""
    header = next((s for s in re.split(rb"[\r\n]", raw) if s.startswith(b"MSH")), b"")
    if len(header) < 4:
        return ""
    separator = header[3:4]
    fields = header.split(separator)
    if len(fields) <= 17:
        return ""
    charset = fields[17].split(b"~")[0].split(b"^")[0]  # first repetition wins
    return charset.decode("ascii", "replace").strip().upper()


def decode(raw: bytes) -> tuple[str, str]:
    """Return (text with CR segment separators, codec actually used)."""
    body = raw.removeprefix(b"\xef\xbb\xbf").strip(b"\x00")
    label = declared_charset(body)
    codec = CHARSETS.get(label, "utf-8")
    if codec in ("latin-1", "iso8859-15", "cp1252") and _is_multibyte_utf8(body):
        # the opposite mislabelling: UTF-8 under an 8859 label. Latin-1 text practically never
        # forms valid multi-byte UTF-8 sequences, so such bytes are read as UTF-8
        codec = "utf-8"
    try:
        text = body.decode(codec)
    except (UnicodeDecodeError, LookupError):
        # mislabelled feeds: most often cp1252 bytes under UTF-8/ASCII; latin-1 never fails
        for fallback in ("utf-8", "cp1252", "latin-1"):
            try:
                text = body.decode(fallback)
                codec = fallback
                break
            except UnicodeDecodeError:
                continue
    text = text.lstrip("\ufeff")
    segments = [s for s in _SEGMENT_BREAK.split(text) if s.strip()]
    return "\r".join(segments), codec


def _is_multibyte_utf8(body: bytes) -> bool:
    if body.isascii():
        return False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
