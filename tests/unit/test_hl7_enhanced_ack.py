"""Enhanced-mode acknowledgements: when MSH-15 asks, the answer is a commit ACK (CA/CE/CR) and
MSH-15 decides whether one is sent at all (AL always, NE never, ER on error, SU on success)."""

from __future__ import annotations

from pathlib import Path

import pytest

from interfaces.hl7.channels import load_channels
from interfaces.hl7.intake import interpret
from tests.unit.hl7_builders import message, msh, obr, orc, pid

RECEIVED_AT = "2024-03-15T09:00:00+00:00"


def with_msh15(text: str, accept: str) -> bytes:
    """The same message with MSH-13..15 filled (MSH-15 = accept acknowledgement type)."""
    first, _, rest = text.partition("\r")
    return f"{first}|||{accept}\r{rest}".encode()


def good(control_id: str = "E1") -> str:
    return message(msh(control_id=control_id), pid(), orc(), obr(accession="A1"))


def no_pid() -> str:
    return message(msh(control_id="E2"), orc(), obr(accession="A1"))


def answer(raw: bytes, channels: object = None) -> bytes:
    inbound = interpret(raw, "peer", RECEIVED_AT, channels)  # type: ignore[arg-type]
    code, reason = inbound.refusal or ("AA", "")
    return inbound.build_ack(code, reason)


def msa(ack: bytes) -> list[str]:
    return next(s for s in ack.decode().split("\r") if s.startswith("MSA")).split("|")


def test_without_msh15_the_ack_is_original_mode() -> None:
    assert msa(answer(good().encode()))[1] == "AA"
    assert msa(answer(no_pid().encode()))[1] == "AE"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (with_msh15(good(), "AL"), "CA"),
        (with_msh15(no_pid(), "AL"), "CE"),  # content refused: commit error
        (with_msh15(good().replace("ORM^O01", "ZZZ^Z01"), "AL"), "CR"),  # type rejected
    ],
)
def test_msh15_al_gets_a_commit_ack(raw: bytes, code: str) -> None:
    ack = answer(raw)
    fields = msa(ack)
    assert fields[1] == code and fields[2] in ("E1", "E2")
    assert ("ERR|" in ack.decode()) == (code != "CA")


@pytest.mark.parametrize(
    ("accept", "accepted_sends", "refused_sends"),
    [("AL", True, True), ("NE", False, False), ("ER", False, True), ("SU", True, False)],
)
def test_msh15_decides_whether_an_ack_is_sent(accept: str, accepted_sends: bool, refused_sends: bool) -> None:
    assert bool(answer(with_msh15(good(), accept))) is accepted_sends
    assert bool(answer(with_msh15(no_pid(), accept))) is refused_sends


def test_the_message_logs_own_refusals_follow_the_same_mode() -> None:
    inbound = interpret(with_msh15(good(), "AL"), "peer", RECEIVED_AT)
    assert inbound.build_error_ack is not None
    ack = inbound.build_error_ack("AE", "unknown accession A1", ("204", "Unknown key identifier"), "OBR^1^18")
    assert msa(ack)[1] == "CE" and "|OBR^1^18|204^Unknown key identifier^HL70357|" in ack.decode()
    silent = interpret(with_msh15(good(), "SU"), "peer", RECEIVED_AT)
    assert silent.build_error_ack is not None
    assert silent.build_error_ack("AE", "unknown accession", ("204", "Unknown key identifier"), "") == b""


def test_a_channel_in_original_mode_ignores_msh15(tmp_path: Path) -> None:
    (tmp_path / "channels").mkdir()
    (tmp_path / "channels" / "a.yaml").write_text("name: old\nack: {mode: original}\n")
    config = load_channels(tmp_path)
    assert msa(answer(with_msh15(good(), "NE"), config))[1] == "AA"
    assert msa(answer(with_msh15(no_pid(), "AL"), config))[1] == "AE"
