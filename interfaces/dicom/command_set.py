"""DIMSE messages sent without building a pydicom Dataset for their command set.

pynetdicom turns every primitive it sends into a `DIMSEMessage` whose command set is a pydicom
Dataset, encoded twice (once to learn the group length). For a C-STORE-RSP that is about
0.6 ms of the association's one thread, a fifth of the time per instance on one association
(bench/dicom.py --profile); a C-FIND or C-MOVE pays it for every pending response. The command
set is a handful of implicit VR little endian elements whose VRs PS3.7 fixes, so they are
written here directly, element by element in the order pynetdicom would write them. What this
cannot write the same way (an unexpected VR or value, a data set streamed from a file) goes
through pynetdicom, as do all messages while something is bound to EVT_DIMSE_SENT (that event
hands out the DIMSEMessage). A property test holds the bytes equal to pynetdicom's.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from functools import cache
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pynetdicom import evt
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE, DIMSEServiceProvider
from pynetdicom.dimse_messages import _COMMAND_SET_KEYWORDS, _DATASET_KEYWORDS, _MESSAGE_TYPES
from pynetdicom.pdu_primitives import P_DATA

COMMAND_FIELD = {name: field for field, (name, _cls) in _MESSAGE_TYPES.items()}
NO_DATA_SET = 0x0101
DATA_SET = 0x0001
# message control headers (PS3.8 E.2): command or data set, last fragment or not
COMMAND, COMMAND_LAST, DATA, DATA_LAST = b"\x01", b"\x03", b"\x00", b"\x02"
PDV_OVERHEAD = 6  # item length (4), context ID (1), message control header (1)


class Unencodable(Exception):
    """A value this module does not write the way pydicom would: pynetdicom sends it."""


@cache
def _layout(message: str) -> tuple[tuple[str, int, str], ...]:
    """(keyword, tag, VR) of a message type's command elements, in tag order, the group
    length left out (it is computed)."""
    fields = []
    for keyword in _COMMAND_SET_KEYWORDS[message]:
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        if tag != 0x00000000:
            fields.append((keyword, tag, dictionary_VR(tag)))
    return tuple(sorted(fields, key=lambda field: field[1]))


def _value(vr: str, value: Any) -> bytes:
    if vr == "US":
        if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise Unencodable(f"US value {value!r}")
        return struct.pack("<H", value)
    if vr == "UL":
        if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
            raise Unencodable(f"UL value {value!r}")
        return struct.pack("<I", value)
    if vr == "UI":
        if not isinstance(value, str):
            raise Unencodable(f"UI value {value!r}")
        raw = value.encode("ascii")
        return raw + b"\x00" if len(raw) % 2 else raw
    if vr in ("AE", "LO", "SH", "CS"):
        if not isinstance(value, str) or "\\" in value:
            raise Unencodable(f"{vr} value {value!r}")
        raw = value.encode("ascii")
        return raw + b" " if len(raw) % 2 else raw
    if vr == "AT":
        tags = value if isinstance(value, list | tuple) else [value]
        if not all(isinstance(tag, int) and 0 <= tag <= 0xFFFFFFFF for tag in tags):
            raise Unencodable(f"AT value {value!r}")
        return b"".join(struct.pack("<HH", tag >> 16, tag & 0xFFFF) for tag in tags)
    raise Unencodable(f"VR {vr}")


def encode_message(primitive: Any) -> tuple[bytes, bytes | None]:
    """(encoded command set, encoded data set or None) of the message pynetdicom would send for
    `primitive`; raises Unencodable for what only pynetdicom should write."""
    if primitive.MessageIDBeingRespondedTo is None:
        message_class = _RQ_TO_MESSAGE[primitive.__class__]
    else:
        message_class = _RSP_TO_MESSAGE[primitive.__class__]
    if getattr(primitive, "_dataset_path", None):
        raise Unencodable("data set streamed from a file")
    name = message_class.__name__.replace("_", "-")
    data_keyword = _DATASET_KEYWORDS.get(message_class.__name__)
    data = getattr(primitive, data_keyword) if data_keyword else None
    body = bytearray()
    for keyword, tag, vr in _layout(name):
        if keyword == "CommandField":
            value: Any = COMMAND_FIELD[name]
        elif keyword == "CommandDataSetType":
            value = NO_DATA_SET if data is None else DATA_SET
        elif hasattr(primitive, keyword):
            value = getattr(primitive, keyword)
            if value is None:
                continue
        else:  # pynetdicom leaves such an element empty
            value = None
        encoded = b"" if value is None else _value(vr, value)
        body += struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(encoded))
        body += encoded
    command = struct.pack("<HHII", 0, 0, 4, len(body)) + bytes(body)
    return command, (None if data is None else data.getvalue())


def _fragments(marker: bytes, last: bytes, encoded: bytes, max_pdu: int) -> Iterator[bytes]:
    size = len(encoded) if max_pdu == 0 else max_pdu - PDV_OVERHEAD
    size = max(size, 1)
    for start in range(0, max(len(encoded), 1), size):
        chunk = encoded[start : start + size]
        yield (last if start + size >= len(encoded) else marker) + chunk


def p_data(context_id: int, command: bytes, data: bytes | None, max_pdu: int) -> Iterator[P_DATA]:
    """The P-DATA primitives for one message, fragmented as pynetdicom fragments it, except
    that a command and a data set that fit one PDU together go in one, as two PDVs (PS3.8
    9.3.5 allows several per PDU; pynetdicom and DCMTK read them). A C-FIND's pending
    responses each took two PDUs, two passes of both ends' DUL loops."""
    if data and (max_pdu == 0 or PDV_OVERHEAD * 2 + len(command) + len(data) <= max_pdu):
        primitive = P_DATA()
        primitive.presentation_data_value_list.append((context_id, COMMAND_LAST + command))
        primitive.presentation_data_value_list.append((context_id, DATA_LAST + data))
        yield primitive
        return
    parts = list(_fragments(COMMAND, COMMAND_LAST, command, max_pdu))
    if data:
        parts += _fragments(DATA, DATA_LAST, data, max_pdu)
    for part in parts:
        primitive = P_DATA()
        primitive.presentation_data_value_list.append((context_id, part))
        yield primitive


class DirectDimse(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, sending messages encoded by `encode_message`."""

    def send_msg(self, primitive: Any, context_id: int) -> None:
        if self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            super().send_msg(primitive, context_id)
            return
        try:
            command, data = encode_message(primitive)
        except (Unencodable, UnicodeEncodeError):
            super().send_msg(primitive, context_id)
            return
        for pdata in p_data(context_id, command, data, self.maximum_pdu_size):
            self.dul.send_pdu(pdata)
