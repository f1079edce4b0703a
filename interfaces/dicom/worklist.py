"""Modality Worklist SCP (C-FIND, Modality Worklist Information Model - FIND; IHE RAD-5).

Answers from the worklist projection: exams still to be performed (ordered or scheduled), one
Scheduled Procedure Step per requested procedure. Simple keys (accession, patient id, modality,
scheduled date range, study UID) narrow the SQL; the DICOM matching rules then run in Python on
every candidate, so the SQL never needs to be exact, only never narrower than the rules.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pydicom.charset import python_encoding
from pydicom.dataset import Dataset
from pynetdicom import _config as pynetdicom_config
from pynetdicom import evt
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

from adapters.settings import Settings
from adapters.sql import Database
from interfaces.dicom.matching import (
    SPECIFIC_CHARACTER_SET,
    AnyOf,
    Exact,
    InvalidQuery,
    Item,
    Query,
    Range,
    Schema,
    compile_query,
)
from interfaces.dicom.server import DicomService
from interfaces.dicom.status import status

log = logging.getLogger("radflow.dicom.worklist")

# tags (PS3.6), named once
ACCESSION_NUMBER = 0x00080050
MODALITY = 0x00080060
REFERRING_PHYSICIAN_NAME = 0x00080090
CODE_VALUE = 0x00080100
CODING_SCHEME_DESIGNATOR = 0x00080102
CODE_MEANING = 0x00080104
PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
ISSUER_OF_PATIENT_ID = 0x00100021
PATIENT_BIRTH_DATE = 0x00100030
PATIENT_SEX = 0x00100040
STUDY_INSTANCE_UID = 0x0020000D
REQUESTING_PHYSICIAN = 0x00321032
REQUESTED_PROCEDURE_DESCRIPTION = 0x00321060
REQUESTED_PROCEDURE_CODE_SEQUENCE = 0x00321064
SCHEDULED_STATION_AE_TITLE = 0x00400001
SPS_START_DATE = 0x00400002
SPS_START_TIME = 0x00400003
SPS_DESCRIPTION = 0x00400007
SCHEDULED_PROTOCOL_CODE_SEQUENCE = 0x00400008
SPS_ID = 0x00400009
SPS_STATUS = 0x00400020
SCHEDULED_PROCEDURE_STEP_SEQUENCE = 0x00400100
REQUESTED_PROCEDURE_ID = 0x00401001
REQUESTED_PROCEDURE_PRIORITY = 0x00401003
PLACER_ORDER_NUMBER = 0x00402016
FILLER_ORDER_NUMBER = 0x00402017

ACTIVE_STATES = ("ordered", "scheduled")
# HL7 priority (ORC-7.6 / TQ1-9 as radflow keeps it) -> Requested Procedure Priority (0040,1003)
PRIORITY = {"STAT": "STAT", "ASAP": "HIGH", "ROUTINE": "ROUTINE"}
# procedure codes come from radflow's own code table; the order does not carry HL7's coding
# system, and PS3.16 8.2 reserves "99" designators for local schemes
LOCAL_CODING_SCHEME = "99RADFLOW"
# answered in the query's character set when it can hold the values, else in Latin-1 (what older
# modalities read), else in UTF-8 (PS3.4 C.4.1.1.3.2 lets the SCP answer in another set than
# the query's); ISO 2022 code extensions are never produced
CHARACTER_SETS = ("ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110", "ISO_IR 126", "ISO_IR 127",
                  "ISO_IR 138", "ISO_IR 144", "ISO_IR 148", "ISO_IR 166", "ISO_IR 192")
FALLBACK_CHARACTER_SETS = ("ISO_IR 100", "ISO_IR 192")

CODE: Schema = {CODE_VALUE: None, CODING_SCHEME_DESIGNATOR: None, CODE_MEANING: None}
SCHEMA: Schema = {
    ACCESSION_NUMBER: None,
    REFERRING_PHYSICIAN_NAME: None,
    PATIENT_NAME: None,
    PATIENT_ID: None,
    ISSUER_OF_PATIENT_ID: None,
    PATIENT_BIRTH_DATE: None,
    PATIENT_SEX: None,
    STUDY_INSTANCE_UID: None,
    REQUESTING_PHYSICIAN: None,
    REQUESTED_PROCEDURE_DESCRIPTION: None,
    REQUESTED_PROCEDURE_CODE_SEQUENCE: CODE,
    REQUESTED_PROCEDURE_ID: None,
    REQUESTED_PROCEDURE_PRIORITY: None,
    PLACER_ORDER_NUMBER: None,
    FILLER_ORDER_NUMBER: None,
    SCHEDULED_PROCEDURE_STEP_SEQUENCE: {
        MODALITY: None,
        SCHEDULED_STATION_AE_TITLE: None,
        SPS_START_DATE: None,
        SPS_START_TIME: None,
        SPS_DESCRIPTION: None,
        SCHEDULED_PROTOCOL_CODE_SEQUENCE: CODE,
        SPS_ID: None,
        SPS_STATUS: None,
    },
}

# C-FIND statuses (PS3.4 C.4.1.1.4)
PENDING = 0xFF00
PENDING_WITH_UNSUPPORTED_KEYS = 0xFF01
CANCELLED = 0xFE00
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000
WORKLIST_UNAVAILABLE = 0xC001


def xcn_to_pn(xcn: str) -> str:
    """HL7 XCN `id^family^given[^middle]` (OBR-16 as radflow keeps it) as a DICOM PN."""
    return "^".join(xcn.split("^")[1:4]).rstrip("^")


def worklist_item(row: Mapping[str, Any]) -> dict[int, Any]:
    """One worklist row as an MWL entity: one requested procedure with one scheduled step."""
    code: list[Item] | None = None
    if row["procedure_code"]:
        code = [{
            CODE_VALUE: row["procedure_code"],
            CODING_SCHEME_DESIGNATOR: LOCAL_CODING_SCHEME,
            CODE_MEANING: row["procedure_text"] or row["procedure_code"],
        }]
    physician = xcn_to_pn(row["referring_physician"])
    stations = tuple(s for s in row["scheduled_station_ae"].split("\\") if s)
    return {
        ACCESSION_NUMBER: row["accession"],
        # HL7 XPN family^given^middle is already a DICOM PN alphabetic group
        PATIENT_NAME: row["patient_name"],
        PATIENT_ID: row["patient_id"],
        ISSUER_OF_PATIENT_ID: row["patient_issuer"],
        PATIENT_BIRTH_DATE: row["patient_birth_date"],
        PATIENT_SEX: row["patient_sex"],
        STUDY_INSTANCE_UID: row["study_instance_uid"],
        # OBR-16 is the ordering provider: Requesting Physician in IHE's mapping; the order has
        # no separate PV1-8, so it is also the best Referring Physician radflow knows
        REQUESTING_PHYSICIAN: physician,
        REFERRING_PHYSICIAN_NAME: physician,
        REQUESTED_PROCEDURE_DESCRIPTION: row["procedure_text"],
        # type 1C: absent (not empty) when the order named no procedure code
        REQUESTED_PROCEDURE_CODE_SEQUENCE: code,
        # type 1 in MWL: an order without OBR-19 still needs an id, and the accession is unique
        REQUESTED_PROCEDURE_ID: row["requested_procedure_id"] or row["accession"],
        REQUESTED_PROCEDURE_PRIORITY: PRIORITY.get(row["priority"], "ROUTINE"),
        PLACER_ORDER_NUMBER: row["placer_order_number"],
        FILLER_ORDER_NUMBER: row["filler_order_number"],
        SCHEDULED_PROCEDURE_STEP_SEQUENCE: [{
            MODALITY: row["modality"],
            SCHEDULED_STATION_AE_TITLE: stations or "",
            SPS_START_DATE: row["scheduled_date"] or "",
            SPS_START_TIME: row["scheduled_time"] or "",
            SPS_DESCRIPTION: row["procedure_text"],
            SCHEDULED_PROTOCOL_CODE_SEQUENCE: code,
            SPS_ID: row["scheduled_procedure_step_id"],
            SPS_STATUS: "SCHEDULED",
        }],
    }


def select(query: Query) -> tuple[str, list[Any]]:
    """SQL for the candidates: only active exams, narrowed by the keys SQL can decide exactly."""
    where = [f"state IN ({', '.join('?' for _ in ACTIVE_STATES)})"]
    params: list[Any] = list(ACTIVE_STATES)
    for tag, column in ((ACCESSION_NUMBER, "accession"), (PATIENT_ID, "patient_id")):
        condition = query.condition(tag)
        if isinstance(condition, Exact) and not condition.person_name:
            where.append(f"{column} = ?")
            params.append(condition.value)
    uids = query.condition(STUDY_INSTANCE_UID)
    exact_uids = [uids] if isinstance(uids, Exact) else list(uids.conditions) if isinstance(uids, AnyOf) else []
    if exact_uids and all(isinstance(u, Exact) for u in exact_uids):
        where.append(f"study_instance_uid IN ({', '.join('?' for _ in exact_uids)})")
        params += [u.value for u in exact_uids if isinstance(u, Exact)]
    step = query.sequence(SCHEDULED_PROCEDURE_STEP_SEQUENCE)
    if step is not None:
        modality = step.condition(MODALITY)
        if isinstance(modality, Exact):
            where.append("modality = ?")
            params.append(modality.value)
        dates = step.condition(SPS_START_DATE)
        if isinstance(dates, Range):
            if dates.low is not None:
                where.append("scheduled_date >= ?")
                params.append(dates.low)
            if dates.high is not None:
                where.append("scheduled_date <= ?")
                params.append(dates.high)
    sql = (
        f"SELECT * FROM worklist WHERE {' AND '.join(where)} "
        "ORDER BY COALESCE(scheduled_date, '99999999'), COALESCE(scheduled_time, ''), accession"
    )
    return sql, params


def character_set(requested: Sequence[str], response: Dataset) -> str | None:
    """The Specific Character Set for one response: the query's own when it can hold every
    value, else the first that can; None for plain ASCII asked without one."""
    texts = [str(value) for value in _texts(response)]
    if all(text.isascii() for text in texts):
        return requested[0] if len(requested) == 1 and requested[0] in CHARACTER_SETS else None
    own = requested[:1] if len(requested) == 1 and requested[0] in CHARACTER_SETS else []
    for term in (*own, *FALLBACK_CHARACTER_SETS):
        codec = "utf-8" if term == "ISO_IR 192" else python_encoding[term]
        try:
            for text in texts:
                text.encode(codec)
        except UnicodeEncodeError:
            continue
        return term
    return "ISO_IR 192"


def _texts(dataset: Dataset) -> Iterator[Any]:
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                yield from _texts(item)
        elif element.VR in ("PN", "LO", "SH", "LT", "ST", "UT", "UC") and element.value:
            yield from (element.value if element.VM > 1 else [element.value])


def requested_character_sets(identifier: Dataset) -> list[str]:
    value = identifier.get(SPECIFIC_CHARACTER_SET)
    if value is None or not value.value:
        return []
    raw = value.value
    return [str(v).strip() for v in (raw if isinstance(raw, (list, tuple)) or value.VM > 1 else [raw])]


class ModalityWorklist:
    """The EVT_C_FIND handler for the worklist model; one instance per AE, any thread."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def handle_find(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        requestor = event.assoc.requestor
        peer = {"calling_ae": requestor.ae_title, "peer": f"{requestor.address}:{requestor.port}"}
        try:
            identifier = event.identifier
            query = compile_query(identifier, SCHEMA)
            requested = requested_character_sets(identifier)
        except InvalidQuery as error:
            log.info("mwl c-find refused", extra={**peer, "reason": str(error)})
            yield status(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(error), int(error.tag)), None
            return
        except Exception as error:  # an identifier pydicom cannot decode
            log.info("mwl c-find unreadable", extra={**peer, "error": type(error).__name__})
            yield status(UNABLE_TO_PROCESS, f"identifier could not be decoded: {type(error).__name__}"), None
            return
        try:
            rows = self.db.query(*select(query))
        except Exception:
            log.exception("mwl c-find: worklist unavailable", extra=peer)
            yield status(WORKLIST_UNAVAILABLE, "worklist unavailable, try again later"), None
            return
        pending = PENDING_WITH_UNSUPPORTED_KEYS if query.all_unsupported() else PENDING
        matches = 0
        try:
            for row in rows:
                item = worklist_item(row)
                if not query.matches(item):
                    continue
                if event.is_cancelled:
                    log.info("mwl c-find cancelled", extra={**peer, "matches": matches})
                    yield CANCELLED, None
                    return
                response = query.respond(item)
                charset = character_set(requested, response)
                if charset is not None:
                    response.SpecificCharacterSet = charset
                matches += 1
                yield pending, response
        except Exception:  # a failure after some answers still ends with a status, not an abort
            log.exception("mwl c-find failed", extra={**peer, "matches": matches})
            yield status(UNABLE_TO_PROCESS, "a worklist entry could not be answered"), None
            return
        log.info("mwl c-find", extra={**peer, "candidates": len(rows), "matches": matches})


def modality_worklist_service(settings: Settings) -> DicomService:
    """The worklist as one service of radflow's AE, reading the projections database."""
    # pynetdicom decodes and logs every request identifier at INFO, patient names included;
    # radflow logs only ids, and the decode would cost time on every query
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    worklist = ModalityWorklist(Database.for_file(settings, settings.projections_sqlite_path))
    return DicomService(
        "modality-worklist", [ModalityWorklistInformationFind], [(evt.EVT_C_FIND, worklist.handle_find)]
    )
