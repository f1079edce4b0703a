"""reporting.yaml: defaults without the file, the site's values with it, and errors that name
file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.reporting_config import ReportingRules, load_reporting_rules, parse_reporting_rules
from adapters.yaml_config import ConfigError, loads

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "config"


def test_without_a_file_the_defaults_apply(tmp_path: Path) -> None:
    rules = load_reporting_rules(tmp_path)
    assert rules == ReportingRules()
    assert rules.turnaround_for("STAT") == 60 and rules.turnaround_for("unknown") == 1440
    assert list(rules.template_for("ANY")) == [
        "indication",
        "technique",
        "comparison",
        "findings",
        "impression",
    ]


def test_the_example_file_loads() -> None:
    rules = load_reporting_rules(EXAMPLE)
    assert rules.claim_minutes == 30 and rules.critical_ack_minutes == 15
    assert rules.template_for("CTHEAD")["technique"].startswith("Axial CT")
    chain = rules.critical_contacts("1234^HOUSE^GREGORY")
    assert [c["role"] for c in chain] == ["referring_physician", "second_contact", "department"]
    assert chain[0]["name"] == "GREGORY HOUSE (1234)" and chain[2]["phone"] == "555-0100"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("claim_minutes: -5\n", "reporting.yaml:1: claim_minutes: expected a positive number"),
        ("turnaround_minutes:\n  STAT: soon\n", "reporting.yaml:2: turnaround_minutes.STAT"),
        ("critical:\n  ack_minutes: 5\n  pager: x\n", "reporting.yaml:3: critical.pager: unknown key"),
        ("critical:\n  department: {phone: '1'}\n", "critical.department.name: a contact needs a name"),
        ("templates:\n  CT:\n    findings: [a, b]\n", "reporting.yaml:3: templates.CT.findings"),
        ("claim_minute: 5\n", "reporting.yaml:1: claim_minute: unknown key"),
        ("- a\n", "expected a mapping"),
    ],
)
def test_errors_name_file_line_and_key(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_reporting_rules(loads(text, "reporting.yaml"))
    assert where in str(error.value)
