"""The reading worklist and the report read model: what radiologists read from, built from the
Exam, Report and Study events like every projection (dropped and rebuilt from zero).

One `reading_exams` row per exam (the order as it stands, the exam state, when the modality
completed it, the turnaround target, the claim, the draft, the report status, the critical-result
chain) and one `reading_revisions` row per issued revision (preliminary, final, addendum,
correction). `reading_studies` only carries DICOM Body Part Examined from stored series over to
the exam the study is linked to.

Choices worth knowing:
- `turnaround_due_at` is completed_at + the target the ReportingRules give for the priority (the
  rules are a constructor argument). A ReportTurnaroundBreached event wins: its due time is the
  one the exam workflow enforced. Rebuilding under changed rules recomputes unbreached due times.
- `body_part`: the order carries none, so it is the first non-empty BodyPartExamined (0018,0015)
  of a series stored for the exam's study (linked by accession, or by the order's Study Instance
  UID); "" until such images arrive.
- Times that are compared in SQL (completed_at, claim_expires_at, due times) are stored as UTC
  ISO 8601, so string order is time order.
- An exam reported by an external system (ExamReported with a source other than "radflow", or an
  external preliminary) keeps that report's text: priors show it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, timedelta
from typing import Any

from adapters.reporting_config import ReportingRules
from adapters.sql import Cursor
from domain.exam import study_instance_uid
from domain.patient import patient_id
from domain.provenance import arrived_at, instant
from domain.report import report_id
from projections.worklist import STATE_AFTER

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS reading_exams (
        accession TEXT PRIMARY KEY,
        exam_id TEXT NOT NULL,
        report_id TEXT NOT NULL,
        patient_key TEXT NOT NULL,
        patient_ref TEXT NOT NULL,
        patient_id TEXT NOT NULL,
        patient_issuer TEXT NOT NULL,
        patient_name TEXT NOT NULL,
        procedure_code TEXT NOT NULL,
        procedure_text TEXT NOT NULL,
        modality TEXT NOT NULL,
        body_part TEXT NOT NULL,
        priority TEXT NOT NULL,
        priority_rank INTEGER NOT NULL,
        referring_physician TEXT NOT NULL,
        referring_service TEXT NOT NULL,
        study_instance_uid TEXT NOT NULL,
        state TEXT NOT NULL,
        ordered_at TEXT NOT NULL,
        completed_at TEXT,
        turnaround_due_at TEXT NOT NULL,
        turnaround_breached INTEGER NOT NULL,
        report_status TEXT NOT NULL,
        report_source TEXT NOT NULL,
        impression TEXT NOT NULL,
        external_report TEXT NOT NULL,
        claimed_by TEXT NOT NULL,
        claim_expires_at TEXT NOT NULL,
        draft_author TEXT NOT NULL,
        draft_sections TEXT NOT NULL,
        draft_saved_at TEXT NOT NULL,
        critical TEXT NOT NULL,
        critical_level INTEGER NOT NULL,
        critical_due_at TEXT NOT NULL,
        critical_detail TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS reading_exams_exam ON reading_exams (exam_id)",
    "CREATE UNIQUE INDEX IF NOT EXISTS reading_exams_report ON reading_exams (report_id)",
    # the worklist's order (STAT first, then oldest completed first) within a state
    "CREATE INDEX IF NOT EXISTS reading_exams_queue ON reading_exams "
    "(state, priority_rank, completed_at, accession)",
    "CREATE INDEX IF NOT EXISTS reading_exams_modality ON reading_exams (modality, state)",
    "CREATE INDEX IF NOT EXISTS reading_exams_body_part ON reading_exams (body_part, state)",
    "CREATE INDEX IF NOT EXISTS reading_exams_service ON reading_exams (referring_service, state)",
    "CREATE INDEX IF NOT EXISTS reading_exams_claimed ON reading_exams (claimed_by, state)",
    "CREATE INDEX IF NOT EXISTS reading_exams_patient ON reading_exams (patient_key, completed_at)",
    "CREATE INDEX IF NOT EXISTS reading_exams_patient_ref ON reading_exams (patient_ref)",
    "CREATE INDEX IF NOT EXISTS reading_exams_study ON reading_exams (study_instance_uid)",
    "CREATE INDEX IF NOT EXISTS reading_exams_critical ON reading_exams (critical, critical_due_at)",
    """CREATE TABLE IF NOT EXISTS reading_revisions (
        accession TEXT NOT NULL,
        revision INTEGER NOT NULL,
        kind TEXT NOT NULL,
        result_status TEXT NOT NULL,
        author TEXT NOT NULL,
        signed_at TEXT NOT NULL,
        critical INTEGER NOT NULL,
        sections TEXT NOT NULL,
        text TEXT NOT NULL,
        exam TEXT NOT NULL,
        PRIMARY KEY (accession, revision)
    )""",
    """CREATE TABLE IF NOT EXISTS reading_studies (
        study_instance_uid TEXT PRIMARY KEY,
        accession TEXT NOT NULL,
        body_part TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS reading_studies_accession ON reading_studies (accession)",
]

PRIORITY_RANKS = {"STAT": 0, "ASAP": 1}
# states the reading worklist lists with status=all: the modality finished, someone reads
READ_STATES = ("completed", "reported", "billed")
STATE_CHANGES = {**STATE_AFTER, "ExamScheduled": "scheduled", "AppointmentCancelled": "ordered"}
# what an order change may carry that this read model keeps under the same name
ORDER_COLUMNS = ("procedure_code", "procedure_text", "modality", "referring_physician", "study_instance_uid")
EXTERNAL_STATUS = {"P": "preliminary", "F": "final", "C": "final"}


def priority_rank(priority: str) -> int:
    return PRIORITY_RANKS.get((priority or "").upper(), 2)


def utc(iso: str) -> str:
    """An ISO 8601 time as UTC ISO 8601 (naive ones are taken as UTC); "" for none or garbage."""
    if not iso:
        return ""
    try:
        return instant(iso).astimezone(UTC).isoformat()
    except ValueError:
        return ""


def impression_of(text: str) -> str:
    """The IMPRESSION section of a plain-text report (as radflow renders it, or as an external
    system wrote it); the whole text when it has no such heading."""
    found = re.search(r"(?im)^\s*impression\s*:\s*(.*)", text or "", flags=re.DOTALL)
    if not found:
        return (text or "").strip()
    following = re.split(r"\n\s*\n[A-Z][A-Z ]+:", found.group(1), maxsplit=1)[0]
    return following.strip()


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class ReadingWorklistProjection:
    name = "reading_worklist"
    schema_version = 1
    schema: Sequence[str] = SCHEMA
    tables: Sequence[str] = ("reading_exams", "reading_revisions", "reading_studies")

    def __init__(self, rules: ReportingRules | None = None) -> None:
        self.rules = rules or ReportingRules()

    def handle(self, cur: Cursor, event: Any) -> None:
        kind = type(event).__name__
        at = event.timestamp.isoformat()
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(cur, event, at)
        elif kind in STATE_CHANGES:
            self._exam_update(cur, event, at, state=STATE_CHANGES[kind])

    # --- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _update(cur: Cursor, key: str, value: str, at: str, **columns: Any) -> None:
        assignments = "".join(f"{column} = ?, " for column in columns)
        cur.execute(
            f"UPDATE reading_exams SET {assignments}updated_at = ? WHERE {key} = ?",
            (*columns.values(), at, value),
        )

    def _exam_update(self, cur: Cursor, event: Any, at: str, **columns: Any) -> None:
        self._update(cur, "exam_id", str(event.originator_id), at, **columns)

    def _report_update(self, cur: Cursor, event: Any, at: str, **columns: Any) -> None:
        self._update(cur, "report_id", str(event.originator_id), at, **columns)

    def _exam_row(self, cur: Cursor, column: str, value: str) -> dict[str, Any] | None:
        return cur.execute(f"SELECT * FROM reading_exams WHERE {column} = ?", (value,)).fetchone()

    @staticmethod
    def _occurred(event: Any) -> str:
        provenance = getattr(event, "provenance", None) or {}
        return utc(str(provenance.get("occurred_at", ""))) or event.timestamp.astimezone(UTC).isoformat()

    # --- the exam -----------------------------------------------------------------------------

    def _on_ExamOrdered(self, cur: Cursor, event: Any, at: str) -> None:
        order, patient = event.order, event.order["patient"]
        key = f"{patient.get('issuer', '')}|{patient.get('id', '')}"
        # orders recorded before radflow assigned UIDs get the same derived one (as the worklist)
        study_uid = order.get("study_instance_uid", "") or study_instance_uid(event.accession)
        # images stored (and linked) before the order was recorded already said the body part
        found = cur.execute(
            "SELECT body_part FROM reading_studies WHERE body_part <> '' AND (accession = ? OR "
            "study_instance_uid = ?) ORDER BY study_instance_uid",
            (event.accession, study_uid),
        ).fetchone()
        priority = str(order.get("priority", "") or "ROUTINE").upper()
        cur.execute(
            "INSERT INTO reading_exams (accession, exam_id, report_id, patient_key, patient_ref, "
            "patient_id, patient_issuer, patient_name, procedure_code, procedure_text, modality, "
            "body_part, priority, priority_rank, referring_physician, referring_service, "
            "study_instance_uid, state, ordered_at, completed_at, turnaround_due_at, "
            "turnaround_breached, report_status, report_source, impression, external_report, "
            "claimed_by, claim_expires_at, draft_author, draft_sections, draft_saved_at, critical, "
            "critical_level, critical_due_at, critical_detail, updated_at) VALUES (?, ?, ?, ?, ?, "
            "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'ordered', ?, NULL, '', 0, '', '', '', '', '', '', "
            "'', '{{}}', '', '', 0, '', '{{}}', ?)",
            (
                event.accession,
                str(event.originator_id),
                str(report_id(event.accession)),
                key,
                str(patient_id(key)),
                patient.get("id", ""),
                patient.get("issuer", ""),
                patient.get("name", ""),
                order.get("procedure_code", ""),
                order.get("procedure_text", ""),
                str(order.get("modality", "")).upper(),
                found["body_part"] if found else "",
                priority,
                priority_rank(priority),
                order.get("referring_physician", ""),
                order.get("referring_service", ""),
                study_uid,
                at,
                at,
            ),
        )

    def _on_OrderModified(self, cur: Cursor, event: Any, at: str) -> None:
        changes = event.changes
        columns: dict[str, Any] = {c: changes[c] for c in ORDER_COLUMNS if c in changes}
        if "modality" in columns:
            columns["modality"] = str(columns["modality"]).upper()
        if "priority" in changes:
            columns["priority"] = str(changes["priority"]).upper()
            columns["priority_rank"] = priority_rank(changes["priority"])
        if columns:
            self._exam_update(cur, event, at, **columns)

    def _on_ExamPatientChanged(self, cur: Cursor, event: Any, at: str) -> None:
        """A merge moves the exam to the surviving identity: its priors become the survivor's."""
        patient = event.patient
        key = f"{patient.get('issuer', '')}|{patient.get('id', '')}"
        self._exam_update(
            cur,
            event,
            at,
            patient_key=key,
            patient_ref=str(patient_id(key)),
            patient_id=patient.get("id", ""),
            patient_issuer=patient.get("issuer", ""),
            patient_name=patient.get("name", ""),
        )

    def _on_PatientRegistered(self, cur: Cursor, event: Any, at: str) -> None:
        self._patient_named(cur, event, event.demographics, at)

    def _on_PatientUpdated(self, cur: Cursor, event: Any, at: str) -> None:
        self._patient_named(cur, event, event.changes, at)

    def _patient_named(self, cur: Cursor, event: Any, changes: dict[str, Any], at: str) -> None:
        if changes.get("name"):
            self._update(cur, "patient_ref", str(event.originator_id), at, patient_name=changes["name"])

    def _on_ExamCompleted(self, cur: Cursor, event: Any, at: str) -> None:
        """Shown: when the procedure ended (the completing command's time). The turnaround clock
        starts when radflow learned of it, as the workflow's timer does (domain arrived_at)."""
        completed = self._occurred(event)
        row = self._exam_row(cur, "exam_id", str(event.originator_id))
        if row is None:
            return
        target = self.rules.turnaround_for(row["priority"])
        start = utc(arrived_at(getattr(event, "provenance", None) or {})) or completed
        due = (instant(start) + timedelta(minutes=target)).isoformat() if target > 0 else ""
        self._exam_update(cur, event, at, state="completed", completed_at=completed, turnaround_due_at=due)

    def _on_ExamStateForced(self, cur: Cursor, event: Any, at: str) -> None:
        """Operations' correction (domain/lifecycle.py FORCED_TRANSITIONS): a forced completion
        starts the turnaround clock as a real one does."""
        if event.to_state == "completed":
            self._on_ExamCompleted(cur, event, at)
        else:
            self._exam_update(cur, event, at, state=event.to_state)

    def _on_ReportTurnaroundBreached(self, cur: Cursor, event: Any, at: str) -> None:
        self._exam_update(cur, event, at, turnaround_breached=1, turnaround_due_at=utc(event.due_at))

    def _on_ExamReported(self, cur: Cursor, event: Any, at: str) -> None:
        if getattr(event, "source", "") == "radflow":  # the Report's own events say the rest
            self._exam_update(cur, event, at, state="reported")
            return
        self._external(cur, event, at, state="reported")

    def _on_PreliminaryReportRecorded(self, cur: Cursor, event: Any, at: str) -> None:
        if getattr(event, "source", "") != "radflow":
            self._external(cur, event, at)

    def _external(self, cur: Cursor, event: Any, at: str, **columns: Any) -> None:
        """A report from elsewhere (inbound ORU). Version 1 ExamReported events carried no text:
        the status still counts, there is just nothing to show."""
        status = EXTERNAL_STATUS.get(str(getattr(event, "result_status", "F")).upper(), "final")
        if not event.text:
            self._exam_update(cur, event, at, **columns, report_status=status, report_source="external")
            return
        detail = {
            "text": event.text,
            "result_status": event.result_status,
            "author": event.author,
            "reported_at": event.reported_at or self._occurred(event),
        }
        self._exam_update(
            cur,
            event,
            at,
            **columns,
            report_status=status,
            report_source="external",
            impression=impression_of(event.text),
            external_report=_dumps(detail),
        )

    # --- images: body part --------------------------------------------------------------------

    def _on_StudyFirstStored(self, cur: Cursor, event: Any, at: str) -> None:
        cur.execute(
            "INSERT INTO reading_studies (study_instance_uid, accession, body_part) VALUES (?, '', '') "
            "ON CONFLICT (study_instance_uid) DO NOTHING",
            (event.study_instance_uid,),
        )

    def _on_InstancesStored(self, cur: Cursor, event: Any, at: str) -> None:
        body_part = next(
            (str(s.get("body_part", "")).strip().upper() for s in event.series if s.get("body_part")), ""
        )
        if not body_part:
            return
        cur.execute(
            "INSERT INTO reading_studies (study_instance_uid, accession, body_part) VALUES (?, '', ?) "
            "ON CONFLICT (study_instance_uid) DO UPDATE SET body_part = CASE WHEN "
            "reading_studies.body_part = '' THEN excluded.body_part ELSE reading_studies.body_part END",
            (event.study_instance_uid, body_part),
        )
        study = cur.execute(
            "SELECT accession, body_part FROM reading_studies WHERE study_instance_uid = ?",
            (event.study_instance_uid,),
        ).fetchone()
        assert study is not None
        cur.execute(
            "UPDATE reading_exams SET body_part = ?, updated_at = ? WHERE body_part = '' AND "
            "(accession = ? OR study_instance_uid = ?)",
            (study["body_part"], at, study["accession"], event.study_instance_uid),
        )

    def _on_StudyLinkedToExam(self, cur: Cursor, event: Any, at: str) -> None:
        cur.execute(
            "INSERT INTO reading_studies (study_instance_uid, accession, body_part) VALUES (?, ?, '') "
            "ON CONFLICT (study_instance_uid) DO UPDATE SET accession = excluded.accession",
            (event.study_instance_uid, event.accession),
        )
        study = cur.execute(
            "SELECT body_part FROM reading_studies WHERE study_instance_uid = ?", (event.study_instance_uid,)
        ).fetchone()
        if study and study["body_part"]:
            cur.execute(
                "UPDATE reading_exams SET body_part = ?, updated_at = ? WHERE accession = ? AND body_part = ''",
                (study["body_part"], at, event.accession),
            )

    # --- the report ---------------------------------------------------------------------------

    def _on_ReportOpened(self, cur: Cursor, event: Any, at: str) -> None:
        # the report id is derived from the accession, so the row already knows it; this keeps
        # a report whose id was made some other way findable all the same
        self._update(cur, "accession", event.accession, at, report_id=str(event.originator_id))

    def _on_ReadingClaimed(self, cur: Cursor, event: Any, at: str) -> None:
        self._report_update(
            cur, event, at, claimed_by=event.radiologist, claim_expires_at=utc(event.expires_at)
        )

    def _on_ReadingReleased(self, cur: Cursor, event: Any, at: str) -> None:
        self._report_update(cur, event, at, claimed_by="", claim_expires_at="")

    def _on_ReportDraftSaved(self, cur: Cursor, event: Any, at: str) -> None:
        cur.execute(
            "UPDATE reading_exams SET draft_author = ?, draft_sections = ?, draft_saved_at = ?, "
            "report_status = CASE WHEN report_status = '' THEN 'draft' ELSE report_status END, "
            "updated_at = ? WHERE report_id = ?",
            (event.author, _dumps(event.sections), self._occurred(event), at, str(event.originator_id)),
        )

    def _on_ReportIssued(self, cur: Cursor, event: Any, at: str) -> None:
        revision = event.revision
        row = self._exam_row(cur, "report_id", str(event.originator_id))
        if row is None:
            return
        kind = revision["kind"]
        sections = revision.get("sections", {})
        cur.execute(
            "INSERT INTO reading_revisions (accession, revision, kind, result_status, author, signed_at, "
            "critical, sections, text, exam) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (accession, revision) DO NOTHING",
            (
                row["accession"],
                int(revision["revision"]),
                kind,
                revision.get("result_status", ""),
                revision.get("author", ""),
                revision.get("signed_at", ""),
                1 if revision.get("critical") else 0,
                _dumps(sections),
                revision.get("text", ""),
                _dumps(revision.get("exam", {})),
            ),
        )
        columns: dict[str, Any] = {
            "report_status": "preliminary" if kind == "preliminary" else "final",
            "report_source": "radflow",
            "draft_author": "",
            "draft_sections": "{}",
            "draft_saved_at": "",
        }
        # an addendum adds to the impression it follows; the other kinds state it anew
        if kind != "addendum" or sections.get("impression"):
            columns["impression"] = sections.get("impression") or impression_of(revision.get("text", ""))
        if kind != "preliminary":  # signed: the reading is done
            columns.update(claimed_by="", claim_expires_at="")
        self._report_update(cur, event, at, **columns)

    def _critical(self, cur: Cursor, event: Any, at: str, detail: dict[str, Any], **columns: Any) -> None:
        row = self._exam_row(cur, "report_id", str(event.originator_id))
        if row is None:
            return
        merged = {**json.loads(row["critical_detail"] or "{}"), **detail}
        self._report_update(cur, event, at, critical_detail=_dumps(merged), **columns)

    def _on_CriticalResultFlagged(self, cur: Cursor, event: Any, at: str) -> None:
        due = utc(event.ack_due_at)
        contacts = [dict(c) for c in event.contacts]
        detail = {
            "revision": event.revision,
            "contacts": contacts,
            "contact": contacts[0] if contacts else {},
            "flagged_at": self._occurred(event),
            "acknowledged_by": "",
            "acknowledged_at": "",
            "note": "",
            "exhausted": False,
            "escalations": [],
        }
        self._critical(cur, event, at, detail, critical="awaiting", critical_level=0, critical_due_at=due)

    def _on_CriticalResultEscalated(self, cur: Cursor, event: Any, at: str) -> None:
        row = self._exam_row(cur, "report_id", str(event.originator_id))
        escalations = json.loads(row["critical_detail"]).get("escalations", []) if row else []
        step = {"level": event.level, "contact": dict(event.contact), "at": self._occurred(event)}
        self._critical(
            cur,
            event,
            at,
            {"contact": dict(event.contact), "escalations": [*escalations, step]},
            critical_level=event.level,
            critical_due_at=utc(event.ack_due_at),
        )

    def _on_CriticalResultAcknowledged(self, cur: Cursor, event: Any, at: str) -> None:
        detail = {"acknowledged_by": event.by, "acknowledged_at": self._occurred(event), "note": event.note}
        self._critical(cur, event, at, detail, critical="acknowledged", critical_due_at="")

    def _on_CriticalResultUnacknowledged(self, cur: Cursor, event: Any, at: str) -> None:
        self._critical(cur, event, at, {"exhausted": True}, critical_due_at="")
