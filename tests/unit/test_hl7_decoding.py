"""From frame bytes to HL7 text: segment separators, byte order marks and MSH-18 charsets,
including the mislabelled feeds real hospitals send."""

from __future__ import annotations

import pytest

from interfaces.hl7.decoding import declared_charset, decode
from interfaces.hl7.message import read_header
from tests.unit.hl7_builders import message, msh, pid, segment

BOM = b"\xef\xbb\xbf"


def adt_with_name(name: str, charset: str = "") -> str:
    return message(msh(message_type="ADT^A08", charset=charset), pid(name=name), segment("PV1", {1: "1", 2: "I"}))


@pytest.mark.parametrize("separator", ["\r", "\n", "\r\n", "\n\r"], ids=["CR", "LF", "CRLF", "LFCR"])
def test_every_segment_separator_a_feed_uses_reads_as_cr(separator: str) -> None:
    expected = adt_with_name("DOE^JANE")
    text, _ = decode(expected.replace("\r", separator).encode("ascii"))
    assert text == expected


def test_blank_lines_and_trailing_separators_are_dropped() -> None:
    expected = adt_with_name("DOE^JANE")
    raw = ("\r\n" + expected.replace("\r", "\r\n\r\n") + "\r\n\n").encode("ascii")
    assert decode(raw)[0] == expected


def test_a_mix_of_separators_in_one_message_still_gives_one_segment_per_line() -> None:
    text, _ = decode(b"MSH|^~\\&|HIS|F|||20240101||ADT^A08|1|P|2.5\nEVN|A08\r\nPID|1||P1\rPV1|1|I")
    assert [s[:3] for s in text.split("\r")] == ["MSH", "EVN", "PID", "PV1"]


@pytest.mark.parametrize("charset", ["UNICODE UTF-8", ""], ids=["utf8-label", "no-label"])
def test_a_utf8_byte_order_mark_is_dropped(charset: str) -> None:
    expected = adt_with_name("MÜLLER^JÖRG", charset=charset)
    text, codec = decode(BOM + expected.encode("utf-8"))
    assert text == expected
    assert codec == "utf-8"
    assert read_header(text) is not None


def test_a_byte_order_mark_before_a_latin1_message_is_dropped_too() -> None:
    expected = adt_with_name("MÜLLER^JÖRG", charset="8859/1")
    text, codec = decode(BOM + expected.encode("latin-1"))
    assert (text, codec) == (expected, "latin-1")


def test_nul_bytes_around_the_message_are_ignored() -> None:
    expected = adt_with_name("DOE^JANE")
    assert decode(b"\x00\x00" + expected.encode("ascii") + b"\x00")[0] == expected


@pytest.mark.parametrize(
    ("charset", "codec", "name"),
    [
        ("8859/1", "latin-1", "MÜLLER^JÖRG"),
        ("UNICODE UTF-8", "utf-8", "MÜLLER^JÖRG^Ł"),
        ("UTF-8", "utf-8", "ŻÓŁW^ZOË"),
        ("ISO IR192", "utf-8", "ŻÓŁW^ZOË"),
        ("ISO IR100", "latin-1", "GARÇON^RENÉ"),
        ("8859/2", "iso8859-2", "ŻÓŁW^ŁUKASZ"),
        ("8859/5", "iso8859-5", "ИВАНОВ^ИВАН"),
        ("8859/7", "iso8859-7", "ΠΑΠΑΔΟΠΟΥΛΟΣ^ΓΙΩΡΓΟΣ"),
        ("8859/15", "iso8859-15", "ŒUVRE^€"),
        ("WINDOWS-1252", "cp1252", "O’BRIEN^ZOË"),
        ("GB 18030-2000", "gb18030", "王^小明"),
        ("KS X 1001", "euc_kr", "김^민준"),
    ],
)
def test_msh18_decides_how_the_bytes_are_read(charset: str, codec: str, name: str) -> None:
    expected = adt_with_name(name, charset=charset)
    assert decode(expected.encode(codec)) == (expected, codec)


def test_cp1252_bytes_under_a_utf8_label_are_read_as_cp1252() -> None:
    expected = adt_with_name("O’BRIEN^ZOË", charset="UNICODE UTF-8")
    text, codec = decode(expected.encode("cp1252"))
    assert (text, codec) == (expected, "cp1252")


def test_utf8_bytes_under_an_8859_label_are_read_as_utf8() -> None:
    expected = adt_with_name("MÜLLER^JÖRG – CT", charset="8859/1")
    assert decode(expected.encode("utf-8")) == (expected, "utf-8")


def test_non_ascii_bytes_without_a_label_are_read_as_utf8_when_they_are_utf8() -> None:
    expected = adt_with_name("MÜLLER^JÖRG")
    assert decode(expected.encode("utf-8")) == (expected, "utf-8")


def test_bytes_no_codec_can_read_still_give_text_through_latin1() -> None:
    # 0x81 and 0x8D are undefined in cp1252 and invalid as UTF-8 here: only latin-1 reads them
    raw = adt_with_name("DOE^X", charset="UNICODE UTF-8").encode("ascii").replace(b"DOE^X", b"DOE^\x81\x8d")
    text, codec = decode(raw)
    assert codec == "latin-1"
    assert "\x81\x8d" in text


def test_an_unknown_charset_label_falls_back_to_utf8() -> None:
    expected = adt_with_name("MÜLLER", charset="KLINGON-7")
    assert decode(expected.encode("utf-8")) == (expected, "utf-8")


def test_the_declared_charset_is_read_from_msh18_upper_cased_first_repetition_first() -> None:
    assert declared_charset(adt_with_name("X", charset="unicode utf-8").encode()) == "UNICODE UTF-8"
    assert declared_charset(adt_with_name("X", charset="8859/1~UNICODE UTF-8").encode()) == "8859/1"
    assert declared_charset(adt_with_name("X").encode()) == ""
    assert declared_charset(b"PID|1||P1") == ""


def test_the_declared_charset_follows_a_non_standard_field_separator() -> None:
    raw = b"MSH#^~\\&#HIS#F#RF#RF#20240101##ADT^A08#1#P#2.5######8859/1\rPID#1##P1"
    assert declared_charset(raw) == "8859/1"
