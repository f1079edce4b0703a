"""HL7 field paths as analysts write them, read out of real message text, and the rules
(first non-empty, concatenation, normalisers, code table, default) that make a domain value."""

from __future__ import annotations

import pytest

from interfaces.hl7.field_paths import FieldPath, FieldRule, PathSyntaxError
from interfaces.hl7.message import Message
from tests.unit.hl7_builders import message, msh, obr, orc, pid, segment, zds

TEXT = message(
    msh(),
    segment("PID", {1: "1", 3: "123^^^HOSP~456^^^OTHER", 5: "DOE^JOHN^Q^JR", 7: "19800102"}),
    orc(placer="P1"),
    obr(accession="A1", procedure="CT1^Head \\T\\ neck"),
    segment("ZDS", {1: "1.2.3^RADFLOW^Application^DICOM"}),
    orc(placer="P2"),
    obr(accession="A2", procedure="MR1^Brain", modality="mri"),
)


@pytest.fixture(scope="module")
def msg() -> Message:
    return Message(TEXT)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("PID-3", "123"),
        ("PID-3.4", "HOSP"),
        ("PID-3[2].1", "456"),
        ("PID-3[2].4", "OTHER"),
        ("PID-3[3].1", ""),
        ("OBR-4.2", "Head & neck"),  # escape sequences are undone
        ("ZDS-1", "1.2.3"),  # no component: the identifier (component 1)
        ("ZDS-1.3", "Application"),
        ("PV1-2", ""),  # absent segment
        ("PID-99", ""),  # absent field
    ],
)
def test_a_path_reads_the_value_it_names(msg: Message, path: str, expected: str) -> None:
    assert FieldPath.parse(path).read(msg) == expected


@pytest.mark.parametrize(
    "bad", ["OBR", "OBR-", "obr-4", "OBR-0", "OBR-4.0", "OBR-4.2.1.1", "PID-3[x]", "OB-4", "OBR 4"]
)
def test_a_malformed_path_is_refused_with_an_example(bad: str) -> None:
    with pytest.raises(PathSyntaxError, match="bad HL7 path"):
        FieldPath.parse(bad)


def test_order_segments_are_read_from_the_given_order_group(msg: Message) -> None:
    groups = msg.groups("ORC", ("OBR", "ZDS"))
    path = FieldPath.parse("OBR-4.2")
    assert [path.read(msg, g) for g in groups] == ["Head & neck", "Brain"]
    assert FieldPath.parse("ZDS-1").read(msg, groups[1]) == ""  # ZDS belongs to order 1 only
    assert FieldPath.parse("PID-3").read(msg, groups[1]) == "123"  # PID is message-wide


def test_first_non_empty_path_wins(msg: Message) -> None:
    rule = FieldRule(paths=(FieldPath.parse("IPC-5"), FieldPath.parse("OBR-24")), normalise=("upper",))
    groups = msg.groups("ORC", ("OBR",))
    assert rule.evaluate(msg, groups[1], {}) == "MRI"
    assert rule.evaluate(msg, groups[0], {}) is None  # nothing found, no default: keep mapped value


def test_concatenation_skips_empty_parts(msg: Message) -> None:
    rule = FieldRule(
        concat=(FieldPath.parse("PID-5.2"), FieldPath.parse("PID-5.9"), FieldPath.parse("PID-5.1")),
        separator=" ",
    )
    assert rule.evaluate(msg, None, {}) == "JOHN DOE"


def test_normalisers_date_datetime_and_name(msg: Message) -> None:
    assert (
        FieldRule(paths=(FieldPath.parse("PID-7"),), normalise=("date",)).evaluate(msg, None, {})
        == "1980-01-02"
    )
    assert (
        FieldRule(paths=(FieldPath.parse("MSH-7"),), normalise=("datetime",)).evaluate(msg, None, {})
        == "2024-03-15T10:30:00"
    )
    assert (
        FieldRule(paths=(FieldPath.parse("PID-5"),), normalise=("name",)).evaluate(msg, None, {})
        == "DOE^JOHN^Q"
    )


def test_code_table_lookup_unknown_code_warns_and_falls_back_to_default(msg: Message) -> None:
    tables = {"modality_aliases": {"MRI": "MR"}}
    warnings: list[str] = []
    groups = msg.groups("ORC", ("OBR",))
    rule = FieldRule(
        paths=(FieldPath.parse("OBR-24"),), normalise=("upper",), table="modality_aliases", default="OT"
    )
    assert rule.evaluate(msg, groups[1], tables, warnings.append) == "MR"
    rule2 = FieldRule(paths=(FieldPath.parse("OBR-4"),), table="modality_aliases", default="OT")
    assert rule2.evaluate(msg, groups[1], tables, warnings.append) == "OT"
    assert warnings == ["'MR1' is not in code table modality_aliases"]


def test_zds_builder_round_trip() -> None:
    assert FieldPath.parse("ZDS-1").read(Message(message(msh(), pid(), zds("9.8.7")))) == "9.8.7"
    assert str(FieldPath.parse("PID-3[2].4")) == "PID-3[2].4"
