"""C-FIND response identifiers encoded without pydicom's general-purpose writer.

pynetdicom encodes every identifier a C-FIND handler yields with pydicom's `write_dataset`,
which for a worklist item (twenty elements and a Scheduled Procedure Step item) took 0.4-0.7
ms: five matches cost more than radflow's whole query. The identifiers radflow builds hold
only string VRs and sequences of them, so they are written here in little endian, with
pydicom's own value encoders for text (`encode_string`, `PersonName.encode`: the specific
character sets, ISO 2022 escapes included, stay pydicom's). Anything else (binary VRs, raw
elements, ambiguous VRs, undefined lengths, big endian or deflate) raises Unencodable and
pydicom encodes it, as before. A property test holds the bytes equal to pydicom's.
"""

from __future__ import annotations

import struct
from typing import Any

from pydicom.charset import convert_encodings, default_encoding, encode_string
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName
from pynetdicom import dsutils, service_class

ITEM = struct.pack("<HH", 0xFFFE, 0xE000)
LONG_LENGTH_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
TEXT_VRS = {"LO", "LT", "SH", "ST", "UC", "UT"}  # encoded with the specific character set
STRING_VRS = {"AE", "AS", "CS", "DA", "DT", "TM", "UR"}  # written in the default encoding
NUMBER_VRS = {"DS", "IS"}
SPECIFIC_CHARACTER_SET = 0x00080005


class Unencodable(Exception):
    """Something this module does not write the way pydicom would."""


def _values(value: Any) -> list[Any]:
    return list(value) if isinstance(value, MultiValue | list | tuple) else [value]


def _string(values: list[Any], padding: bytes) -> bytes:
    if not all(isinstance(v, str) for v in values):
        raise Unencodable("a non-string value")
    text = "\\".join(values)
    if len(text) % 2:
        text += padding.decode()
    return text.encode(default_encoding)


def _value(element: DataElement, vr: str, encodings: list[str], implicit: bool) -> bytes:
    if element.is_empty:
        return b""
    if vr == "SQ":
        return b"".join(_item(item, implicit, encodings) for item in element.value)
    values = _values(element.value)
    if vr == "UI":
        return _string(values, b"\x00")
    if vr in STRING_VRS:
        return _string(values, b" ")
    if vr in NUMBER_VRS:
        text = "\\".join(v.original_string if hasattr(v, "original_string") else str(v) for v in values)
        return (text + " " if len(text) % 2 else text).encode(default_encoding)
    if vr == "PN":
        if not all(isinstance(v, PersonName) for v in values):
            raise Unencodable("a person name that is not a PersonName")
        raw = b"\\".join(v.encode(encodings) for v in values)
    elif vr in TEXT_VRS:
        if not all(isinstance(v, str) for v in values):
            raise Unencodable("a text value that is not a string")
        raw = b"\\".join(encode_string(v, encodings) for v in values)
    else:
        raise Unencodable(f"VR {vr}")
    return raw + b" " if len(raw) % 2 else raw


def _item(item: Dataset, implicit: bool, encodings: list[str]) -> bytes:
    if getattr(item, "is_undefined_length_sequence_item", False):
        raise Unencodable("an item of undefined length")
    body = _dataset(item, implicit, encodings)
    return ITEM + struct.pack("<I", len(body)) + body


def _dataset(dataset: Dataset, implicit: bool, parent: str | list[str]) -> bytes:
    charset = dataset.get_item(SPECIFIC_CHARACTER_SET)
    if charset is not None and not isinstance(charset, DataElement):
        raise Unencodable("a raw element")
    # as pydicom: an item's own Specific Character Set (even an empty one) over its parent's
    encodings = convert_encodings((charset.value or default_encoding) if charset is not None else parent)
    out = bytearray()
    for tag in sorted(dataset.keys()):
        element = dataset.get_item(tag)
        if not isinstance(element, DataElement):
            raise Unencodable("a raw element")
        vr = str(element.VR)
        if len(vr) != 2 or element.is_undefined_length or element.is_buffered:
            raise Unencodable(f"element {tag}: VR {vr}, undefined length or buffered")
        value = _value(element, vr, encodings, implicit)
        out += struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        if implicit:
            out += struct.pack("<I", len(value))
        elif vr in LONG_LENGTH_VRS:
            out += vr.encode() + struct.pack("<HI", 0, len(value))
        elif len(value) > 0xFFFF:
            raise Unencodable("a value too long for a 2-byte length")
        else:
            out += vr.encode() + struct.pack("<H", len(value))
        out += value
    return bytes(out)


def encode_identifier(dataset: Dataset, implicit: bool, little_endian: bool, deflated: bool = False) -> bytes:
    """`dataset` as pydicom would encode it (`pynetdicom.dsutils.encode`); raises Unencodable."""
    if not little_endian or deflated:
        raise Unencodable("big endian or deflated")
    try:
        return _dataset(dataset, implicit, default_encoding)
    except (LookupError, UnicodeError) as error:  # what pydicom warns about and replaces
        raise Unencodable(str(error)) from error


def encode(dataset: Dataset, implicit: bool, little_endian: bool, deflated: bool = False) -> bytes | None:
    """`pynetdicom.dsutils.encode`, through `encode_identifier` when it can."""
    try:
        return encode_identifier(dataset, implicit, little_endian, deflated)
    except Exception:  # Unencodable, or a surprise: pydicom decides, and logs its own failure
        return dsutils.encode(dataset, implicit, little_endian, deflated)


def install() -> None:
    """Make pynetdicom's service classes (C-FIND, C-GET, N-* responses) encode through here."""
    service_class.encode = encode  # type: ignore[assignment]
