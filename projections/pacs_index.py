"""The PACS index: patient / study / series / instance rows with the attributes Query/Retrieve
and DICOMweb answer from, built from the Study aggregate's events like every projection.

The patient level is the studies grouped by Patient ID: radflow keeps no separate DICOM patient
record, because the HIS (through HL7) is the master of patient identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapters.sql import Cursor

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS pacs_studies (
        study_instance_uid TEXT PRIMARY KEY,
        patient_id TEXT NOT NULL,
        patient_name TEXT NOT NULL,
        patient_birth_date TEXT NOT NULL,
        patient_sex TEXT NOT NULL,
        accession_number TEXT NOT NULL,
        study_id TEXT NOT NULL,
        study_date TEXT NOT NULL,
        study_time TEXT NOT NULL,
        study_description TEXT NOT NULL,
        referring_physician TEXT NOT NULL,
        modalities TEXT NOT NULL,
        series_count BIGINT NOT NULL,
        instance_count BIGINT NOT NULL,
        linked_accession TEXT NOT NULL,
        first_stored_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS pacs_studies_patient ON pacs_studies (patient_id)",
    "CREATE INDEX IF NOT EXISTS pacs_studies_accession ON pacs_studies (accession_number)",
    "CREATE INDEX IF NOT EXISTS pacs_studies_date ON pacs_studies (study_date)",
    "CREATE INDEX IF NOT EXISTS pacs_studies_linked ON pacs_studies (linked_accession)",
    """CREATE TABLE IF NOT EXISTS pacs_series (
        series_instance_uid TEXT PRIMARY KEY,
        study_instance_uid TEXT NOT NULL,
        modality TEXT NOT NULL,
        series_number TEXT NOT NULL,
        series_description TEXT NOT NULL,
        body_part TEXT NOT NULL,
        instance_count BIGINT NOT NULL,
        updated_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS pacs_series_study ON pacs_series (study_instance_uid)",
    """CREATE TABLE IF NOT EXISTS pacs_instances (
        sop_instance_uid TEXT PRIMARY KEY,
        series_instance_uid TEXT NOT NULL,
        study_instance_uid TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL,
        instance_number TEXT NOT NULL,
        transfer_syntax TEXT NOT NULL,
        size BIGINT NOT NULL,
        path TEXT NOT NULL,
        stored_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS pacs_instances_series ON pacs_instances (series_instance_uid)",
    "CREATE INDEX IF NOT EXISTS pacs_instances_study ON pacs_instances (study_instance_uid)",
]

STUDY_COLUMNS = (
    "patient_id",
    "patient_name",
    "patient_birth_date",
    "patient_sex",
    "accession_number",
    "study_id",
    "study_date",
    "study_time",
    "study_description",
    "referring_physician",
)


class PacsIndexProjection:
    name = "pacs_index"
    schema_version = 1
    schema: Sequence[str] = SCHEMA
    tables: Sequence[str] = ("pacs_studies", "pacs_series", "pacs_instances")

    def handle(self, cur: Cursor, event: Any) -> None:
        kind = type(event).__name__
        at = event.timestamp.isoformat()
        if kind == "StudyFirstStored":
            study = event.study
            cur.execute(
                f"INSERT INTO pacs_studies (study_instance_uid, {', '.join(STUDY_COLUMNS)}, modalities, "
                "series_count, instance_count, linked_accession, first_stored_at, updated_at) "
                f"VALUES (?, {', '.join('?' for _ in STUDY_COLUMNS)}, '', 0, 0, '', ?, ?) "
                "ON CONFLICT (study_instance_uid) DO NOTHING",
                (event.study_instance_uid, *(study.get(c, "") for c in STUDY_COLUMNS), at, at),
            )
        elif kind == "InstancesStored":
            self._stored(cur, event, at)
        elif kind == "StudyLinkedToExam":
            cur.execute(
                "UPDATE pacs_studies SET linked_accession = ?, updated_at = ? WHERE study_instance_uid = ?",
                (event.accession, at, event.study_instance_uid),
            )
        elif kind == "StudyPatientChanged":  # a merge: Q/R answers with the surviving identity
            patient = event.patient
            cur.execute(
                "UPDATE pacs_studies SET patient_id = ?, patient_name = CASE WHEN ? = '' THEN patient_name "
                "ELSE ? END, updated_at = ? WHERE study_instance_uid = ?",
                (patient.get("id", ""), patient.get("name", ""), patient.get("name", ""), at, event.study_instance_uid),
            )

    def _stored(self, cur: Cursor, event: Any, at: str) -> None:
        study_uid = event.study_instance_uid
        for series in event.series:
            for instance in series["instances"]:
                cur.execute(
                    "INSERT INTO pacs_instances (sop_instance_uid, series_instance_uid, study_instance_uid, "
                    "sop_class_uid, instance_number, transfer_syntax, size, path, stored_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sop_instance_uid) DO UPDATE SET "
                    "series_instance_uid = excluded.series_instance_uid, sop_class_uid = excluded.sop_class_uid, "
                    "instance_number = excluded.instance_number, transfer_syntax = excluded.transfer_syntax, "
                    "size = excluded.size, path = excluded.path, stored_at = excluded.stored_at",
                    (
                        instance["sop_instance_uid"],
                        series["series_instance_uid"],
                        study_uid,
                        instance["sop_class_uid"],
                        str(instance.get("instance_number", "")),
                        instance.get("transfer_syntax", ""),
                        int(instance.get("size", 0)),
                        instance.get("path", ""),
                        at,
                    ),
                )
            cur.execute(
                "INSERT INTO pacs_series (series_instance_uid, study_instance_uid, modality, series_number, "
                "series_description, body_part, instance_count, updated_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?) "
                "ON CONFLICT (series_instance_uid) DO UPDATE SET "
                "modality = CASE WHEN excluded.modality <> '' THEN excluded.modality ELSE pacs_series.modality END, "
                "series_description = CASE WHEN excluded.series_description <> '' "
                "THEN excluded.series_description ELSE pacs_series.series_description END, "
                "updated_at = excluded.updated_at",
                (
                    series["series_instance_uid"],
                    study_uid,
                    series.get("modality", ""),
                    str(series.get("series_number", "")),
                    series.get("series_description", ""),
                    series.get("body_part", ""),
                    at,
                ),
            )
            cur.execute(
                "UPDATE pacs_series SET instance_count = "
                "(SELECT COUNT(*) FROM pacs_instances WHERE series_instance_uid = ?) WHERE series_instance_uid = ?",
                (series["series_instance_uid"], series["series_instance_uid"]),
            )
        # newer non-empty study attributes win (a corrected name on a later batch shows)
        updates = [(c, v) for c, v in event.study.items() if c in STUDY_COLUMNS and v]
        assignments = "".join(f"{c} = ?, " for c, _ in updates)
        cur.execute(
            f"UPDATE pacs_studies SET {assignments}"
            "series_count = (SELECT COUNT(*) FROM pacs_series WHERE study_instance_uid = ?), "
            "instance_count = (SELECT COUNT(*) FROM pacs_instances WHERE study_instance_uid = ?), "
            "updated_at = ? WHERE study_instance_uid = ?",
            (*(v for _, v in updates), study_uid, study_uid, at, study_uid),
        )
        modalities = cur.execute(
            "SELECT DISTINCT modality FROM pacs_series WHERE study_instance_uid = ? AND modality <> '' "
            "ORDER BY modality",
            (study_uid,),
        ).fetchall()
        cur.execute(
            "UPDATE pacs_studies SET modalities = ? WHERE study_instance_uid = ?",
            ("\\".join(row["modality"] for row in modalities), study_uid),
        )
