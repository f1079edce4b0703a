"""Study completeness: the instances a modality said it produced (MPPS Performed Series
Sequence) against the instances stored. No quiet-period guessing: a study is complete when
every referenced instance is held, and "missing" is only ever said with the list."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def referenced_instances(performed_series: Iterable[Mapping[str, Any]]) -> set[tuple[str, str]]:
    """(series UID, SOP instance UID) pairs an MPPS referenced."""
    return {
        (series["series_instance_uid"], instance["sop_instance_uid"])
        for series in performed_series
        for instance in series.get("instances", ())
    }


def missing_instances(
    performed_series: Iterable[Mapping[str, Any]], held: Mapping[str, set[str]]
) -> list[dict[str, str]]:
    """Referenced instances not held, series by series. An instance stored under another series
    than the MPPS named still counts as held: the image is there, only the bookkeeping differs."""
    every_held = set().union(*held.values()) if held else set()
    return [
        {"series_instance_uid": series, "sop_instance_uid": sop}
        for series, sop in sorted(referenced_instances(performed_series))
        if sop not in every_held
    ]
