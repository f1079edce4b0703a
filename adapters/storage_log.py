"""The storage log: every DICOM association, every instance stored (durable before its C-STORE
success), every store refused, and the batches that carry stored instances to workflows.

It lives in the database of the HL7 and MPPS logs: whether an accession was ordered, and for
which patient, is read from the HL7 log in the transaction that links a study to its exam.
Batches are an outbox of the relay like the other inbound logs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from adapters import message_log
from adapters.message_log import order_state, utcnow
from adapters.outbox import OutboxTable
from adapters.sql import Cursor, Database

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS dicom_associations (
        id {id},
        started_at TEXT NOT NULL,
        ended_at TEXT,
        calling_ae TEXT NOT NULL,
        called_ae TEXT NOT NULL,
        peer TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        stored BIGINT NOT NULL DEFAULT 0,
        refused BIGINT NOT NULL DEFAULT 0,
        exchanged TEXT NOT NULL DEFAULT '{{}}'
    )""",
    "CREATE INDEX IF NOT EXISTS dicom_associations_started ON dicom_associations (started_at)",
    # what a C-MOVE / C-GET sent, instance by instance, on the association that asked for it
    """CREATE TABLE IF NOT EXISTS dicom_retrievals (
        id {id},
        association_id BIGINT NOT NULL,
        at TEXT NOT NULL,
        operation TEXT NOT NULL,
        destination TEXT NOT NULL,
        study_instance_uid TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL,
        outcome TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS dicom_retrievals_association ON dicom_retrievals (association_id, id)",
    """CREATE TABLE IF NOT EXISTS dicom_instances (
        sop_instance_uid TEXT PRIMARY KEY,
        sop_class_uid TEXT NOT NULL,
        study_instance_uid TEXT NOT NULL,
        series_instance_uid TEXT NOT NULL,
        transfer_syntax TEXT NOT NULL,
        path TEXT NOT NULL,
        size BIGINT NOT NULL,
        received_at TEXT NOT NULL,
        calling_ae TEXT NOT NULL,
        association_id BIGINT NOT NULL,
        attributes TEXT NOT NULL,
        batch_id BIGINT
    )""",
    "CREATE INDEX IF NOT EXISTS dicom_instances_unbatched ON dicom_instances (association_id) WHERE batch_id IS NULL",
    "CREATE INDEX IF NOT EXISTS dicom_instances_study ON dicom_instances (study_instance_uid)",
    """CREATE TABLE IF NOT EXISTS dicom_store_failures (
        id {id},
        received_at TEXT NOT NULL,
        association_id BIGINT NOT NULL,
        calling_ae TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL,
        status INTEGER NOT NULL,
        reason TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS dicom_batches (
        id {id},
        received_at TEXT NOT NULL,
        study_instance_uid TEXT NOT NULL,
        accession TEXT,
        instances BIGINT NOT NULL,
        commands TEXT,
        relayed_at TEXT,
        relay_error TEXT,
        applied_status TEXT,
        applied_reason TEXT,
        applied_at TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS dicom_batches_unrelayed ON dicom_batches (id) WHERE relayed_at IS NULL",
    # one row per study: whether (and to which exam) it is linked, or why it waits
    """CREATE TABLE IF NOT EXISTS dicom_studies (
        study_instance_uid TEXT PRIMARY KEY,
        accession TEXT,
        patient_id TEXT NOT NULL,
        claimed_accession TEXT NOT NULL,
        first_received_at TEXT NOT NULL,
        queued_reason TEXT,
        linked_how TEXT,
        linked_by TEXT,
        linked_at TEXT
    )""",
]

PREFIX = "dicom-batch:"


@dataclass(frozen=True)
class StoredInstance:
    """What the storage SCP wrote, ready for the log: the file is already durable."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax: str
    path: str
    size: int
    received_at: str
    calling_ae: str
    association_id: int
    attributes: dict[str, Any]  # study / series / instance attributes (see StoreInstances)


def order_patient_id(cur: Cursor, accession: str) -> str | None:
    """The Patient ID the HL7 order for an accession named (the latest order message)."""
    row = cur.execute(
        "SELECT m.patient_id FROM hl7_message_orders o JOIN hl7_messages m ON m.id = o.message_id "
        "WHERE o.accession = ? AND o.command_kind = 'place_order' ORDER BY m.id DESC LIMIT 1",
        (accession,),
    ).fetchone()
    return None if row is None else (row["patient_id"] or "")


class StorageRecords:
    """The storage tables inside one open transaction."""

    def __init__(self, cur: Cursor) -> None:
        self.cur = cur

    def instance(self, sop_instance_uid: str) -> dict[str, Any] | None:
        return self.cur.execute(
            "SELECT * FROM dicom_instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
        ).fetchone()

    def study(self, study_instance_uid: str) -> dict[str, Any] | None:
        return self.cur.execute(
            "SELECT * FROM dicom_studies WHERE study_instance_uid = ?", (study_instance_uid,)
        ).fetchone()

    def order_state(self, accession: str) -> str | None:
        return order_state(self.cur, accession)

    def order_patient_id(self, accession: str) -> str | None:
        return order_patient_id(self.cur, accession)


class StorageLog(OutboxTable):
    outbox_table = "dicom_batches"
    outbox_ready = "commands IS NOT NULL"

    def __init__(self, db: Database) -> None:
        self.db = db

    def create_schema(self) -> None:
        # the HL7 log too, complete (columns, indexes, patient links): whether an accession
        # was ordered is read from it
        message_log.MessageLog(self.db).create_schema()
        self.db.create_tables(SCHEMA)

    @contextmanager
    def transaction(self) -> Iterator[StorageRecords]:
        # linking decisions read the HL7 log and write the study row: one at a time
        with self.db.serialised("radflow-storage") as cur:
            yield StorageRecords(cur)

    # --- associations -----------------------------------------------------------------------

    def association_opened(
        self, calling_ae: str, called_ae: str, peer: str, status: str, reason: str = ""
    ) -> int:
        with self.db.transaction() as cur:
            row = cur.execute(
                "INSERT INTO dicom_associations (started_at, calling_ae, called_ae, peer, status, reason, ended_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    utcnow(),
                    calling_ae,
                    called_ae,
                    peer,
                    status,
                    reason or None,
                    utcnow() if status == "rejected" else None,
                ),
            ).fetchone()
        assert row is not None
        return int(row["id"])

    def association_closed(self, association_id: int, status: str, exchanged: dict[str, int]) -> None:
        self.db.execute(
            "UPDATE dicom_associations SET ended_at = ?, status = ?, exchanged = ? WHERE id = ?",
            (utcnow(), status, json.dumps(exchanged, sort_keys=True), association_id),
        )

    def associations(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.db.query("SELECT * FROM dicom_associations ORDER BY id DESC LIMIT ?", (limit,))
        for row in rows:
            row["exchanged"] = json.loads(row["exchanged"] or "{}")
        return rows

    def record_retrieval(
        self, association_id: int, operation: str, destination: str, sent: list[tuple[str, str, str]]
    ) -> None:
        """The instances one retrieve sent (study UID, SOP instance UID, outcome), for the audit."""
        at = utcnow()
        with self.db.transaction() as cur:
            for study_uid, sop_uid, outcome in sent:
                cur.execute(
                    "INSERT INTO dicom_retrievals (association_id, at, operation, destination, "
                    "study_instance_uid, sop_instance_uid, outcome) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (association_id, at, operation, destination, study_uid, sop_uid, outcome),
                )

    # --- instances --------------------------------------------------------------------------

    def existing(self, sop_instance_uid: str) -> dict[str, Any] | None:
        rows = self.db.query("SELECT * FROM dicom_instances WHERE sop_instance_uid = ?", (sop_instance_uid,))
        return rows[0] if rows else None

    def record_instance(self, stored: StoredInstance) -> None:
        """Durable (synchronous=FULL on SQLite) before the C-STORE success goes out. A replaced
        duplicate takes the new row and waits for the next batch again."""
        with self.db.transaction() as cur:
            cur.execute(
                "INSERT INTO dicom_instances (sop_instance_uid, sop_class_uid, study_instance_uid, "
                "series_instance_uid, transfer_syntax, path, size, received_at, calling_ae, association_id, "
                "attributes, batch_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL) "
                "ON CONFLICT (sop_instance_uid) DO UPDATE SET sop_class_uid = excluded.sop_class_uid, "
                "study_instance_uid = excluded.study_instance_uid, series_instance_uid = excluded.series_instance_uid, "
                "transfer_syntax = excluded.transfer_syntax, path = excluded.path, size = excluded.size, "
                "received_at = excluded.received_at, calling_ae = excluded.calling_ae, "
                "association_id = excluded.association_id, attributes = excluded.attributes, batch_id = NULL",
                (
                    stored.sop_instance_uid,
                    stored.sop_class_uid,
                    stored.study_instance_uid,
                    stored.series_instance_uid,
                    stored.transfer_syntax,
                    stored.path,
                    stored.size,
                    stored.received_at,
                    stored.calling_ae,
                    stored.association_id,
                    json.dumps(stored.attributes, separators=(",", ":")),
                ),
            )
            cur.execute(
                "UPDATE dicom_associations SET stored = stored + 1 WHERE id = ?", (stored.association_id,)
            )

    def record_failure(
        self,
        association_id: int,
        calling_ae: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        status: int,
        reason: str,
    ) -> None:
        with self.db.transaction() as cur:
            cur.execute(
                "INSERT INTO dicom_store_failures (received_at, association_id, calling_ae, sop_class_uid, "
                "sop_instance_uid, status, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (utcnow(), association_id, calling_ae, sop_class_uid, sop_instance_uid, status, reason),
            )
            cur.execute("UPDATE dicom_associations SET refused = refused + 1 WHERE id = ?", (association_id,))

    def failures(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.db.query("SELECT * FROM dicom_store_failures ORDER BY id DESC LIMIT ?", (limit,))

    def durable(self, sop_instance_uids: list[str]) -> dict[str, dict[str, Any]]:
        """The instances held (their rows), for storage commitment and retrieval."""
        held: dict[str, dict[str, Any]] = {}
        for start in range(0, len(sop_instance_uids), 500):
            chunk = sop_instance_uids[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            for row in self.db.query(
                f"SELECT sop_instance_uid, sop_class_uid, path, size FROM dicom_instances "
                f"WHERE sop_instance_uid IN ({marks})",
                chunk,
            ):
                held[row["sop_instance_uid"]] = row
        return held

    def unbatched(
        self, cur: Cursor, association_id: int | None, older_than: str | None
    ) -> list[dict[str, Any]]:
        if association_id is not None:
            return cur.execute(
                "SELECT * FROM dicom_instances WHERE batch_id IS NULL AND association_id = ? ORDER BY received_at",
                (association_id,),
            ).fetchall()
        return cur.execute(
            "SELECT * FROM dicom_instances WHERE batch_id IS NULL AND received_at <= ? ORDER BY received_at",
            (older_than or utcnow(),),
        ).fetchall()

    # --- the workflow's side ----------------------------------------------------------------

    def record_outcome(
        self, message_id: str, status: str, reason: str, events: Sequence[dict[str, Any]] = ()
    ) -> None:
        """What applying a batch did; a batch its exam refused sends the study to reconciliation."""
        if not message_id.startswith(PREFIX):
            return
        row_id = int(message_id.removeprefix(PREFIX))
        with self.transaction() as records:
            records.cur.execute(
                "UPDATE dicom_batches SET applied_status = ?, applied_reason = ?, applied_at = ? WHERE id = ?",
                (status, reason or None, utcnow(), row_id),
            )
            if status != "refused":
                return
            row = records.cur.execute(
                "SELECT study_instance_uid FROM dicom_batches WHERE id = ?", (row_id,)
            ).fetchone()
            if row is not None:
                records.cur.execute(
                    "UPDATE dicom_studies SET accession = NULL, queued_reason = ?, linked_how = NULL, "
                    "linked_by = NULL, linked_at = NULL WHERE study_instance_uid = ?",
                    (f"refused by the exam: {reason}", row["study_instance_uid"]),
                )

    # --- reading ----------------------------------------------------------------------------

    def reconciliation(self, include_linked: bool = False) -> list[dict[str, Any]]:
        """Studies waiting for a person (oldest first), with what their instances say."""
        where = "WHERE s.queued_reason IS NOT NULL" + ("" if include_linked else " AND s.accession IS NULL")
        rows = self.db.query(
            "SELECT s.*, (SELECT COUNT(*) FROM dicom_instances i WHERE i.study_instance_uid = s.study_instance_uid) "
            "AS instances, (SELECT COUNT(DISTINCT series_instance_uid) FROM dicom_instances i "
            "WHERE i.study_instance_uid = s.study_instance_uid) AS series, "
            "(SELECT attributes FROM dicom_instances i WHERE i.study_instance_uid = s.study_instance_uid "
            "ORDER BY received_at DESC LIMIT 1) AS attributes "
            f"FROM dicom_studies s {where} ORDER BY s.first_received_at, s.study_instance_uid"
        )
        for row in rows:
            row["attributes"] = json.loads(row["attributes"] or "{}")
        return rows

    def batches_of(self, study_instance_uid: str) -> list[dict[str, Any]]:
        return self.db.query(
            "SELECT id, received_at, accession, instances, relayed_at, relay_error, applied_status, "
            "applied_reason FROM dicom_batches WHERE study_instance_uid = ? ORDER BY id",
            (study_instance_uid,),
        )
