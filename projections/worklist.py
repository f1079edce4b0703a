"""The worklist: one row per exam, what schedulers, technologists and the API list and filter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapters.sql import Cursor
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
        updated_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS worklist_state ON worklist (state, modality)",
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


class WorklistProjection:
    name = "worklist"
    schema: Sequence[str] = SCHEMA
    tables: Sequence[str] = ("worklist",)

    def handle(self, cur: Cursor, event: Any) -> None:
        kind = type(event).__name__
        recorded_at = event.timestamp.isoformat()
        if kind == "ExamOrdered":
            order, patient = event.order, event.order["patient"]
            cur.execute(
                "INSERT INTO worklist (accession, exam_id, patient_ref, patient_id, "
                "patient_issuer, patient_name, procedure_code, procedure_text, modality, "
                "priority, state, scheduled_at, requested_procedure_id, study_instance_uid, "
                "placer_order_number, filler_order_number, ordered_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'ordered', ?, ?, ?, ?, ?, ?, ?)",
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
                    order["study_instance_uid"],
                    order["placer_order_number"],
                    order["filler_order_number"],
                    recorded_at,
                    recorded_at,
                ),
            )
        elif kind == "ExamScheduled":
            cur.execute(
                "UPDATE worklist SET state = 'scheduled', scheduled_at = ?, updated_at = ? "
                "WHERE exam_id = ?",
                (event.scheduled_at or None, recorded_at, str(event.originator_id)),
            )
        elif kind in STATE_AFTER:
            cur.execute(
                "UPDATE worklist SET state = ?, updated_at = ? WHERE exam_id = ?",
                (STATE_AFTER[kind], recorded_at, str(event.originator_id)),
            )
        elif kind in ("PatientRegistered", "PatientUpdated"):
            changes = event.demographics if kind == "PatientRegistered" else event.changes
            if changes.get("name"):
                cur.execute(
                    "UPDATE worklist SET patient_name = ?, updated_at = ? WHERE patient_ref = ?",
                    (changes["name"], recorded_at, str(event.originator_id)),
                )
