"""The worklist: one row per exam, what schedulers, technologists, the API and the DICOM
Modality Worklist list and filter."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from adapters.sql import Cursor
from domain.exam import Exam, study_instance_uid
from domain.patient import patient_id

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS worklist (
        accession TEXT PRIMARY KEY,
        exam_id TEXT NOT NULL,
        patient_ref TEXT NOT NULL,
        patient_id TEXT NOT NULL,
        patient_issuer TEXT NOT NULL,
        patient_name TEXT NOT NULL,
        procedure_code TEXT NOT NULL,
        procedure_text TEXT NOT NULL,
        modality TEXT NOT NULL,
        priority TEXT NOT NULL,
        state TEXT NOT NULL,
        scheduled_at TEXT,
        requested_procedure_id TEXT NOT NULL,
        study_instance_uid TEXT NOT NULL,
        placer_order_number TEXT NOT NULL,
        filler_order_number TEXT NOT NULL,
        ordered_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        patient_birth_date TEXT NOT NULL,
        patient_sex TEXT NOT NULL,
        referring_physician TEXT NOT NULL,
        scheduled_date TEXT,
        scheduled_time TEXT,
        scheduled_procedure_step_id TEXT NOT NULL,
        scheduled_station_ae TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS worklist_state ON worklist (state, modality)",
    "CREATE INDEX IF NOT EXISTS worklist_scheduled ON worklist (state, scheduled_date)",
    "CREATE INDEX IF NOT EXISTS worklist_patient ON worklist (patient_id, patient_issuer)",
    "CREATE UNIQUE INDEX IF NOT EXISTS worklist_exam_id ON worklist (exam_id)",
    "CREATE INDEX IF NOT EXISTS worklist_patient_ref ON worklist (patient_ref)",
]

STATE_AFTER = {
    "ExamCancelled": "cancelled",
    "ExamStarted": "in_progress",
    "ExamCompleted": "completed",
    "ExamDiscontinued": "discontinued",
    "ExamReported": "reported",
    "ExamBilled": "billed",
}
PRIORITY_RANK = "CASE priority WHEN 'STAT' THEN 0 WHEN 'ASAP' THEN 1 ELSE 2 END"


def dicom_date_time(scheduled_at: str | None) -> tuple[str | None, str | None]:
    """ISO 8601 as DICOM DA and TM (YYYYMMDD, HHMMSS), so that date and time ranges of a
    worklist query compare as plain strings in SQL. The wall-clock time is kept as the order
    gave it: DA/TM carry no offset."""
    if not scheduled_at:
        return None, None
    try:
        moment = datetime.fromisoformat(scheduled_at)
    except ValueError:
        return None, None
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S")


# what an order change (OrderModified) may carry that the worklist keeps under the same name;
# scheduled_at is split into DICOM date and time below, the reason is not listed
MODIFIABLE_COLUMNS = tuple(sorted(Exam.MODIFIABLE - {"scheduled_at", "reason"}))


class WorklistProjection:
    name = "worklist"
    # 2: patient birth date/sex, referring physician, DA/TM schedule, SPS id, station AE (MWL)
    schema_version = 2
    schema: Sequence[str] = SCHEMA
    tables: Sequence[str] = ("worklist",)

    @staticmethod
    def _order_modified(cur: Cursor, changes: dict[str, str], recorded_at: str, exam: str) -> None:
        updates: list[tuple[str, str | None]] = [
            (column, changes[column]) for column in MODIFIABLE_COLUMNS if column in changes
        ]
        if "scheduled_at" in changes:
            scheduled_date, scheduled_time = dicom_date_time(changes["scheduled_at"])
            updates += [
                ("scheduled_at", changes["scheduled_at"] or None),
                ("scheduled_date", scheduled_date),
                ("scheduled_time", scheduled_time),
            ]
        if not updates:
            return
        assignments = ", ".join(f"{column} = ?" for column, _ in updates)
        cur.execute(
            f"UPDATE worklist SET {assignments}, updated_at = ? WHERE exam_id = ?",
            (*(value for _, value in updates), recorded_at, exam),
        )

    def handle(self, cur: Cursor, event: Any) -> None:
        kind = type(event).__name__
        recorded_at = event.timestamp.isoformat()
        if kind == "ExamOrdered":
            order, patient = event.order, event.order["patient"]
            scheduled_date, scheduled_time = dicom_date_time(order["scheduled_at"])
            cur.execute(
                "INSERT INTO worklist (accession, exam_id, patient_ref, patient_id, "
                "patient_issuer, patient_name, procedure_code, procedure_text, modality, "
                "priority, state, scheduled_at, requested_procedure_id, study_instance_uid, "
                "placer_order_number, filler_order_number, ordered_at, updated_at, "
                "patient_birth_date, patient_sex, referring_physician, scheduled_date, "
                "scheduled_time, scheduled_procedure_step_id, scheduled_station_ae) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'ordered', ?, ?, ?, ?, ?, ?, ?, "
                "?, ?, ?, ?, ?, ?, ?)",
                (
                    event.accession,
                    str(event.originator_id),
                    str(patient_id(f"{patient['issuer']}|{patient['id']}")),
                    patient["id"],
                    patient["issuer"],
                    patient["name"],
                    order["procedure_code"],
                    order["procedure_text"],
                    order["modality"],
                    order["priority"],
                    order["scheduled_at"] or None,
                    order["requested_procedure_id"],
                    # orders recorded before radflow assigned UIDs get the same derived one
                    order["study_instance_uid"] or study_instance_uid(event.accession),
                    order["placer_order_number"],
                    order["filler_order_number"],
                    recorded_at,
                    recorded_at,
                    patient.get("birth_date", ""),
                    patient.get("sex", ""),
                    order.get("referring_physician", ""),
                    scheduled_date,
                    scheduled_time,
                    # one requested procedure, one step: the step borrows the procedure's id
                    order["requested_procedure_id"] or event.accession,
                    "",  # radflow assigns no stations yet: modalities find steps by modality and date
                ),
            )
        elif kind == "ExamScheduled":
            scheduled_date, scheduled_time = dicom_date_time(event.scheduled_at)
            cur.execute(
                "UPDATE worklist SET state = 'scheduled', scheduled_at = ?, scheduled_date = ?, "
                "scheduled_time = ?, updated_at = ? WHERE exam_id = ?",
                (
                    event.scheduled_at or None,
                    scheduled_date,
                    scheduled_time,
                    recorded_at,
                    str(event.originator_id),
                ),
            )
        elif kind == "AppointmentCancelled":
            cur.execute(
                "UPDATE worklist SET state = 'ordered', scheduled_at = NULL, scheduled_date = NULL, "
                "scheduled_time = NULL, updated_at = ? WHERE exam_id = ?",
                (recorded_at, str(event.originator_id)),
            )
        elif kind == "OrderModified":
            self._order_modified(cur, event.changes, recorded_at, str(event.originator_id))
        elif kind == "ExamPatientChanged":
            patient = event.patient
            cur.execute(
                "UPDATE worklist SET patient_ref = ?, patient_id = ?, patient_issuer = ?, "
                "patient_name = ?, patient_birth_date = ?, patient_sex = ?, updated_at = ? "
                "WHERE exam_id = ?",
                (
                    str(patient_id(f"{patient.get('issuer', '')}|{patient.get('id', '')}")),
                    patient.get("id", ""),
                    patient.get("issuer", ""),
                    patient.get("name", ""),
                    patient.get("birth_date", ""),
                    patient.get("sex", ""),
                    recorded_at,
                    str(event.originator_id),
                ),
            )
        elif kind in STATE_AFTER or kind == "ExamStateForced":  # forced: operations' correction
            cur.execute(
                "UPDATE worklist SET state = ?, updated_at = ? WHERE exam_id = ?",
                (STATE_AFTER.get(kind) or event.to_state, recorded_at, str(event.originator_id)),
            )
        elif kind in ("PatientRegistered", "PatientUpdated"):
            changes = event.demographics if kind == "PatientRegistered" else event.changes
            columns = {"name": "patient_name", "birth_date": "patient_birth_date", "sex": "patient_sex"}
            updates = [(column, changes[key]) for key, column in columns.items() if changes.get(key)]
            if updates:
                assignments = ", ".join(f"{column} = ?" for column, _ in updates)
                cur.execute(
                    f"UPDATE worklist SET {assignments}, updated_at = ? WHERE patient_ref = ?",
                    (*(value for _, value in updates), recorded_at, str(event.originator_id)),
                )
