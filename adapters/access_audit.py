"""The access audit: one append-only row per HTTP read or change of patient data (HIPAA
§164.312(b), GDPR art. 30): who, when, what (route, accession, patient) and from where.

Rows hold identifiers only (user name, accession, MRN), never patient names or report text, so
the audit itself discloses nothing an auditor may not see. Append-only is enforced by the
database (triggers refuse UPDATE and DELETE), not only by this class having no such method.
DICOM associations are recorded by adapters/storage_log.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adapters.sql import Database

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS access_audit (
        id {id},
        at TEXT NOT NULL,
        username TEXT NOT NULL,
        roles TEXT NOT NULL,
        client TEXT NOT NULL,
        method TEXT NOT NULL,
        route TEXT NOT NULL,
        path TEXT NOT NULL,
        kind TEXT NOT NULL,
        accession TEXT,
        patient_key TEXT,
        status INTEGER NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX IF NOT EXISTS access_audit_by_patient ON access_audit (patient_key, id)",
    "CREATE INDEX IF NOT EXISTS access_audit_by_user ON access_audit (username, id)",
    "CREATE INDEX IF NOT EXISTS access_audit_by_accession ON access_audit (accession, id)",
    "CREATE INDEX IF NOT EXISTS access_audit_by_at ON access_audit (at, id)",
]
SQLITE_GUARDS = [
    f"""CREATE TRIGGER IF NOT EXISTS access_audit_no_{verb.lower()}
        BEFORE {verb} ON access_audit
        BEGIN SELECT RAISE(ABORT, 'access_audit is append-only'); END"""
    for verb in ("UPDATE", "DELETE")
]
POSTGRES_GUARDS = [
    """CREATE OR REPLACE FUNCTION access_audit_append_only() RETURNS trigger AS $$
        BEGIN RAISE EXCEPTION 'access_audit is append-only'; END $$ LANGUAGE plpgsql""",
    "DROP TRIGGER IF EXISTS access_audit_append_only ON access_audit",
    """CREATE TRIGGER access_audit_append_only BEFORE UPDATE OR DELETE ON access_audit
        FOR EACH ROW EXECUTE FUNCTION access_audit_append_only()""",
]
MAX_ID = 2**63 - 1  # SQLite and PostgreSQL integers stop here
COLUMNS = "id, at, username, roles, client, method, route, path, kind, accession, patient_key, status, detail"


@dataclass(frozen=True)
class AccessRecord:
    at: str
    username: str
    roles: str  # comma-separated, as the principal held them then
    client: str  # the peer address (host:port)
    method: str
    route: str  # the route template, e.g. /api/exams/{accession}
    path: str
    kind: str  # what was read or changed: exam, report, images, messages, patient, ...
    accession: str | None
    patient_key: str | None  # the patient's MRN where it was cheap to resolve
    status: int
    detail: str = ""


class AccessAudit:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create_schema(self) -> None:
        with self.db.serialised("schema:access_audit") as cur:
            for statement in SCHEMA:
                cur.execute(statement)
            for statement in POSTGRES_GUARDS if self.db.dialect == "postgres" else SQLITE_GUARDS:
                cur.execute(statement)

    def record(
        self,
        at: str,
        username: str,
        roles: str,
        client: str,
        method: str,
        route: str,
        path: str,
        kind: str,
        accession: str | None,
        patient_key: str | None,
        status: int,
        detail: str = "",
    ) -> None:
        self.db.execute(
            "INSERT INTO access_audit (at, username, roles, client, method, route, path, kind, accession, "
            "patient_key, status, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (at, username, roles, client, method, route, path, kind, accession, patient_key, status, detail),
        )

    def append(self, entry: AccessRecord) -> None:
        self.record(**vars(entry))

    def search(
        self,
        patient: str | None = None,
        user: str | None = None,
        accession: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 100,
        after_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Oldest first; page on with `after_id` = the last row's id. `since` / `until` are ISO
        instants (inclusive / exclusive)."""
        if after_id is not None and after_id >= MAX_ID:  # past any row (and beyond SQLite's integers)
            return []
        filters, params = [], []
        for clause, value in (
            ("patient_key = ?", patient),
            ("username = ?", user),
            ("accession = ?", accession),
            ("at >= ?", since),
            ("at < ?", until),
            ("id > ?", after_id),
        ):
            if value is not None and value != "":
                filters.append(clause)
                params.append(value)
        where = f"WHERE {' AND '.join(filters)}" if filters else ""
        return self.db.query(
            f"SELECT {COLUMNS} FROM access_audit {where} ORDER BY id LIMIT ?", [*params, int(limit)]
        )

    def count(self) -> int:
        return int(self.db.query("SELECT COUNT(*) AS n FROM access_audit")[0]["n"])
