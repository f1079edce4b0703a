"""Query/Retrieve over the PACS index: what each information model and level may ask, the
hierarchical rules on unique keys, and the SQL that narrows candidates before the DICOM matching
rules (interfaces/dicom/matching) decide.

As for the worklist, SQL only narrows by keys it can decide exactly (patient id, accession, study
date, the UIDs, modality); every candidate then goes through `Query.matches`, so a query answered
here is never narrower than the matching rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from interfaces.dicom.matching import (
    AnyOf,
    Condition,
    Exact,
    InvalidQuery,
    Query,
    Range,
    Schema,
    Value,
    compile_query,
)

# tags (PS3.6), named once
SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
STUDY_DATE = 0x00080020
STUDY_TIME = 0x00080030
ACCESSION_NUMBER = 0x00080050
QUERY_RETRIEVE_LEVEL = 0x00080052
RETRIEVE_AE_TITLE = 0x00080054
INSTANCE_AVAILABILITY = 0x00080056
FAILED_SOP_INSTANCE_UID_LIST = 0x00080058
MODALITY = 0x00080060
MODALITIES_IN_STUDY = 0x00080061
REFERRING_PHYSICIAN_NAME = 0x00080090
STUDY_DESCRIPTION = 0x00081030
SERIES_DESCRIPTION = 0x0008103E
AVAILABLE_TRANSFER_SYNTAX_UID = 0x00083002
PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
PATIENT_BIRTH_DATE = 0x00100030
PATIENT_SEX = 0x00100040
BODY_PART_EXAMINED = 0x00180015
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
STUDY_ID = 0x00200010
SERIES_NUMBER = 0x00200011
INSTANCE_NUMBER = 0x00200013
PATIENT_RELATED_STUDIES = 0x00201200
PATIENT_RELATED_SERIES = 0x00201202
PATIENT_RELATED_INSTANCES = 0x00201204
STUDY_RELATED_SERIES = 0x00201206
STUDY_RELATED_INSTANCES = 0x00201208
SERIES_RELATED_INSTANCES = 0x00201209

PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"
PATIENT_ROOT, STUDY_ROOT = "patient", "study"
LEVELS = {PATIENT_ROOT: (PATIENT, STUDY, SERIES, IMAGE), STUDY_ROOT: (STUDY, SERIES, IMAGE)}
UNIQUE_KEY = {
    PATIENT: PATIENT_ID,
    STUDY: STUDY_INSTANCE_UID,
    SERIES: SERIES_INSTANCE_UID,
    IMAGE: SOP_INSTANCE_UID,
}

COMMON: Schema = {RETRIEVE_AE_TITLE: None, INSTANCE_AVAILABILITY: None}
PATIENT_KEYS: Schema = {PATIENT_NAME: None, PATIENT_ID: None, PATIENT_BIRTH_DATE: None, PATIENT_SEX: None}
PATIENT_LEVEL: Schema = {
    **COMMON,
    **PATIENT_KEYS,
    PATIENT_RELATED_STUDIES: None,
    PATIENT_RELATED_SERIES: None,
    PATIENT_RELATED_INSTANCES: None,
}
# patient attributes are answered at the study level in both models: Study Root puts them there,
# and a Patient Root peer asking for them at the study level gets the values rather than blanks
STUDY_LEVEL: Schema = {
    **COMMON,
    **PATIENT_KEYS,
    STUDY_DATE: None,
    STUDY_TIME: None,
    ACCESSION_NUMBER: None,
    STUDY_ID: None,
    STUDY_INSTANCE_UID: None,
    REFERRING_PHYSICIAN_NAME: None,
    STUDY_DESCRIPTION: None,
    MODALITIES_IN_STUDY: None,
    STUDY_RELATED_SERIES: None,
    STUDY_RELATED_INSTANCES: None,
}
SERIES_LEVEL: Schema = {
    **COMMON,
    PATIENT_ID: None,
    STUDY_INSTANCE_UID: None,
    MODALITY: None,
    SERIES_NUMBER: None,
    SERIES_INSTANCE_UID: None,
    SERIES_DESCRIPTION: None,
    BODY_PART_EXAMINED: None,
    SERIES_RELATED_INSTANCES: None,
}
IMAGE_LEVEL: Schema = {
    **COMMON,
    PATIENT_ID: None,
    STUDY_INSTANCE_UID: None,
    SERIES_INSTANCE_UID: None,
    SOP_INSTANCE_UID: None,
    SOP_CLASS_UID: None,
    INSTANCE_NUMBER: None,
    AVAILABLE_TRANSFER_SYNTAX_UID: None,
}
SCHEMAS: Mapping[str, Schema] = {
    PATIENT: PATIENT_LEVEL,
    STUDY: STUDY_LEVEL,
    SERIES: SERIES_LEVEL,
    IMAGE: IMAGE_LEVEL,
}


def higher_keys(model: str, level: str) -> tuple[int, ...]:
    """The unique keys of the levels above `level` (PS3.4 C.4.1.2.1: a hierarchical query names
    one entity at each of them)."""
    levels = LEVELS[model]
    return tuple(UNIQUE_KEY[above] for above in levels[: levels.index(level)])


def _name(tag: int) -> str:
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _texts(raw: Any) -> list[str]:
    values = list(raw) if isinstance(raw, (MultiValue, list, tuple)) else [raw]
    return [v for v in ("" if v is None else str(v).strip() for v in values) if v]


def query_level(identifier: Dataset, model: str) -> str:
    element = identifier.get(QUERY_RETRIEVE_LEVEL)
    level = str(element.value or "").strip().upper() if element is not None else ""
    if not level:
        raise InvalidQuery(QUERY_RETRIEVE_LEVEL, "Query/Retrieve Level is missing")
    if level not in LEVELS[model]:
        allowed = ", ".join(LEVELS[model])
        raise InvalidQuery(QUERY_RETRIEVE_LEVEL, f"level {level!r} is not one of {allowed} in this model")
    return level


def _single(identifier: Dataset, tag: int, level: str) -> str:
    element = identifier.get(tag)
    values = _texts(element.value) if element is not None else []
    if not values:
        raise InvalidQuery(tag, f"{_name(tag)} is required below the {level} level")
    if len(values) > 1:
        raise InvalidQuery(tag, f"{_name(tag)} must hold a single value above the query level")
    if "*" in values[0] or "?" in values[0]:
        raise InvalidQuery(tag, f"{_name(tag)} must not hold wildcards above the query level")
    return values[0]


def compile_find(identifier: Dataset, model: str) -> tuple[str, Query]:
    """The level and compiled query of a C-FIND identifier; raises InvalidQuery."""
    level = query_level(identifier, model)
    for tag in higher_keys(model, level):
        _single(identifier, tag, _level_of(tag))
    return level, compile_query(identifier, SCHEMAS[level])


def _level_of(tag: int) -> str:
    return next(level for level, key in UNIQUE_KEY.items() if key == tag)


# --- C-FIND candidates ------------------------------------------------------------------------


def _exact(condition: Condition | None) -> list[str] | None:
    """The values SQL may compare with `=` / `IN`, or None when the condition is more than that."""
    conditions = condition.conditions if isinstance(condition, AnyOf) else (condition,)
    if condition is None or not all(isinstance(c, Exact) and not c.person_name for c in conditions):
        return None
    return [c.value for c in conditions if isinstance(c, Exact)]


def _narrow(query: Query, columns: Sequence[tuple[int, str]], where: list[str], params: list[Any]) -> None:
    for tag, column in columns:
        values = _exact(query.condition(tag))
        if values is not None:
            where.append(f"{column} IN ({', '.join('?' for _ in values)})")
            params.extend(values)


def select(level: str, query: Query) -> tuple[str, list[Any]]:
    """SQL for the candidate rows of one level, never narrower than the matching rules."""
    where: list[str] = []
    params: list[Any] = []
    if level in (PATIENT, STUDY):
        _narrow(query, [(PATIENT_ID, "patient_id")], where, params)
        if level == STUDY:
            _narrow(
                query,
                [(ACCESSION_NUMBER, "accession_number"), (STUDY_INSTANCE_UID, "study_instance_uid")],
                where,
                params,
            )
            dates = query.condition(STUDY_DATE)
            if isinstance(dates, Range):
                if dates.low is not None:
                    where.append("study_date >= ?")
                    params.append(dates.low)
                if dates.high is not None:
                    where.append("study_date <= ?")
                    params.append(dates.high)
        sql = "SELECT * FROM pacs_studies"
        order = "patient_id, updated_at" if level == PATIENT else "study_date, study_time, study_instance_uid"
    elif level == SERIES:
        _narrow(
            query,
            [
                (STUDY_INSTANCE_UID, "s.study_instance_uid"),
                (SERIES_INSTANCE_UID, "s.series_instance_uid"),
                (MODALITY, "s.modality"),
                (PATIENT_ID, "st.patient_id"),
            ],
            where,
            params,
        )
        sql = (
            "SELECT s.*, st.patient_id FROM pacs_series s "
            "JOIN pacs_studies st ON st.study_instance_uid = s.study_instance_uid"
        )
        order = "s.study_instance_uid, s.series_instance_uid"
    else:
        _narrow(
            query,
            [
                (SERIES_INSTANCE_UID, "i.series_instance_uid"),
                (STUDY_INSTANCE_UID, "i.study_instance_uid"),
                (SOP_INSTANCE_UID, "i.sop_instance_uid"),
                (PATIENT_ID, "st.patient_id"),
            ],
            where,
            params,
        )
        sql = (
            "SELECT i.*, st.patient_id FROM pacs_instances i "
            "JOIN pacs_studies st ON st.study_instance_uid = i.study_instance_uid"
        )
        order = "i.series_instance_uid, i.sop_instance_uid"
    if where:
        sql += f" WHERE {' AND '.join(where)}"
    return f"{sql} ORDER BY {order}", params


def _number(text: str) -> tuple[int, str]:
    """Sort key for IS values kept as text: numerically, the malformed last."""
    try:
        return int(text), ""
    except ValueError:
        return 1 << 62, text


def _multi(text: str) -> Value:
    values = tuple(v for v in text.split("\\") if v)
    return values if len(values) > 1 else (values[0] if values else "")


def study_item(row: Mapping[str, Any], ae_title: str) -> dict[int, Value]:
    return {
        RETRIEVE_AE_TITLE: ae_title,
        INSTANCE_AVAILABILITY: "ONLINE",
        PATIENT_NAME: row["patient_name"],
        PATIENT_ID: row["patient_id"],
        PATIENT_BIRTH_DATE: row["patient_birth_date"],
        PATIENT_SEX: row["patient_sex"],
        STUDY_DATE: row["study_date"],
        STUDY_TIME: row["study_time"],
        ACCESSION_NUMBER: row["accession_number"],
        STUDY_ID: row["study_id"],
        STUDY_INSTANCE_UID: row["study_instance_uid"],
        REFERRING_PHYSICIAN_NAME: row["referring_physician"],
        STUDY_DESCRIPTION: row["study_description"],
        MODALITIES_IN_STUDY: _multi(row["modalities"]),
        STUDY_RELATED_SERIES: str(row["series_count"]),
        STUDY_RELATED_INSTANCES: str(row["instance_count"]),
    }


def patient_items(rows: Sequence[Mapping[str, Any]], ae_title: str) -> list[dict[int, Value]]:
    """One entity per Patient ID; demographics from its most recently updated study (rows come
    ordered by patient, then update time)."""
    by_patient: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_patient.setdefault(row["patient_id"], []).append(row)
    items = []
    for patient_id, studies in by_patient.items():
        latest = studies[-1]
        items.append(
            {
                RETRIEVE_AE_TITLE: ae_title,
                INSTANCE_AVAILABILITY: "ONLINE",
                PATIENT_NAME: latest["patient_name"],
                PATIENT_ID: patient_id,
                PATIENT_BIRTH_DATE: latest["patient_birth_date"],
                PATIENT_SEX: latest["patient_sex"],
                PATIENT_RELATED_STUDIES: str(len(studies)),
                PATIENT_RELATED_SERIES: str(sum(int(s["series_count"]) for s in studies)),
                PATIENT_RELATED_INSTANCES: str(sum(int(s["instance_count"]) for s in studies)),
            }
        )
    return items


def series_item(row: Mapping[str, Any], ae_title: str) -> dict[int, Value]:
    return {
        RETRIEVE_AE_TITLE: ae_title,
        INSTANCE_AVAILABILITY: "ONLINE",
        PATIENT_ID: row["patient_id"],
        STUDY_INSTANCE_UID: row["study_instance_uid"],
        MODALITY: row["modality"],
        SERIES_NUMBER: row["series_number"],
        SERIES_INSTANCE_UID: row["series_instance_uid"],
        SERIES_DESCRIPTION: row["series_description"],
        BODY_PART_EXAMINED: row["body_part"],
        SERIES_RELATED_INSTANCES: str(row["instance_count"]),
    }


def image_item(row: Mapping[str, Any], ae_title: str) -> dict[int, Value]:
    return {
        RETRIEVE_AE_TITLE: ae_title,
        INSTANCE_AVAILABILITY: "ONLINE",
        PATIENT_ID: row["patient_id"],
        STUDY_INSTANCE_UID: row["study_instance_uid"],
        SERIES_INSTANCE_UID: row["series_instance_uid"],
        SOP_INSTANCE_UID: row["sop_instance_uid"],
        SOP_CLASS_UID: row["sop_class_uid"],
        INSTANCE_NUMBER: row["instance_number"],
        AVAILABLE_TRANSFER_SYNTAX_UID: row["transfer_syntax"],
    }


def candidates(level: str, rows: Sequence[Mapping[str, Any]], ae_title: str) -> list[dict[int, Value]]:
    """Rows of `select(level, ...)` as entities, in the order they are answered."""
    if level == PATIENT:
        return patient_items(rows, ae_title)
    if level == STUDY:
        return [study_item(r, ae_title) for r in rows]
    if level == SERIES:
        ordered = sorted(rows, key=lambda r: (r["study_instance_uid"], _number(r["series_number"])))
        return [series_item(r, ae_title) for r in ordered]
    ordered = sorted(rows, key=lambda r: (r["series_instance_uid"], _number(r["instance_number"])))
    return [image_item(r, ae_title) for r in ordered]


# --- C-MOVE / C-GET ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrieveKeys:
    """What a retrieve names: one entity at each level above its level, one or more at it."""

    level: str
    patient_ids: tuple[str, ...] = ()
    study_uids: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    sop_uids: tuple[str, ...] = ()


def retrieve_keys(identifier: Dataset, model: str) -> RetrieveKeys:
    """The unique keys of a C-MOVE / C-GET identifier (PS3.4 C.4.2.2.1 and C.4.3.2.1: single
    values above the level, a UID list allowed at it, never wildcards); raises InvalidQuery."""
    level = query_level(identifier, model)
    found: dict[int, tuple[str, ...]] = {}
    for tag in higher_keys(model, level):
        found[tag] = (_single(identifier, tag, _level_of(tag)),)
    tag = UNIQUE_KEY[level]
    element = identifier.get(tag)
    values = tuple(_texts(element.value)) if element is not None else ()
    if not values:
        raise InvalidQuery(tag, f"{_name(tag)} is required to retrieve at the {level} level")
    if any("*" in v or "?" in v for v in values):
        raise InvalidQuery(tag, f"{_name(tag)} must not hold wildcards in a retrieve")
    if tag == PATIENT_ID and len(values) > 1:
        raise InvalidQuery(tag, "PatientID must hold a single value (list matching is for UIDs)")
    found[tag] = values
    return RetrieveKeys(
        level=level,
        patient_ids=found.get(PATIENT_ID, ()),
        study_uids=found.get(STUDY_INSTANCE_UID, ()),
        series_uids=found.get(SERIES_INSTANCE_UID, ()),
        sop_uids=found.get(SOP_INSTANCE_UID, ()),
    )


def select_instances(keys: RetrieveKeys) -> tuple[str, list[Any]]:
    """SQL for the instances a retrieve names."""
    where: list[str] = []
    params: list[Any] = []
    for column, values in (
        ("st.patient_id", keys.patient_ids),
        ("i.study_instance_uid", keys.study_uids),
        ("i.series_instance_uid", keys.series_uids),
        ("i.sop_instance_uid", keys.sop_uids),
    ):
        if values:
            where.append(f"{column} IN ({', '.join('?' for _ in values)})")
            params.extend(values)
    sql = (
        "SELECT i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax, i.path, i.study_instance_uid, "
        "i.series_instance_uid, i.instance_number FROM pacs_instances i "
        "JOIN pacs_studies st ON st.study_instance_uid = i.study_instance_uid"
    )
    return f"{sql} WHERE {' AND '.join(where)}", params


def order_instances(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(
        rows,
        key=lambda r: (r["study_instance_uid"], r["series_instance_uid"], _number(r["instance_number"])),
    )
