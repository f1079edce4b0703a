"""The dry run reports what the listener would do, through the same intake code, and does
nothing: header, tree with HL7 positions, commands with workflow ids, refusal and ACK."""

from __future__ import annotations

import pytest

from api.hl7_mapping import parse_map_request, summary
from interfaces.hl7.dry_run import UnknownChannel, dry_run, message_tree
from tests.unit.hl7_builders import message, msh, obr, orc, pid, segment


def an_order(accession: str = "ACC0001", control: str = "NW", extra_msh: str = "") -> bytes:
    return message(
        msh(message_type="ORM^O01", control_id="C-DRY") + extra_msh,
        pid(name="O\\S\\NEIL^MARY"),
        orc(control),
        obr(accession=accession),
    ).encode()


def test_an_accepted_message_reports_its_commands_with_workflow_ids_and_an_aa() -> None:
    report = dry_run(an_order())
    assert report["channel"] == "default"
    assert report["header"]["message_type"] == "ORM^O01" and report["header"]["control_id"] == "C-DRY"
    [command] = report["commands"]
    assert (command["kind"], command["workflow_id"], command["accession"]) == (
        "place_order",
        "exam-ACC0001",
        "ACC0001",
    )
    assert report["refusal"] is None and report["outcome"] == "AA" and report["ack_code"] == "AA"
    lines = report["ack"].split("\n")
    assert lines[0].startswith("MSH|^~\\&|RADFLOW") and lines[1] == "MSA|AA|C-DRY|"


def test_a_refused_message_reports_code_reason_condition_and_location() -> None:
    report = dry_run(an_order(accession=""))
    assert report["commands"] == []
    refusal = report["refusal"]
    assert refusal["code"] == "AE" and "accession" in refusal["reason"]
    assert (refusal["condition"], refusal["location"]) == ("101^Required field missing", "OBR^1^18")
    assert report["ack"].split("\n")[2].startswith("ERR||OBR^1^18|101^")


def test_the_tree_positions_fields_and_components_and_unescapes_them() -> None:
    tree = message_tree(an_order().decode())
    pid_segment = next(s for s in tree if s["segment"] == "PID")
    pid_5 = next(f for f in pid_segment["fields"] if f["position"] == "PID-5")
    assert pid_5["value"] == "O\\S\\NEIL^MARY"
    assert pid_5["components"] == [
        {"position": "PID-5.1", "value": "O^NEIL"},
        {"position": "PID-5.2", "value": "MARY"},
    ]
    msh_1 = next(s for s in tree if s["segment"] == "MSH")["fields"][0]
    assert msh_1 == {"position": "MSH-1", "value": "|"}


def test_repetitions_get_their_own_positions() -> None:
    text = message(msh(), segment("PID", {1: "1", 3: "A1^^^H1~B2^^^H2"}))
    pid_3 = next(
        f
        for s in message_tree(text)
        if s["segment"] == "PID"
        for f in s["fields"]
        if f["position"] == "PID-3"
    )
    assert {"position": "PID-3[2].1", "value": "B2"} in pid_3["components"]


def test_a_message_without_msh_reports_an_ar_without_a_header() -> None:
    report = dry_run(b"PID|1||X")
    assert report["header"] is None and report["refusal"]["code"] == "AR"
    assert report["ack"].split("\n")[1].startswith("MSA|AR|")


def test_a_forced_channel_must_exist() -> None:
    assert dry_run(an_order(), channel="default")["channel"] == "default"
    with pytest.raises(UnknownChannel, match="no-such"):
        dry_run(an_order(), channel="no-such")


def test_the_report_says_record_time_checks_are_not_run() -> None:
    assert "not part of a dry run" in dry_run(an_order(control="CA"))["note"]


def test_an_order_named_by_number_shows_its_numbers_in_the_command() -> None:
    text = message(
        msh(message_type="ORM^O01", control_id="C2"),
        pid(),
        orc("XO", placer="P9", filler="F9"),
        obr(accession=""),
    )
    [command] = dry_run(text.encode())["commands"]
    assert (command["accession"], command["placer_order_number"], command["filler_order_number"]) == (
        "",
        "P9",
        "F9",
    )
    assert command["workflow_id"] == "exam-"  # the message log resolves it from the order numbers


def test_the_http_body_may_be_text_or_json_and_must_not_be_empty() -> None:
    assert parse_map_request(b"MSH|^~\\&|A\nPID|1", "text/plain") == (b"MSH|^~\\&|A\rPID|1", None)
    assert parse_map_request(b'{"message": "MSH|x", "channel": "c"}', "application/json") == (b"MSH|x", "c")
    for body, kind in (
        (b"", "text/plain"),
        (b"\r\n ", "application/octet-stream"),
        (b"{}", "application/json"),
        (b"[", "application/json"),
    ):
        with pytest.raises(ValueError):
            parse_map_request(body, kind)


def test_the_summary_names_commands_outcome_and_ack() -> None:
    text = summary(dry_run(an_order()))
    assert "place_order -> exam-ACC0001" in text and "ACCEPTED" in text and "MSA|AA|C-DRY|" in text
    refused = summary(dry_run(an_order(accession="")))
    assert "REFUSED AE" in refused
