"""ops.yaml: per-state thresholds for stuck exams, defaults without the file, errors that name
file, line and key."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from adapters.ops_config import DEFAULT_STUCK_AFTER, describe, load_ops_rules, parse_ops_rules
from adapters.yaml_config import ConfigError, loads

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "config"


def test_defaults_apply_without_a_file(tmp_path: Path) -> None:
    assert load_ops_rules(None).stuck_after == DEFAULT_STUCK_AFTER
    assert load_ops_rules(tmp_path).threshold("in_progress") == timedelta(hours=4)
    assert load_ops_rules(tmp_path).threshold("reported") is None


def test_the_example_file_loads() -> None:
    rules = load_ops_rules(EXAMPLE)
    assert rules.threshold("ordered") == timedelta(days=7)
    assert rules.threshold("completed") == timedelta(hours=24)


def test_reads_durations_in_several_units_and_turns_a_check_off() -> None:
    rules = parse_ops_rules(loads("stuck_after:\n  in_progress: 90s\n  completed: 30\n  ordered: off\n"))
    assert rules.threshold("in_progress") == timedelta(seconds=90)
    assert rules.threshold("completed") == timedelta(minutes=30)
    assert rules.threshold("ordered") is None
    assert rules.threshold("scheduled") == timedelta(days=1)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("stuck_after:\n  in_progress: soon\n", "ops.yaml:2: stuck_after.in_progress: expected a duration"),
        ("stuck_after:\n  ordered: 1d\n  billed: 1h\n", "ops.yaml:3: stuck_after.billed: unknown state"),
        ("thresholds: {}\n", "ops.yaml:1: thresholds: unknown key"),
    ],
)
def test_errors_name_file_line_and_key(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_ops_rules(loads(text, "ops.yaml"))
    assert str(raised.value).startswith(where)


def test_describes_ages_as_people_read_them() -> None:
    assert describe(timedelta(hours=5, minutes=12, seconds=7)) == "5 h 12 min"
    assert describe(timedelta(days=3, hours=2, minutes=9)) == "3 d 2 h"
    assert describe(timedelta(seconds=45)) == "45 s"
    assert describe(timedelta(hours=4)) == "4 h"
