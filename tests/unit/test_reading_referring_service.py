"""The referring service of an order (the reading worklist filters by it) comes from PV1-10,
the hospital service of the visit the order was placed in."""

from __future__ import annotations

from domain.commands import ModifyOrder, PlaceOrder, command_from_dict
from interfaces.hl7.decoding import decode
from interfaces.hl7.mapping import map_message
from interfaces.hl7.message import Message, read_header
from tests.unit.hl7_builders import message, msh, obr, orc, pid, segment


def commands(*segments: str) -> list[object]:
    decoded, _ = decode(message(*segments).encode("utf-8"))
    header = read_header(decoded)
    assert header is not None
    return list(map_message(Message(decoded), header, "2024-03-15T09:00:00+00:00").commands)


def test_a_new_order_takes_its_referring_service_from_pv1_10() -> None:
    [command] = commands(msh(), pid(), segment("PV1", {1: "1", 2: "I", 10: "CAR^Cardiology"}), orc(), obr())
    assert isinstance(command, PlaceOrder)
    assert command.referring_service == "CAR"


def test_an_order_without_pv1_10_or_without_pv1_has_no_referring_service() -> None:
    [with_empty] = commands(msh(), pid(), segment("PV1", {1: "1", 2: "O"}), orc(), obr())
    [without] = commands(msh(), pid(), orc(), obr())
    assert isinstance(with_empty, PlaceOrder) and isinstance(without, PlaceOrder)
    assert (with_empty.referring_service, without.referring_service) == ("", "")


def test_an_order_change_does_not_carry_the_service() -> None:
    [command] = commands(msh(), pid(), segment("PV1", {1: "1", 10: "SUR"}), orc(control="XO"), obr())
    assert isinstance(command, ModifyOrder)
    assert "referring_service" not in command.changes


def test_the_service_survives_the_trip_through_the_message_log_as_a_dict() -> None:
    [command] = commands(msh(), pid(), segment("PV1", {1: "1", 10: "ONC"}), orc(), obr())
    assert isinstance(command, PlaceOrder)
    again = command_from_dict(command.as_dict())
    assert isinstance(again, PlaceOrder)
    assert again.referring_service == "ONC"
    # a command recorded before the field existed still reads, with no service
    old = {k: v for k, v in command.as_dict().items() if k != "referring_service"}
    assert command_from_dict(old).referring_service == ""  # type: ignore[attr-defined]
