"""The DICOM configuration (peers, calling-AE allow-list): what good input gives, that every bad
input is refused with a message naming the file (or variable), the entry and the key, and who
the allow-list lets in."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from adapters.dicom_config import (
    AllowedCaller,
    DicomConfig,
    DicomConfigError,
    Peer,
    load_dicom_config,
    parse_config,
    parse_peers_env,
)

SOURCE = "/etc/radflow/dicom.yaml"

# --- RADFLOW_DICOM_PEERS ----------------------------------------------------------------------


def test_parses_peers_from_the_environment_trimming_spaces_and_empty_entries() -> None:
    peers = parse_peers_env(" VIEWER1 = 10.0.0.21:104 ,, ARCHIVE=pacs.example.org:11112, ")
    assert peers == {
        "VIEWER1": Peer("VIEWER1", "10.0.0.21", 104),
        "ARCHIVE": Peer("ARCHIVE", "pacs.example.org", 11112),
    }


def test_an_empty_peers_variable_names_no_peers() -> None:
    assert parse_peers_env("") == {}
    assert parse_peers_env(" , ,") == {}


def test_an_ipv6_host_keeps_its_colons() -> None:
    assert parse_peers_env("V6=[::1]:104") == {"V6": Peer("V6", "[::1]", 104)}


def test_the_last_of_two_entries_for_one_ae_wins() -> None:
    assert parse_peers_env("A=h1:104,A=h2:105") == {"A": Peer("A", "h2", 105)}


@pytest.mark.parametrize(
    ("text", "position", "entry", "says"),
    [
        ("VIEWER1", 1, "VIEWER1", "expected AET=host:port"),
        ("A=h:1,VIEWER1=10.0.0.21", 2, "VIEWER1=10.0.0.21", "expected AET=host:port"),
        ("VIEWER1=:104", 1, "VIEWER1=:104", "expected AET=host:port"),
        ("VIEWER1=  :104", 1, "VIEWER1=  :104", "expected AET=host:port"),
        ("VIEWER1=host:http", 1, "VIEWER1=host:http", "port must be a number, got 'http'"),
        ("VIEWER1=host:", 1, "VIEWER1=host:", "port must be a number, got ''"),
        ("VIEWER1=host:0", 1, "VIEWER1=host:0", "port 0 out of range"),
        ("VIEWER1=host:65536", 1, "VIEWER1=host:65536", "port 65536 out of range"),
        ("=host:104", 1, "=host:104", "AE title must be 1-16 characters"),
        ("ABCDEFGHIJKLMNOPQ=host:104", 1, "ABCDEFGHIJKLMNOPQ=host:104", "AE title must be 1-16 characters"),
        ("A\\B=host:104", 1, "A\\B=host:104", "without backslash"),
    ],
)
def test_a_bad_peers_entry_is_named_by_position_and_text(
    text: str, position: int, entry: str, says: str
) -> None:
    with pytest.raises(DicomConfigError) as error:
        parse_peers_env(text)
    message = str(error.value)
    assert message.startswith(f"RADFLOW_DICOM_PEERS entry {position} ({entry!r}): "), message
    assert says in message


def serialise(peers: dict[str, Peer]) -> str:
    return ",".join(f"{p.ae_title}={p.host}:{p.port}" for p in peers.values())


entry_parts = st.text(alphabet=st.sampled_from("AB1 =:,\\.[]\t\né٣_-+"), max_size=8)
near_valid = st.lists(
    st.tuples(entry_parts, entry_parts, st.one_of(st.integers(-5, 70000).map(str), entry_parts)).map(
        lambda t: f"{t[0]}={t[1]}:{t[2]}"
    ),
    max_size=4,
).map(",".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=60), near_valid))
@example("A= :104")  # a host of blanks is no host
@example("A=h:1_04")  # int() takes digit separators: the port still round-trips as 104
@example("A=h: 104 ")
def test_peers_from_any_text_either_round_trip_or_are_refused_with_a_config_error(text: str) -> None:
    try:
        peers = parse_peers_env(text)
    except DicomConfigError as error:
        assert str(error).startswith("RADFLOW_DICOM_PEERS entry ")
        return
    for title, peer in peers.items():
        assert title == peer.ae_title and peer.host and 0 < peer.port < 65536
    assert parse_peers_env(serialise(peers)) == peers


# --- the YAML file, parsed ----------------------------------------------------------------------


def test_no_content_accepts_every_caller_and_names_no_peers() -> None:
    assert parse_config(None, SOURCE) == DicomConfig()
    assert DicomConfig().allowed_callers is None


def test_parses_peers_and_allowed_callers() -> None:
    data = yaml.safe_load(
        """
        peers:
          VIEWER1: {host: 10.0.0.21, port: 104}
          ARCHIVE: {host: pacs.example.org, port: "11112"}
        allowed_callers:
          - ae_title: CT1
            hosts: [10.0.0.11, 10.0.0.12]
          - ae_title: " VIEWER1 "
        """
    )
    config = parse_config(data, SOURCE)
    assert config.peers == {
        "VIEWER1": Peer("VIEWER1", "10.0.0.21", 104),
        "ARCHIVE": Peer("ARCHIVE", "pacs.example.org", 11112),
    }
    assert config.allowed_callers == (
        AllowedCaller("CT1", ("10.0.0.11", "10.0.0.12")),
        AllowedCaller("VIEWER1", ()),
    )


def test_an_empty_allowed_callers_list_refuses_everyone() -> None:
    config = parse_config({"allowed_callers": []}, SOURCE)
    assert config.allowed_callers == ()
    assert config.refusal("CT1", "127.0.0.1") == "calling AE 'CT1' is not in the allow-list"


@pytest.mark.parametrize(
    ("data", "where", "says"),
    [
        (["peers"], f"{SOURCE}: ", "expected a mapping at the top level"),
        ("just text", f"{SOURCE}: ", "expected a mapping at the top level"),
        ({"peers": {}, "callers": [], "aet": "X"}, f"{SOURCE}: ", "unknown key(s) aet, callers"),
        ({"peers": {}, 104: "x", "aet": "X"}, f"{SOURCE}: ", "unknown key(s) 104, aet"),
        ({"peers": ["VIEWER1"]}, f"{SOURCE}: peers must be a mapping", "AE title"),
        (
            {"peers": {"VIEWER1": "10.0.0.21:104"}},
            f"{SOURCE}: peers.VIEWER1: ",
            "expected {host: ..., port: ...}",
        ),
        (
            {"peers": {"VIEWER1": {"host": "h"}}},
            f"{SOURCE}: peers.VIEWER1: ",
            "expected {host: ..., port: ...}",
        ),
        (
            {"peers": {"VIEWER1": {"port": 104}}},
            f"{SOURCE}: peers.VIEWER1: ",
            "expected {host: ..., port: ...}",
        ),
        (
            {"peers": {"VIEWER1": {"host": "h", "port": "http"}}},
            f"{SOURCE}: peers.VIEWER1: ",
            "port must be a number, got 'http'",
        ),
        (
            {"peers": {"VIEWER1": {"host": "h", "port": 0}}},
            f"{SOURCE}: peers.VIEWER1: ",
            "port 0 out of range",
        ),
        (
            {"peers": {"A_VERY_LONG_AE_TITLE": {"host": "h", "port": 104}}},
            f"{SOURCE}: peers.A_VERY_LONG_AE_TITLE: ",
            "AE title must be 1-16 characters",
        ),
        ({"peers": {104: {"host": "h", "port": 104}}}, f"{SOURCE}: peers.104: ", "AE title must be"),
        ({"allowed_callers": {"ae_title": "CT1"}}, f"{SOURCE}: ", "allowed_callers must be a list"),
        (
            {"allowed_callers": ["CT1"]},
            f"{SOURCE}: allowed_callers[0]: ",
            "expected {ae_title: ..., hosts: [...]}",
        ),
        (
            {"allowed_callers": [{"ae_title": "CT1"}, {"hosts": ["h"]}]},
            f"{SOURCE}: allowed_callers[1]: ",
            "expected {ae_title: ..., hosts: [...]}",
        ),
        (
            {"allowed_callers": [{"ae_title": "CT1", "hosts": "10.0.0.11"}]},
            f"{SOURCE}: allowed_callers[0].hosts: ",
            "must be a list",
        ),
        (
            {"allowed_callers": [{"ae_title": "CT\\1"}]},
            f"{SOURCE}: allowed_callers[0]: ",
            "without backslash",
        ),
    ],
)
def test_a_bad_file_is_refused_with_the_file_entry_and_key_named(data: Any, where: str, says: str) -> None:
    with pytest.raises(DicomConfigError) as error:
        parse_config(data, SOURCE)
    message = str(error.value)
    assert message.startswith(where), message
    assert says in message, message


# --- the YAML file, loaded ----------------------------------------------------------------------


def test_loads_a_file_and_lets_the_environment_win_on_a_clashing_peer(tmp_path: Path) -> None:
    config_file = tmp_path / "dicom.yaml"
    config_file.write_text(
        "peers:\n  VIEWER1: {host: 10.0.0.21, port: 104}\n  ARCHIVE: {host: pacs, port: 11112}\n"
        "allowed_callers:\n  - ae_title: CT1\n"
    )
    config = load_dicom_config(config_file, "VIEWER1=10.0.0.99:4242,EXTRA=h:1")
    assert config.peers == {
        "VIEWER1": Peer("VIEWER1", "10.0.0.99", 4242),
        "ARCHIVE": Peer("ARCHIVE", "pacs", 11112),
        "EXTRA": Peer("EXTRA", "h", 1),
    }
    assert config.allowed_callers == (AllowedCaller("CT1"),)


def test_without_a_file_only_the_environment_counts() -> None:
    assert load_dicom_config(None) == DicomConfig()
    assert load_dicom_config(None, "A=h:104").peers == {"A": Peer("A", "h", 104)}


def test_an_empty_file_accepts_every_caller(tmp_path: Path) -> None:
    config_file = tmp_path / "dicom.yaml"
    config_file.write_text("# nothing configured yet\n")
    assert load_dicom_config(config_file) == DicomConfig()


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(DicomConfigError, match=rf"^{re.escape(str(missing))}: cannot read \(No such file"):
        load_dicom_config(missing)


def test_a_directory_instead_of_a_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DicomConfigError, match=rf"^{re.escape(str(tmp_path))}: cannot read"):
        load_dicom_config(tmp_path)


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    config_file = tmp_path / "dicom.yaml"
    config_file.write_bytes("allowed_callers:\n  - ae_title: CT1  # Gerät im Keller\n".encode("cp1252"))
    with pytest.raises(DicomConfigError, match=rf"^{re.escape(str(config_file))}: .*UTF-8"):
        load_dicom_config(config_file)


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    config_file = tmp_path / "dicom.yaml"
    config_file.write_text(
        "peers:\n  VIEWER1: {host: 10.0.0.21, port: 104\nallowed_callers:\n  - ae_title: CT1\n"
    )
    with pytest.raises(DicomConfigError) as error:
        load_dicom_config(config_file)
    message = str(error.value)
    assert re.match(rf"^{re.escape(str(config_file))} line \d+: not valid YAML", message), message
    line = int(message.split(" line ", 1)[1].split(":", 1)[0])
    assert line in (2, 3), message  # the unclosed flow mapping, or where the parser noticed


def test_a_tab_indent_names_its_line(tmp_path: Path) -> None:
    config_file = tmp_path / "dicom.yaml"
    config_file.write_text("allowed_callers:\n  - ae_title: CT1\n\t- ae_title: CT2\n")
    with pytest.raises(DicomConfigError, match=rf"^{re.escape(str(config_file))} line 3: not valid YAML"):
        load_dicom_config(config_file)


def test_a_structural_error_in_a_file_names_the_file(tmp_path: Path) -> None:
    config_file = tmp_path / "dicom.yaml"
    config_file.write_text("allowed_callers:\n  - ae_title: CT1\n    hosts: 10.0.0.11\n")
    with pytest.raises(
        DicomConfigError, match=rf"^{re.escape(str(config_file))}: allowed_callers\[0\]\.hosts"
    ):
        load_dicom_config(config_file)


def test_a_bad_environment_entry_is_reported_even_with_a_good_file(tmp_path: Path) -> None:
    config_file = tmp_path / "dicom.yaml"
    config_file.write_text("peers: {}\n")
    with pytest.raises(
        DicomConfigError, match=r"^RADFLOW_DICOM_PEERS entry 1 \('X=h:0'\): port 0 out of range"
    ):
        load_dicom_config(config_file, "X=h:0")


# --- who the allow-list lets in -------------------------------------------------------------------

ALLOW = DicomConfig(
    allowed_callers=(AllowedCaller("CT1", ("10.0.0.11",)), AllowedCaller("VIEWER1", ())),
)


def test_without_an_allow_list_every_caller_from_anywhere_is_accepted() -> None:
    assert DicomConfig().refusal("ANYONE", "203.0.113.9") == ""


def test_an_allowed_ae_from_its_host_is_accepted_even_when_space_padded() -> None:
    assert ALLOW.refusal("CT1", "10.0.0.11") == ""
    assert ALLOW.refusal("CT1             ", "10.0.0.11") == ""


def test_an_ae_without_hosts_is_accepted_from_any_host() -> None:
    assert ALLOW.refusal("VIEWER1", "10.0.0.11") == ""
    assert ALLOW.refusal("VIEWER1", "203.0.113.9") == ""


def test_an_allowed_ae_from_another_host_is_refused_naming_both() -> None:
    assert ALLOW.refusal("CT1 ", "10.0.0.99") == "calling AE 'CT1' is not allowed from 10.0.0.99"


def test_an_unknown_ae_is_refused_naming_it() -> None:
    assert ALLOW.refusal("INTRUDER", "10.0.0.11") == "calling AE 'INTRUDER' is not in the allow-list"


def test_ae_titles_are_matched_exactly_not_by_case() -> None:
    assert ALLOW.refusal("ct1", "10.0.0.11") == "calling AE 'ct1' is not in the allow-list"
