"""destinations.yaml: what a valid file gives, and errors that name file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.outbound_config import OutboundConfigError, load_destinations, parse_destinations

ROOT = Path(__file__).resolve().parents[2]

VALID = """\
destinations:
  - name: RIS_A
    facility: HOSP
    host: 10.0.0.5
    port: 2575
    filters:
      modality: [CT, MR]
      patient_class: [I]
    max_attempts: 3
    backoff: {initial_s: 0.2, max_s: 2}
    on_ae: dead_letter
    ack_timeout_s: 1.5
  - name: RIS_B
    host: ris-b.example
    port: 6661
"""


def _error(text: str) -> str:
    with pytest.raises(OutboundConfigError) as caught:
        parse_destinations(text, "conf/destinations.yaml")
    return str(caught.value)


def test_reads_every_setting_and_applies_defaults() -> None:
    destinations = parse_destinations(VALID)
    a, b = destinations.items
    assert (a.name, a.facility, a.host, a.port) == ("RIS_A", "HOSP", "10.0.0.5", 2575)
    assert a.modality == ("CT", "MR") and a.patient_class == ("I",) and a.sending_application == ()
    assert (a.max_attempts, a.initial_backoff_s, a.max_backoff_s, a.ack_timeout_s) == (3, 0.2, 2, 1.5)
    assert (a.on_ae, a.on_ar) == ("dead_letter", "dead_letter")
    assert (b.max_attempts, b.on_ae, b.on_ar, b.events, b.tls) == (
        8,
        "retry",
        "dead_letter",
        ("order_status",),
        None,
    )


def test_filters_choose_the_destinations_an_exam_goes_to() -> None:
    destinations = parse_destinations(VALID)
    names = lambda **kw: [d.name for d in destinations.matching("order_status", **kw)]  # noqa: E731
    assert names(modality="CT", patient_class="I", sending_application="HIS") == ["RIS_A", "RIS_B"]
    assert names(modality="US", patient_class="I", sending_application="HIS") == ["RIS_B"]
    assert names(modality="CT", patient_class="O", sending_application="HIS") == ["RIS_B"]
    assert destinations.matching("charges", modality="CT", patient_class="I", sending_application="") == []


def test_ack_policy_separates_error_from_reject() -> None:
    destination = parse_destinations(VALID).items[1]
    assert destination.policy_for("AE") == "retry"
    assert destination.policy_for("AR") == "dead_letter"
    assert destination.policy_for("CR") == "dead_letter"


def test_a_wrong_port_is_named_with_file_line_and_key() -> None:
    message = _error(VALID.replace("port: 6661", "port: 70000"))
    assert (
        message == "conf/destinations.yaml:15: destinations[1].port: must be a whole number from 1 to 65535"
    )


def test_a_missing_host_and_an_unknown_key_are_both_reported() -> None:
    message = _error("destinations:\n  - name: X\n    port: 1\n    colour: red\n")
    assert "conf/destinations.yaml:4: destinations[0].colour: unknown key" in message
    assert "conf/destinations.yaml:2: destinations[0].host: is required" in message


def test_refuses_a_bad_policy_an_unknown_event_and_a_duplicate_name() -> None:
    text = VALID.replace("on_ae: dead_letter", "on_ae: ignore").replace("name: RIS_B", "name: RIS_A")
    text += "    events: [order_status, charges]\n"
    message = _error(text)
    assert (
        "conf/destinations.yaml:11: destinations[0].on_ae: must be one of retry, dead_letter (got 'ignore')"
        in message
    )
    assert "destinations[1].events[1]: unknown event 'charges'" in message


def test_refuses_backoff_that_starts_above_its_maximum() -> None:
    message = _error(VALID.replace("{initial_s: 0.2, max_s: 2}", "{initial_s: 5, max_s: 2}"))
    assert "conf/destinations.yaml:10: destinations[0].backoff: initial_s must not exceed max_s" in message


def test_a_missing_tls_file_is_named() -> None:
    message = _error(VALID + "    tls: {ca: /nonexistent/ca.pem}\n")
    assert (
        "conf/destinations.yaml:16: destinations[1].tls.ca: file /nonexistent/ca.pem does not exist"
        in message
    )


def test_broken_yaml_names_the_line() -> None:
    assert _error("destinations:\n  - name: [unclosed\n").startswith(
        "conf/destinations.yaml:3: not valid YAML"
    )


def test_no_folder_or_no_file_means_no_destinations(tmp_path: Path) -> None:
    assert load_destinations(None).items == ()
    assert load_destinations(tmp_path).items == ()
    assert parse_destinations("").items == ()


def test_the_example_file_is_valid() -> None:
    destinations = load_destinations(ROOT / "examples" / "config")
    assert [d.name for d in destinations.items] == ["HIS_ORDERS"]


def test_an_unusable_ca_file_is_a_load_error_naming_the_tls_key(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("this is not a certificate\n")
    message = _error(VALID + f"    tls: {{ca: {not_pem}}}\n")
    assert message.startswith("conf/destinations.yaml:16: destinations[1].tls: TLS CA file")
