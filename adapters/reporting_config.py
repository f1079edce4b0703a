"""The department's reading rules: claim length, turnaround targets per priority, the critical-
result escalation chain, and report templates per procedure code. From `reporting.yaml` in the
configuration folder (`RADFLOW_HL7_CONFIG_DIR`); without the file, the defaults below. Example::

    claim_minutes: 30               # a claim not renewed by typing or signing lapses
    turnaround_minutes:             # completed -> final report, by order priority
      STAT: 60
      ASAP: 240
      ROUTINE: 1440
    critical:
      ack_minutes: 15               # each contact has this long to acknowledge
      second_contact: {name: "On-call attending", phone: "555-0101"}
      department: {name: "Emergency department desk", phone: "555-0100"}
    templates:
      CT-HEAD:                      # procedure code (OBR-4.1)
        technique: Axial CT of the head without contrast.
        comparison: None.

Errors say `file:line: key: problem` (adapters/yaml_config.py); the worker refuses to start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.yaml_config import ConfigError, Loaded, load
from domain.report import SECTIONS

FILE_NAME = "reporting.yaml"
DEFAULT_TURNAROUND = {"STAT": 60.0, "ASAP": 240.0, "ROUTINE": 1440.0}


@dataclass(frozen=True)
class ReportingRules:
    claim_minutes: float = 30.0
    turnaround_minutes: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TURNAROUND))
    critical_ack_minutes: float = 15.0
    second_contact: dict[str, str] = field(
        default_factory=lambda: {"role": "second_contact", "name": "On-call radiologist"}
    )
    department: dict[str, str] = field(
        default_factory=lambda: {"role": "department", "name": "Radiology department"}
    )
    templates: dict[str, dict[str, str]] = field(default_factory=dict)

    def turnaround_for(self, priority: str) -> float:
        """Minutes from completed to final for a priority; the ROUTINE target for unknown ones."""
        key = (priority or "ROUTINE").upper()
        return self.turnaround_minutes.get(key, self.turnaround_minutes.get("ROUTINE", 0.0))

    def template_for(self, procedure_code: str) -> dict[str, str]:
        """Every section, pre-filled with the procedure's text where the template has one."""
        filled = self.templates.get(procedure_code, {})
        return {name: filled.get(name, "") for name in (*SECTIONS, *sorted(set(filled) - set(SECTIONS)))}

    def critical_contacts(self, referring_physician: str) -> list[dict[str, str]]:
        """Who is told, in order: the referring physician, a second contact, the department."""
        first = {
            "role": "referring_physician",
            "name": person(referring_physician),
            "id": referring_physician.split("^")[0],
        }
        return [first, dict(self.second_contact), dict(self.department)]


def person(xcn: str) -> str:
    """An HL7 XCN (id^family^given^middle) as people write it: "GREGORY HOUSE (1234)"."""
    parts = xcn.split("^")
    name = " ".join(p for p in (*parts[2:4], parts[1] if len(parts) > 1 else "") if p)
    if not name:
        return (
            f"Referring physician {parts[0]}" if parts[0] else "Referring physician (not named in the order)"
        )
    return f"{name} ({parts[0]})" if parts[0] else name


def load_reporting_rules(config_dir: Path | None) -> ReportingRules:
    if config_dir is None or not (config_dir / FILE_NAME).is_file():
        return ReportingRules()
    return parse_reporting_rules(load(config_dir / FILE_NAME))


def parse_reporting_rules(loaded: Loaded) -> ReportingRules:
    data = loaded.data if loaded.data is not None else {}
    if not isinstance(data, dict):
        raise loaded.error((), "expected a mapping")
    known = {"claim_minutes", "turnaround_minutes", "critical", "templates"}
    for key in data:
        if key not in known:
            raise loaded.error((key,), f"unknown key (expected one of {', '.join(sorted(known))})")
    rules: dict[str, Any] = {}
    if "claim_minutes" in data:
        rules["claim_minutes"] = _minutes(loaded, ("claim_minutes",), data["claim_minutes"])
    if "turnaround_minutes" in data:
        targets = _mapping(loaded, ("turnaround_minutes",), data["turnaround_minutes"])
        rules["turnaround_minutes"] = {
            str(priority).upper(): _minutes(loaded, ("turnaround_minutes", priority), value)
            for priority, value in targets.items()
        }
    if "critical" in data:
        critical = _mapping(loaded, ("critical",), data["critical"])
        for key, value in critical.items():
            if key == "ack_minutes":
                rules["critical_ack_minutes"] = _minutes(loaded, ("critical", key), value)
            elif key in ("second_contact", "department"):
                contact = _mapping(loaded, ("critical", key), value)
                if not str(contact.get("name", "")).strip():
                    raise loaded.error(("critical", key, "name"), "a contact needs a name")
                rules[key] = {"role": key, **{str(k): str(v) for k, v in contact.items()}}
            else:
                raise loaded.error(("critical", key), "unknown key (ack_minutes, second_contact, department)")
    if "templates" in data:
        templates = _mapping(loaded, ("templates",), data["templates"])
        rules["templates"] = {}
        for code, template in templates.items():
            sections = _mapping(loaded, ("templates", code), template)
            for name, text in sections.items():
                if not isinstance(text, str):
                    raise loaded.error(("templates", code, name), "a section's text must be a string")
            rules["templates"][str(code)] = {str(k): v for k, v in sections.items()}
    return ReportingRules(**rules)


def _mapping(loaded: Loaded, path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise loaded.error(path, "expected a mapping")
    return value


def _minutes(loaded: Loaded, path: tuple[str | int, ...], value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise loaded.error(path, f"expected a positive number of minutes, got {value!r}")
    return float(value)


__all__ = ["ConfigError", "ReportingRules", "load_reporting_rules", "parse_reporting_rules"]
