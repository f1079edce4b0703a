"""The C-FIND identifiers radflow encodes itself are byte for byte what pydicom writes."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import encode as pydicom_encode

from interfaces.dicom.identifier_encoding import Unencodable, encode_identifier

ascii_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\\^="), max_size=16
)
any_text = st.text(st.sampled_from("AbZ09 .-éüßÆЖжΩ日本語한국"), max_size=12)
texts = ascii_text | any_text
names = st.lists(texts, min_size=1, max_size=3).map("^".join)
uids = st.from_regex(r"[1-9][0-9]{0,5}(\.(0|[1-9][0-9]{0,5})){1,6}", fullmatch=True)
codes = st.text(st.sampled_from("ABCXYZ019_ "), min_size=1, max_size=16).map(str.strip).filter(bool)

# (tag, VR, values) of attributes a worklist or Q/R response holds
ELEMENTS: list[tuple[int, str, Any]] = [
    (0x00080020, "DA", st.sampled_from(["20240201", "19700101", ""])),
    (0x00080030, "TM", st.sampled_from(["080000", "235959.123456", "0800", ""])),
    (0x00080050, "SH", ascii_text),
    (0x00080060, "CS", codes),
    (0x00080090, "PN", names),
    (0x00081030, "LO", texts),
    (0x0020000D, "UI", uids),
    (0x00100010, "PN", names),
    (0x00100020, "LO", texts),
    (0x00100030, "DA", st.sampled_from(["19700101", ""])),
    (0x00101030, "DS", st.sampled_from(["72.5", "80", "1e2", ""])),
    (0x00102000, "LO", st.lists(texts, min_size=1, max_size=3)),
    (0x00201208, "IS", st.sampled_from(["12", "0", ""])),
    (0x00321060, "LO", texts),
    (0x00400001, "AE", codes),
    (0x00400007, "LO", texts),
    (0x00401001, "SH", ascii_text),
    (0x00401400, "LT", texts),
    (0x00081080, "LO", texts),
    (0x00324000, "LT", texts),
]
CHARSETS = st.sampled_from([None, "", "ISO_IR 100", "ISO_IR 192", "ISO_IR 144", ["", "ISO 2022 IR 87"]])


@st.composite
def datasets(draw: Any, depth: int = 0) -> Dataset:
    dataset = Dataset()
    charset = draw(CHARSETS)
    if charset is not None:
        dataset.add(DataElement(0x00080005, "CS", charset))
    for tag, vr, values in draw(st.lists(st.sampled_from(ELEMENTS), max_size=12, unique_by=lambda e: e[0])):
        value = draw(st.none() | values)
        dataset.add(DataElement(tag, vr, value if value != "" else None))
    if depth < 2 and draw(st.booleans()):
        items = draw(st.lists(datasets(depth=depth + 1), max_size=2))
        dataset.add(DataElement(0x00400100, "SQ", Sequence(items)))
    return dataset


def pydicom_bytes(dataset: Dataset, implicit: bool) -> bytes | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom_encode(dataset, implicit, True)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dataset=datasets(), implicit=st.booleans())
def test_identifiers_are_encoded_as_pydicom_encodes_them(dataset: Dataset, implicit: bool) -> None:
    expected = pydicom_bytes(dataset, implicit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ours = encode_identifier(dataset, implicit, True)
        except Unencodable:
            return  # pydicom writes it (or fails) as before
    assert ours == expected


def test_what_it_does_not_write_is_left_to_pydicom() -> None:
    dataset = Dataset()
    dataset.add(DataElement(0x00280010, "US", 512))
    with pytest.raises(Unencodable):
        encode_identifier(dataset, False, True)
    with pytest.raises(Unencodable):
        encode_identifier(Dataset(), False, False)


def test_a_worklist_item_is_written_directly() -> None:
    item = Dataset()
    item.Modality = "CT"
    item.ScheduledStationAETitle = "CT1"
    dataset = Dataset()
    dataset.SpecificCharacterSet = "ISO_IR 192"
    dataset.PatientName = "Müller^Jörg"
    dataset.AccessionNumber = "ACC1"
    dataset.ScheduledProcedureStepSequence = [item]
    assert encode_identifier(dataset, False, True) == pydicom_bytes(dataset, False)
