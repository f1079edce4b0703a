"""Reading an HL7 message: the header by hand, any other field by its HL7 position."""

from __future__ import annotations

import pytest

from interfaces.hl7.message import Message, ParseError, read_header
from tests.unit.hl7_builders import message, msh, order, pid, segment


def test_the_header_is_read_field_by_field() -> None:
    header = read_header(message(msh(message_type="orm^o01^ORM_O01", control_id=" C-1 ", charset="8859/1"), pid()))
    assert header is not None
    assert (header.field_separator, header.encoding_characters) == ("|", "^~\\&")
    assert (header.sending_application, header.sending_facility) == ("HIS", "GENERAL")
    assert (header.receiving_application, header.receiving_facility) == ("RADFLOW", "RADIOLOGY")
    assert (header.sent_at, header.control_id, header.processing_id, header.version) == ("20240315103000", "C-1", "P", "2.5.1")
    assert (header.message_code, header.trigger_event, header.message_type) == ("ORM", "O01", "ORM^O01")
    assert header.charset == "8859/1"


def test_only_the_first_component_of_a_header_field_is_kept() -> None:
    text = "MSH|^~\\&|HIS^1.2.3^ISO|GEN~OTHER|RF|RF|20240101||ADT^A01|7|P^T|2.5^^2.16"
    header = read_header(text)
    assert header is not None
    assert (header.sending_application, header.sending_facility, header.processing_id, header.version) == ("HIS", "GEN", "P", "2.5")


def test_a_header_with_another_field_separator_is_read_with_it() -> None:
    header = read_header("MSH#^~\\&#HIS#GEN#RF#RF#20240101##ADT^A04#7#P#2.5")
    assert header is not None
    assert (header.field_separator, header.sending_application, header.message_type, header.control_id) == ("#", "HIS", "ADT^A04", "7")


@pytest.mark.parametrize("text", ["", "PID|1||P1", "MSH", "MSH|^~", "MSHA^~\\&|HIS", "MSH ^~\\&|HIS|"])
def test_text_without_a_usable_msh_has_no_header(text: str) -> None:
    assert read_header(text) is None


def test_a_message_that_does_not_start_with_msh_cannot_be_parsed() -> None:
    with pytest.raises(ParseError):
        Message("PID|1||P1\r" + order())


def test_values_are_read_by_field_component_subcomponent_and_repetition() -> None:
    parsed = Message(message(msh(), segment("PID", {1: "1", 3: "P1^^^HOSP&1.2.3&ISO~P2^^^OTHER", 5: "DOE^JANE"})))
    assert parsed.value("PID", 3) == "P1"
    assert parsed.value("PID", 3, 4) == "HOSP"
    assert parsed.value("PID", 3, 4, 2) == "1.2.3"
    assert parsed.value("PID", 3, 1, repetition=2) == "P2"
    assert parsed.value("PID", 3, repetition=3) == ""
    assert parsed.value("PID", 5, None) == "DOE^JANE"
    assert parsed.value("PID", 5, 9) == ""
    assert parsed.value("PID", 40) == ""
    assert parsed.value("OBR", 18) == ""
    assert parsed.value("MSH", 9, 2) == "O01"


def test_values_are_unescaped() -> None:
    parsed = Message(message(msh(), segment("PID", {1: "1", 5: "A\\F\\B\\S\\C\\T\\D\\R\\E\\E\\F"})))
    assert parsed.value("PID", 5) == "A|B^C&D~E\\F"


@pytest.mark.parametrize("sent", ["DOMAIN\\user", "A\\", "\\B", "X\\F\\Y\\Z"])
def test_a_lone_unescaped_backslash_keeps_the_value_as_sent(sent: str) -> None:
    assert Message(message(msh(), segment("PID", {1: "1", 6: sent}))).value("PID", 6) == sent


def test_an_explicit_null_reads_as_empty() -> None:
    assert Message(message(msh(), segment("PID", {1: "1", 3: '""'}))).value("PID", 3) == ""


def test_the_segment_ids_and_order_groups_follow_the_message() -> None:
    parsed = Message(message(msh(), pid(), "ORC|NW", "OBR|1", "NTE|1", "ORC|CA", "OBR|2"))
    assert parsed.segment_ids() == ["MSH", "PID", "ORC", "OBR", "NTE", "ORC", "OBR"]
    groups = parsed.groups("ORC", ("OBR", "NTE"))
    assert [sorted(g) for g in groups] == [["NTE", "OBR", "ORC"], ["OBR", "ORC"]]
    assert parsed.has("NTE") and not parsed.has("IPC")
