"""Patient merges at the door: which patient ids were merged into which, and which exams each
patient has, kept in the message log's database and changed in the same transaction that
accepts a message.

An accepted A40/A47 (MergePatients) records the link prior -> survivor and fans out one
ChangeExamPatient per exam and one ChangeStudyPatient per stored study of the prior patient,
appended to the message's own commands, so the moves are recorded events with the merge
message as their provenance, ordered after everything accepted before it. Every later message
naming the prior id is rewritten to the survivor before it reaches a workflow. A repeated A40
finds the link and appends nothing.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from adapters.sql import Cursor, Database
from domain.commands import (
    ChangeExamPatient,
    ChangeStudyPatient,
    MergePatients,
    command_from_dict,
    workflow_id_for,
)

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS patient_exams (
        patient_key TEXT NOT NULL,
        accession TEXT NOT NULL,
        PRIMARY KEY (patient_key, accession)
    )""",
    """CREATE TABLE IF NOT EXISTS patient_links (
        prior_key TEXT PRIMARY KEY,
        survivor_key TEXT NOT NULL,
        how TEXT NOT NULL,
        message_id BIGINT NOT NULL,
        linked_at TEXT NOT NULL
    )""",
]

MAX_CHAIN = 32  # A -> B -> C ...; a longer chain is a loop someone made by hand


def create_schema(cur: Cursor) -> None:
    """Create the tables; on first creation, learn the exams of every order already logged."""
    fresh = not _table_exists(cur, "patient_exams")
    for statement in SCHEMA:
        cur.execute(statement)
    if fresh:
        _backfill(cur)


def _table_exists(cur: Cursor, table: str) -> bool:
    if cur.dialect == "sqlite":
        return (
            cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
            is not None
        )
    return cur.execute("SELECT to_regclass(?) IS NOT NULL AS present", (table,)).fetchone() == {
        "present": True
    }


def _backfill(cur: Cursor) -> None:
    rows = cur.execute(
        "SELECT commands FROM hl7_messages WHERE status = 'accepted' AND commands IS NOT NULL "
        "AND id IN (SELECT message_id FROM hl7_message_orders WHERE command_kind = 'place_order')"
    ).fetchall()
    for row in rows:
        for entry in json.loads(row["commands"]):
            command = entry["command"]
            if command["kind"] == "place_order":
                _remember_exam(cur, _key(command["patient"]), command["accession"])


def _key(patient: dict[str, Any]) -> str:
    return f"{patient.get('issuer', '')}|{patient.get('id', '')}"


def _remember_exam(cur: Cursor, patient_key: str, accession: str) -> None:
    cur.execute(
        "INSERT INTO patient_exams (patient_key, accession) VALUES (?, ?) ON CONFLICT DO NOTHING",
        (patient_key, accession),
    )


def survivor_of(cur: Cursor, key: str) -> str:
    """The identity `key` lives on as today (itself when never merged)."""
    for _ in range(MAX_CHAIN):
        row = cur.execute("SELECT survivor_key FROM patient_links WHERE prior_key = ?", (key,)).fetchone()
        if row is None:
            return key
        key = str(row["survivor_key"])
    return key


def apply(cur: Cursor, message_id: int, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The message's command entries with merged ids resolved and merges fanned out."""
    result: list[dict[str, Any]] = []
    for entry in entries:
        command = entry["command"]
        if command["kind"] != MergePatients.kind and isinstance(command.get("patient"), dict):
            _resolve(cur, entry)
        result.append(entry)
        if command["kind"] == "place_order":
            _remember_exam(cur, _key(command["patient"]), command["accession"])
        elif command["kind"] == MergePatients.kind:
            result.extend(_merge(cur, message_id, entry))
    return result


def _resolve(cur: Cursor, entry: dict[str, Any]) -> None:
    command = entry["command"]
    key = _key(command["patient"])
    survivor = survivor_of(cur, key)
    if survivor == key:
        return
    issuer, _, patient_id = survivor.partition("|")
    command["patient"] = {**command["patient"], "id": patient_id, "issuer": issuer}
    command.setdefault("provenance", {}).setdefault("extra", {})["resolved_from_patient"] = key
    entry["workflow_id"] = workflow_id_for(command_from_dict(command))


def _merge(cur: Cursor, message_id: int, entry: dict[str, Any]) -> list[dict[str, Any]]:
    command = entry["command"]
    prior_key = _key(command["prior"])
    survivor_key = survivor_of(cur, _key(command["patient"]))
    if cur.execute("SELECT 1 FROM patient_links WHERE prior_key = ?", (prior_key,)).fetchone() is not None:
        return []  # a repeated merge (or one the patient aggregate will refuse): nothing moves twice
    if prior_key == survivor_key:
        return []
    cur.execute(
        "INSERT INTO patient_links (prior_key, survivor_key, how, message_id, linked_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (
            prior_key,
            survivor_key,
            command.get("how", "merge"),
            message_id,
            command["provenance"]["occurred_at"],
        ),
    )
    reason = f"patient {prior_key} {'merged into' if command.get('how') != 'identifier_change' else 'renamed to'} {survivor_key}"
    survivor = command["patient"]
    moved: list[dict[str, Any]] = []
    accessions = [
        str(row["accession"])
        for row in cur.execute(
            "SELECT accession FROM patient_exams WHERE patient_key = ? ORDER BY accession", (prior_key,)
        ).fetchall()
    ]
    for accession in accessions:
        _remember_exam(cur, survivor_key, accession)
        moved.append(
            {
                "workflow_id": f"exam-{accession}",
                "command": {
                    "kind": ChangeExamPatient.kind,
                    "provenance": copy.deepcopy(command["provenance"]),
                    "accession": accession,
                    "patient": dict(survivor),
                    "prior_key": prior_key,
                    "reason": reason,
                },
            }
        )
    cur.execute("DELETE FROM patient_exams WHERE patient_key = ?", (prior_key,))
    if _table_exists(cur, "dicom_studies"):
        studies = cur.execute(
            "SELECT study_instance_uid FROM dicom_studies WHERE patient_id = ? ORDER BY study_instance_uid",
            (command["prior"]["id"],),
        ).fetchall()
        for row in studies:
            uid = str(row["study_instance_uid"])
            moved.append(
                {
                    "workflow_id": f"study-{uid}",
                    "command": {
                        "kind": ChangeStudyPatient.kind,
                        "provenance": copy.deepcopy(command["provenance"]),
                        "study_instance_uid": uid,
                        "patient": dict(survivor),
                        "prior_key": prior_key,
                        "reason": reason,
                    },
                }
            )
    return moved


def links(db: Database) -> list[dict[str, Any]]:
    return db.query(
        "SELECT prior_key, survivor_key, how, message_id, linked_at FROM patient_links ORDER BY linked_at"
    )
