"""Original-mode acknowledgements: addressed back to the sender, MSA echoing MSH-10, an ERR
segment a person can read on every refusal and none on acceptance."""

from __future__ import annotations

from interfaces.hl7 import acks
from interfaces.hl7.acks import build_ack
from interfaces.hl7.intake import interpret
from interfaces.hl7.message import Header, read_header
from tests.unit.hl7_builders import message, msh, order, pid

RECEIVED_AT = "2024-03-15T09:00:00+00:00"


def header_of(text: str) -> Header:
    header = read_header(text)
    assert header is not None
    return header


def parse(ack: str, separator: str = "|") -> dict[str, list[str]]:
    """Segments by id; for MSH, element n is MSH-(n+1) because MSH-1 is the separator itself."""
    segments = ack.split("\r")
    assert all(segments), "empty segment in the ACK"
    parsed = {s.split(separator)[0]: s.split(separator) for s in segments}
    assert len(parsed) == len(segments), "repeated segment in the ACK"
    return parsed


def ack_for(raw: bytes) -> tuple[str, dict[str, list[str]]]:
    """What radflow answers to `raw`: MSA-1 and the ACK's segments."""
    inbound = interpret(raw, "peer", RECEIVED_AT)
    code, reason = inbound.refusal or ("AA", "")
    return code, parse(inbound.build_ack(code, reason).decode("utf-8"))


def test_an_accepted_message_gets_aa_echoing_its_control_id_and_no_err() -> None:
    code, ack = ack_for(order(control_id="CTRL-42").encode())
    assert code == "AA"
    assert list(ack) == ["MSH", "MSA"]
    assert ack["MSA"][1:3] == ["AA", "CTRL-42"]


def test_the_ack_is_addressed_back_to_the_sender_with_ack_trigger_ack_in_msh9() -> None:
    ack = parse(build_ack(header_of(order()), "AA"))["MSH"]
    assert ack[1] == "^~\\&"
    assert ack[2:6] == ["RADFLOW", "RADIOLOGY", "HIS", "GENERAL"]  # MSH-3..6, sender and receiver swapped
    assert ack[8] == "ACK^O01^ACK"  # MSH-9
    assert ack[10:12] == ["P", "2.5.1"]  # MSH-11, MSH-12 as received
    assert ack[9]  # MSH-10: the ACK's own control id


def test_an_adt_ack_names_the_adt_trigger() -> None:
    header = header_of(message(msh(message_type="ADT^A08^ADT_A01"), pid()))
    assert parse(build_ack(header, "AA"))["MSH"][8] == "ACK^A08^ACK"


def test_a_message_type_without_a_trigger_is_answered_with_a_plain_ack() -> None:
    header = header_of(message(msh(message_type="ORM"), pid()))
    assert parse(build_ack(header, "AR", "unsupported"))["MSH"][8] == "ACK"


def test_every_ack_gets_a_control_id_of_its_own() -> None:
    header = header_of(order())
    ids = {parse(build_ack(header, "AA"))["MSH"][9] for _ in range(50)}
    assert len(ids) == 50


def test_an_order_without_accession_gets_ae_with_a_readable_err() -> None:
    code, ack = ack_for(message(msh(control_id="C-7"), pid(), "ORC|NW", "OBR|1").encode())
    assert code == "AE"
    assert ack["MSA"][1:3] == ["AE", "C-7"]
    err = ack["ERR"]
    assert err[2] == "OBR^1^18"  # ERR-2 error location
    assert err[3] == "101^Required field missing^HL70357"  # ERR-3 condition (table 0357)
    assert err[4] == "E"  # ERR-4 severity
    assert "without an accession number" in err[8]  # ERR-8 user message
    assert ack["MSA"][3] == err[8]


def test_an_unsupported_message_type_gets_ar_saying_so() -> None:
    code, ack = ack_for(message(msh(message_type="MDM^T02", control_id="C-8"), pid()).encode())
    assert code == "AR"
    assert ack["MSA"][1:3] == ["AR", "C-8"]
    assert ack["ERR"][3] == "200^Unsupported message type^HL70357"
    assert ack["ERR"][8].startswith("unsupported message type MDM")


def test_a_message_without_msh9_gets_ar() -> None:
    code, ack = ack_for(message(msh(message_type="", control_id="C-9"), pid()).encode())
    assert (code, ack["MSA"][2]) == ("AR", "C-9")
    assert "MSH-9" in ack["ERR"][8]


def test_bytes_without_an_msh_get_a_bare_nak() -> None:
    code, ack = ack_for(b"hello, is this the lab?\r\n")
    assert code == "AR"
    assert ack["MSH"][1] == "^~\\&"
    assert ack["MSH"][8] == "ACK"
    assert ack["MSA"][1:3] == ["AR", ""]  # nothing to echo
    assert ack["ERR"][3] == "100^Segment sequence error^HL70357"
    assert "no MSH" in ack["ERR"][8]


def test_a_bare_nak_can_be_built_without_a_reason() -> None:
    ack = parse(build_ack(None, "AR"))
    assert ack["MSA"][1] == "AR"
    assert "ERR" in ack


def test_a_reason_cannot_break_the_ack_syntax() -> None:
    header = header_of(order())
    ack = build_ack(header, "AE", "bad | field ^ with ~ every \\ special & char\r\nand lines", acks.UNKNOWN_KEY, "PID^1^3")
    parsed = parse(ack)
    assert len(parsed["MSA"]) == 4
    assert len(parsed["ERR"]) == 9
    assert parsed["ERR"][8] == "bad   field   with   every   special   char  and lines"


def test_a_long_reason_is_cut_to_200_characters() -> None:
    parsed = parse(build_ack(header_of(order()), "AE", "x" * 500))
    assert len(parsed["MSA"][3]) == 200


def test_the_ack_declares_the_charset_of_the_message_it_answers() -> None:
    header = header_of(message(msh(charset="8859/1"), pid()))
    assert parse(build_ack(header, "AA"))["MSH"][17] == "8859/1"  # MSH-18
    assert len(parse(build_ack(header_of(order()), "AA"))["MSH"]) == 12  # no MSH-18 when none was sent


def test_the_ack_is_encoded_like_the_message_it_answers() -> None:
    raw = message(msh(sending_application="KLINIK_MÜNCHEN", charset="8859/1"), pid(), "ORC|NW", "OBR|1").encode("latin-1")
    inbound = interpret(raw, "peer", RECEIVED_AT)
    assert inbound.refusal is not None
    ack = inbound.build_ack(*inbound.refusal)
    assert parse(ack.decode("latin-1"))["MSH"][4] == "KLINIK_MÜNCHEN"


def test_the_ack_uses_the_separators_of_the_message_it_answers() -> None:
    text = "MSH#^~\\&#HIS#GENERAL#RADFLOW#RADIOLOGY#20240315103000##ORM^O01#C-H#P#2.5\rPID#1##P1"
    ack = parse(build_ack(header_of(text), "AE", "why#not", acks.REQUIRED_FIELD_MISSING), separator="#")
    assert ack["MSH"][8] == "ACK^O01^ACK"
    assert ack["MSA"][1:] == ["AE", "C-H", "why not"]
    assert ack["ERR"][3] == "101^Required field missing^HL70357"
