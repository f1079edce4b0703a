"""The relay reads several outboxes (HL7 log, MPPS log) and hands their rows on in arrival
order, without ever letting a row overtake an older one it cannot see yet."""

from __future__ import annotations

from typing import Any

from interfaces.hl7.relay import merge_pages


def rows(*stamps: str, first_id: int = 1) -> list[dict[str, Any]]:
    return [{"id": first_id + n, "received_at": stamp, "commands": []} for n, stamp in enumerate(stamps)]


def order_of(merged: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, int]]:
    return [(index, row["id"]) for index, row in merged]


def test_rows_of_two_outboxes_are_merged_by_the_time_they_were_received() -> None:
    hl7 = rows("t01", "t04", "t05")
    mpps = rows("t02", "t03", "t06")
    assert order_of(merge_pages([hl7, mpps], limit=10)) == [(0, 1), (1, 1), (1, 2), (0, 2), (0, 3), (1, 3)]


def test_on_equal_times_the_earlier_outbox_goes_first() -> None:
    assert order_of(merge_pages([rows("t1"), rows("t1")], limit=10)) == [(0, 1), (1, 1)]


def test_rows_received_after_the_end_of_a_full_page_wait_for_the_next_pass() -> None:
    hl7 = rows("t01", "t03")  # full page: an HL7 row received at t04 may be behind it
    mpps = rows("t02", "t05", "t06")
    merged = order_of(merge_pages([hl7, mpps], limit=2))
    assert merged == [(0, 1), (1, 1), (0, 2)]


def test_an_outbox_keeps_its_own_order_even_when_its_clock_went_backwards() -> None:
    hl7 = rows("t01", "t05", "t07", "t09")  # full page
    mpps = rows("t02", "t10", "t03")  # t03 after t10: it must not overtake the row at t10
    merged = order_of(merge_pages([hl7, mpps], limit=4))
    assert merged == [(0, 1), (1, 1), (0, 2), (0, 3), (0, 4)]


def test_a_single_outbox_is_relayed_as_it_is() -> None:
    assert order_of(merge_pages([rows("t3", "t1", "t2")], limit=3)) == [(0, 1), (0, 2), (0, 3)]


def test_nothing_to_relay_is_an_empty_list() -> None:
    assert merge_pages([[], []], limit=5) == []
