"""How long an exam may sit in a state before operations should look at it. From `ops.yaml` in
the configuration folder (`RADFLOW_HL7_CONFIG_DIR`); without the file, the defaults below.
Example (examples/config/ops.yaml)::

    stuck_after:            # per state; durations as 90s, 30m, 4h, 7d (or a number of minutes)
      ordered: 7d           # since the order (or its last change) was recorded
      scheduled: 1d         # past the appointment's scheduled time
      in_progress: 4h       # since the modality started (MPPS IN PROGRESS)
      completed: 24h        # completed and still not reported

A state left out keeps its default; `0` or `off` turns its check off. Errors say
`file:line: key: problem` (adapters/yaml_config.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from adapters.yaml_config import ConfigError, Loaded, load

FILE_NAME = "ops.yaml"
# the states an exam waits in for someone else; terminal and reported/billed exams are done
WATCHED = ("ordered", "scheduled", "in_progress", "completed")
DEFAULT_STUCK_AFTER = {
    "ordered": timedelta(days=7),
    "scheduled": timedelta(days=1),
    "in_progress": timedelta(hours=4),
    "completed": timedelta(hours=24),
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@dataclass(frozen=True)
class OpsRules:
    stuck_after: dict[str, timedelta] = field(default_factory=lambda: dict(DEFAULT_STUCK_AFTER))

    def threshold(self, state: str) -> timedelta | None:
        """None: the state is not watched (or its check is off)."""
        value = self.stuck_after.get(state)
        return value if value else None


def load_ops_rules(config_dir: Path | None) -> OpsRules:
    if config_dir is None or not (config_dir / FILE_NAME).is_file():
        return OpsRules()
    return parse_ops_rules(load(config_dir / FILE_NAME))


def parse_ops_rules(loaded: Loaded) -> OpsRules:
    data = loaded.data if loaded.data is not None else {}
    if not isinstance(data, dict):
        raise loaded.error((), "expected a mapping")
    for key in data:
        if key != "stuck_after":
            raise loaded.error((key,), "unknown key (expected stuck_after)")
    thresholds = dict(DEFAULT_STUCK_AFTER)
    given = data.get("stuck_after", {}) or {}
    if not isinstance(given, dict):
        raise loaded.error(("stuck_after",), "expected a mapping of state -> duration")
    for state, value in given.items():
        if state not in WATCHED:
            raise loaded.error(
                ("stuck_after", state), f"unknown state (expected one of {', '.join(WATCHED)})"
            )
        thresholds[str(state)] = parse_duration(loaded, ("stuck_after", state), value)
    return OpsRules(thresholds)


def parse_duration(loaded: Loaded, path: tuple[str | int, ...], value: Any) -> timedelta:
    """`4h`, `30m`, `90s`, `7d`, a bare number of minutes; 0 / off disables the check."""
    if value is False or value == 0 or (isinstance(value, str) and value.strip().lower() == "off"):
        return timedelta(0)
    if isinstance(value, bool):
        raise loaded.error(path, f"expected a duration such as 4h, 30m or 7d, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise loaded.error(path, f"expected a duration such as 4h, 30m or 7d, got {value!r}")
        return timedelta(minutes=float(value))
    match = _DURATION.match(str(value))
    if match is None:
        raise loaded.error(path, f"expected a duration such as 4h, 30m or 7d, got {value!r}")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


def describe(duration: timedelta) -> str:
    """A duration as people read it on the console: `5 h 12 min`, `3 d 2 h`, `45 s`."""
    seconds = int(duration.total_seconds())
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days} d" if days else "", f"{hours} h" if hours else "", f"{minutes} min" if minutes else ""]
    if days:
        parts[2] = ""  # days and hours say enough
    text = " ".join(p for p in parts if p)
    return text or f"{secs} s"


__all__ = ["ConfigError", "OpsRules", "describe", "load_ops_rules", "parse_ops_rules"]
