"""Reading MPPS N-CREATE / N-SET datasets into plain JSON values (PS3.4 F.7.2, Table F.7.2-1).

A step is kept as the modality described it (dates and times as DICOM DA/TM strings), so that
the MPPS log can merge N-SETs into it and the commands can be rebuilt from it later, when a
person links a queued step to an exam.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from domain.commands import PerformedSeries, ReferencedInstance, series_as_dicts

IN_PROGRESS, COMPLETED, DISCONTINUED = "IN PROGRESS", "COMPLETED", "DISCONTINUED"
STATUSES = frozenset({IN_PROGRESS, COMPLETED, DISCONTINUED})
FINAL = frozenset({COMPLETED, DISCONTINUED})

# Type 1 for the SCU on N-CREATE (Table F.7.2-1); Type 2 attributes are not checked, because
# modalities leave them out often enough that refusing would lose real procedures
REQUIRED_ON_CREATE = (
    "ScheduledStepAttributesSequence",
    "PerformedProcedureStepID",
    "PerformedStationAETitle",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "PerformedProcedureStepStatus",
    "Modality",
)
REQUIRED_IN_SCHEDULED_STEP = ("StudyInstanceUID",)
# Type 1 once the step is COMPLETED or DISCONTINUED
REQUIRED_WHEN_FINAL = {"end_date": "PerformedProcedureStepEndDate", "end_time": "PerformedProcedureStepEndTime"}

# what an N-SET may change; the patient, the schedule and the start are fixed by the N-CREATE
SETTABLE = {
    "PerformedProcedureStepStatus": "status",
    "PerformedProcedureStepEndDate": "end_date",
    "PerformedProcedureStepEndTime": "end_time",
    "PerformedProcedureStepDescription": "description",
    "PerformedSeriesSequence": "series",
    "PerformedProcedureStepDiscontinuationReasonCodeSequence": "discontinuation_reason",
}


@dataclass(frozen=True)
class Missing:
    """Required attributes absent (DIMSE 0x0120) or present without a value (0x0121), by
    keyword path ("ScheduledStepAttributesSequence[0].StudyInstanceUID")."""

    absent: tuple[str, ...]
    empty: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.absent or self.empty)

    @property
    def comment(self) -> str:
        """By tag, so that several fit the 64 characters of an Error Comment."""
        return _listing(self, tag_path)

    @property
    def detail(self) -> str:
        """By keyword, for the log and the people reading it."""
        return _listing(self, lambda path: path)


def _listing(missing: Missing, name: Callable[[str], str]) -> str:
    parts = []
    if missing.absent:
        parts.append("missing " + ", ".join(name(p) for p in missing.absent))
    if missing.empty:
        parts.append("no value in " + ", ".join(name(p) for p in missing.empty))
    return "; ".join(parts)


def tag_path(path: str) -> str:
    """"ScheduledStepAttributesSequence[0].StudyInstanceUID" -> "(0040,0270)[0](0020,000D)"."""
    out = []
    for part in path.split("."):
        keyword, _, index = part.partition("[")
        tag = Tag(keyword)
        out.append(f"({tag.group:04X},{tag.element:04X})" + (f"[{index}" if index else ""))
    return "".join(out)


def text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def missing_on_create(ds: Dataset) -> Missing:
    absent = [k for k in REQUIRED_ON_CREATE if k not in ds]
    empty = [k for k in REQUIRED_ON_CREATE if k in ds and k != "ScheduledStepAttributesSequence" and not text(ds, k)]
    scheduled = ds.get("ScheduledStepAttributesSequence")
    if scheduled is not None:
        if len(scheduled) == 0:
            empty.append("ScheduledStepAttributesSequence")
        for n, item in enumerate(scheduled):
            for keyword in REQUIRED_IN_SCHEDULED_STEP:
                where = f"ScheduledStepAttributesSequence[{n}].{keyword}"
                if keyword not in item:
                    absent.append(where)
                elif not text(item, keyword):
                    empty.append(where)
    return Missing(tuple(absent), tuple(empty))


def read_create(ds: Dataset) -> dict[str, Any]:
    """Everything radflow keeps of an N-CREATE, as JSON values."""
    scheduled = list(ds.get("ScheduledStepAttributesSequence") or [])
    first = scheduled[0] if scheduled else Dataset()
    accessions = list(dict.fromkeys(a for a in (text(item, "AccessionNumber") for item in scheduled) if a))
    step: dict[str, Any] = {
        "status": text(ds, "PerformedProcedureStepStatus"),
        "accessions": accessions,
        "study_instance_uid": text(first, "StudyInstanceUID"),
        "requested_procedure_id": text(first, "RequestedProcedureID"),
        "scheduled_step_id": text(first, "ScheduledProcedureStepID"),
        "patient_id": text(ds, "PatientID"),
        "patient_name": text(ds, "PatientName"),
        "modality": text(ds, "Modality"),
        "station_ae": text(ds, "PerformedStationAETitle"),
        "station_name": text(ds, "PerformedStationName"),
        "step_id": text(ds, "PerformedProcedureStepID"),
        "start_date": text(ds, "PerformedProcedureStepStartDate"),
        "start_time": text(ds, "PerformedProcedureStepStartTime"),
        "end_date": "",
        "end_time": "",
        "description": "",
        "series": [],
        "discontinuation_reason": "",
    }
    step.update(read_set(ds))
    return step


def read_set(ds: Dataset) -> dict[str, Any]:
    """Only what an N-SET (or the settable part of an N-CREATE) carries."""
    changes: dict[str, Any] = {}
    for keyword, key in SETTABLE.items():
        if keyword not in ds:
            continue
        if key == "series":
            changes[key] = series_as_dicts(read_series(ds))
        elif key == "discontinuation_reason":
            changes[key] = read_code(ds.get(keyword))
        else:
            changes[key] = text(ds, keyword)
    return changes


def read_series(ds: Dataset) -> list[PerformedSeries]:
    series = []
    for item in ds.get("PerformedSeriesSequence") or []:
        references = [
            *(item.get("ReferencedImageSequence") or []),
            *(item.get("ReferencedNonImageCompositeSOPInstanceSequence") or []),
        ]
        series.append(
            PerformedSeries(
                series_instance_uid=text(item, "SeriesInstanceUID"),
                description=text(item, "SeriesDescription"),
                protocol_name=text(item, "ProtocolName"),
                retrieve_ae_title=text(item, "RetrieveAETitle"),
                instances=tuple(
                    ReferencedInstance(text(r, "ReferencedSOPClassUID"), text(r, "ReferencedSOPInstanceUID"))
                    for r in references
                ),
            )
        )
    return series


def read_code(sequence: Any) -> str:
    """The first coded item as "value^meaning^scheme", the way HL7 CE fields read."""
    for item in sequence or []:
        parts = [text(item, k) for k in ("CodeValue", "CodeMeaning", "CodingSchemeDesignator")]
        return "^".join(parts).rstrip("^")
    return ""


def missing_when_final(step: dict[str, Any]) -> Missing:
    return Missing((), tuple(keyword for key, keyword in REQUIRED_WHEN_FINAL.items() if not step.get(key)))


def iso_datetime(date: str, time: str) -> str:
    """DICOM DA + TM as ISO 8601 ("20060719", "134937.5" -> "2006-07-19T13:49:37.5"); what is
    missing or malformed stays out rather than being guessed."""
    date = date.strip()
    if len(date) != 8 or not date.isdigit():
        return ""
    iso = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    whole, _, fraction = time.strip().partition(".")
    if not whole.isdigit() or len(whole) not in (2, 4, 6):
        return iso
    clock = ":".join(whole[i : i + 2] for i in range(0, len(whole), 2))
    clock += ":00" * ((6 - len(whole)) // 2)
    return f"{iso}T{clock}" + (f".{fraction}" if fraction.isdigit() else "")


def started_at(step: dict[str, Any]) -> str:
    return iso_datetime(step.get("start_date", ""), step.get("start_time", ""))


def ended_at(step: dict[str, Any]) -> str:
    return iso_datetime(step.get("end_date", ""), step.get("end_time", ""))
