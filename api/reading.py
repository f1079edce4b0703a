"""HTTP reads for radiologists and for systems that pull reports: the reading worklist, the report
of an exam (JSON, or plain text for a pull), and the report templates. All answered from the
reading_worklist projection (projections/reading_worklist.py) and the reporting rules; the
actions (claim, draft, sign) are in api/reporting.py."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse, Response

from adapters.reporting_config import ReportingRules
from adapters.sql import Database
from api.authz import EXAM_READERS, requires
from projections.reading_worklist import READ_STATES

PRIORS_PER_EXAM = 10
Filter = Annotated[str | None, Query(max_length=64)]


def _clean_filter(name: str, value: str | None) -> str:
    """A filter as compared: blanks trimmed; control characters refused (PostgreSQL rejects a
    NUL in text, and no code or name holds one)."""
    value = (value or "").strip()
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise HTTPException(422, f"{name}: control characters are not allowed")
    return value


def prefers_text(accept: str) -> bool:
    """True when the Accept header ranks text/plain above application/json (ties: JSON)."""
    ranks = {"text/plain": 0.0, "application/json": 0.0}
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        media = media.lower()
        if media in ranks:
            ranks[media] = max(ranks[media], q)
        elif media in ("*/*", "application/*"):
            ranks["application/json"] = max(ranks["application/json"], q)
    return ranks["text/plain"] > ranks["application/json"]


def _claim_active(row: dict[str, Any], now: str) -> bool:
    return bool(row["claimed_by"]) and row["claim_expires_at"] > now


def worklist_item(row: dict[str, Any], priors: list[dict[str, Any]], now: str) -> dict[str, Any]:
    return {
        "accession": row["accession"],
        "priority": row["priority"],
        "state": row["state"],
        "report_status": row["report_status"],
        "patient": {"id": row["patient_id"], "issuer": row["patient_issuer"], "name": row["patient_name"]},
        "procedure": {"code": row["procedure_code"], "text": row["procedure_text"]},
        "modality": row["modality"],
        "body_part": row["body_part"],
        "referring_physician": row["referring_physician"],
        "referring_service": row["referring_service"],
        "completed_at": row["completed_at"],
        "claimed_by": row["claimed_by"],
        "claim_expires_at": row["claim_expires_at"],
        "claim_active": _claim_active(row, now),
        "turnaround_due_at": row["turnaround_due_at"],
        "turnaround_breached": bool(row["turnaround_breached"]),
        "critical": row["critical"],
        "critical_level": int(row["critical_level"]),
        "critical_due_at": row["critical_due_at"],
        "priors": priors,
    }


def prior_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "exam",
        "accession": row["accession"],
        "procedure": {"code": row["procedure_code"], "text": row["procedure_text"]},
        "modality": row["modality"],
        "body_part": row["body_part"],
        "completed_at": row["completed_at"],
        "state": row["state"],
        "report_status": row["report_status"],
        "impression": row["impression"],
    }


def priors_of(db: Database, rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each row's priors (same patient, after merges; completed before it; newest first), in
    one query for the whole page."""
    keys = sorted({row["patient_key"] for row in rows})
    if not keys:
        return {}
    marks = ", ".join("?" for _ in keys)
    candidates = db.query(
        f"SELECT * FROM reading_exams WHERE patient_key IN ({marks}) AND completed_at IS NOT NULL "
        "ORDER BY completed_at DESC, accession",
        keys,
    )
    studies = stored_only_studies(db, sorted({row["patient_id"] for row in rows}))
    result: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        mine = [
            prior_json(c)
            for c in candidates
            if c["patient_key"] == row["patient_key"]
            and c["accession"] != row["accession"]
            and (row["completed_at"] is None or c["completed_at"] < row["completed_at"])
        ]
        mine += [
            s
            for s in studies
            if s["patient_id"] == row["patient_id"]
            and (row["completed_at"] is None or s["completed_at"] < row["completed_at"])
        ]
        mine.sort(key=lambda prior: prior["completed_at"] or "", reverse=True)
        result[row["accession"]] = mine[:PRIORS_PER_EXAM]
    return result


def stored_only_studies(db: Database, patient_ids: list[str]) -> list[dict[str, Any]]:
    """Studies the PACS holds for these patient ids that belong to no exam here (images
    imported or sent before radflow took the orders): priors too, shown by their DICOM
    description and study date. Matched on Patient ID alone: DICOM carries no issuer here."""
    if not patient_ids:
        return []
    marks = ", ".join("?" for _ in patient_ids)
    try:
        found = db.query(
            "SELECT study_instance_uid, patient_id, accession_number, study_date, study_time, "
            f"study_description, modalities FROM pacs_studies WHERE patient_id IN ({marks}) "
            "AND linked_accession = '' ORDER BY study_date DESC",
            patient_ids,
        )
    except (sqlite3.OperationalError, psycopg.errors.UndefinedTable):  # no PACS index in this database
        return []
    return [
        {
            "kind": "study",
            "accession": s["accession_number"],
            "study_instance_uid": s["study_instance_uid"],
            "patient_id": s["patient_id"],
            "procedure": {"code": "", "text": s["study_description"]},
            "modality": s["modalities"],
            "body_part": "",
            "completed_at": _study_moment(s["study_date"], s["study_time"]),
            "state": "stored",
            "report_status": "",
            "impression": "",
        }
        for s in found
    ]


def _study_moment(date: str, time: str) -> str:
    """DICOM DA/TM as ISO 8601 (UTC assumed, as elsewhere in the reading list), "" without a date."""
    if len(date) != 8 or not date.isdigit():
        return ""
    clock = (time or "000000").split(".")[0].ljust(6, "0")[:6]
    return f"{date[:4]}-{date[4:6]}-{date[6:]}T{clock[:2]}:{clock[2:4]}:{clock[4:6]}+00:00"


def revision_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "revision": int(row["revision"]),
        "kind": row["kind"],
        "result_status": row["result_status"],
        "sections": json.loads(row["sections"]),
        "text": row["text"],
        "author": row["author"],
        "signed_at": row["signed_at"],
        "critical": bool(row["critical"]),
        "exam": json.loads(row["exam"]),
    }


def report_text(row: dict[str, Any], revisions: list[dict[str, Any]]) -> str | None:
    """The report as a pulling system reads it: the final (else the latest preliminary), then
    every addendum and correction after it in signing order; an external report as it came.
    None when nothing was issued."""
    header = [
        f"Accession: {row['accession']}",
        f"Patient: {row['patient_name']} ({row['patient_id']}^^^{row['patient_issuer']})",
        f"Procedure: {row['procedure_code']} {row['procedure_text']}".rstrip(),
    ]
    finals = [r for r in revisions if r["kind"] == "final"]
    if finals:
        first = finals[0]
        body = [
            f"FINAL REPORT (revision {first['revision']}) signed by {first['author']} at {first['signed_at']}"
        ]
        body.append(first["text"])
        for later in revisions:
            if later["revision"] > first["revision"] and later["kind"] in ("addendum", "correction"):
                body.append(
                    f"{later['kind'].upper()} (revision {later['revision']}) signed by "
                    f"{later['author']} at {later['signed_at']}"
                )
                body.append(later["text"])
        return "\n".join(header) + "\n\n" + "\n\n".join(body) + "\n"
    preliminaries = [r for r in revisions if r["kind"] == "preliminary"]
    if preliminaries:
        last = preliminaries[-1]
        title = f"PRELIMINARY REPORT (revision {last['revision']}) by {last['author']} at {last['signed_at']}"
        return "\n".join(header) + "\n\n" + title + "\n" + last["text"] + "\n"
    external = json.loads(row["external_report"] or "{}")
    if external:
        status = {"P": "PRELIMINARY", "C": "CORRECTED"}.get(
            str(external.get("result_status", "")).upper(), "FINAL"
        )
        title = (
            f"{status} REPORT (external) by {external.get('author', '')} at {external.get('reported_at', '')}"
        )
        return "\n".join(header) + "\n\n" + title + "\n" + str(external.get("text", "")) + "\n"
    return None


def reading_router(
    db: Database,
    rules: Callable[[], ReportingRules],
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> APIRouter:
    router = APIRouter(tags=["reading"])
    worklist_reader = [Depends(requires(*EXAM_READERS, audit="worklist"))]
    report_reader = [Depends(requires(*EXAM_READERS, audit="report"))]

    def now() -> str:
        return clock().astimezone(UTC).isoformat()

    @router.get("/api/reading/worklist", dependencies=worklist_reader)
    def reading_worklist(
        modality: Filter = None,
        body_part: Filter = None,
        service: Annotated[str | None, Query(max_length=64, description="referring service (PV1-10)")] = None,
        radiologist: Annotated[str | None, Query(max_length=64, description="who holds a live claim")] = None,
        status: Annotated[
            Literal["awaiting", "all"],
            Query(description="awaiting: completed, no final report yet; all: every performed exam"),
        ] = "awaiting",
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> dict[str, Any]:
        """Exams to read, STAT first, then ASAP, then the rest; oldest completed first within a
        priority. Each with its claim, turnaround, critical state and the patient's priors."""
        at = now()
        if status == "awaiting":
            filters, params = ["state = 'completed'", "report_status <> 'final'"], []
        else:
            filters, params = [f"state IN ({', '.join('?' for _ in READ_STATES)})"], list(READ_STATES)
        for column, value in (
            ("modality", _clean_filter("modality", modality).upper()),
            ("body_part", _clean_filter("body_part", body_part).upper()),
            ("referring_service", _clean_filter("service", service)),
        ):
            if value:
                filters.append(f"{column} = ?")
                params.append(value)
        who = _clean_filter("radiologist", radiologist)
        if who:
            filters.append("claimed_by = ? AND claim_expires_at > ?")
            params += [who, at]
        rows = db.query(
            f"SELECT * FROM reading_exams WHERE {' AND '.join(filters)} "
            "ORDER BY priority_rank, completed_at, accession LIMIT ?",
            [*params, limit],
        )
        priors = priors_of(db, rows)
        return {"items": [worklist_item(r, priors[r["accession"]], at) for r in rows], "count": len(rows)}

    @router.get("/api/reading/critical", dependencies=report_reader)
    def critical_results(
        state: Annotated[
            Literal["awaiting", "acknowledged"],
            Query(description="awaiting: nobody acknowledged yet (escalating or exhausted)"),
        ] = "awaiting",
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> dict[str, Any]:
        """Critical results and who must acknowledge them now: the desk's list. Awaiting ones
        soonest-due first; a chain that ran out of contacts (no due time) comes first of all."""
        rows = db.query(
            "SELECT * FROM reading_exams WHERE critical = ? ORDER BY critical_due_at, accession LIMIT ?",
            (state, limit),
        )
        items = []
        for row in rows:
            detail = json.loads(row["critical_detail"] or "{}")
            items.append(
                {
                    "accession": row["accession"],
                    "patient": {
                        "id": row["patient_id"],
                        "issuer": row["patient_issuer"],
                        "name": row["patient_name"],
                    },
                    "procedure": {"code": row["procedure_code"], "text": row["procedure_text"]},
                    "state": row["critical"],
                    "level": row["critical_level"],
                    "contact": detail.get("contact", {}),
                    "ack_due_at": row["critical_due_at"],
                    "exhausted": bool(detail.get("exhausted")),
                    "flagged_at": detail.get("flagged_at", ""),
                    "escalations": detail.get("escalations", []),
                    "acknowledged_by": detail.get("acknowledged_by", ""),
                }
            )
        return {"items": items, "count": len(items)}

    @router.get(
        "/api/exams/{accession}/report",
        dependencies=report_reader,
        response_model=None,
        responses={200: {"content": {"application/json": {}, "text/plain": {}}}},
    )
    def exam_report(
        accession: str,
        request: Request,
        format: Annotated[Literal["json", "text"] | None, Query()] = None,  # noqa: A002
    ) -> Response | dict[str, Any]:
        """The report of an exam. JSON: status, claim, draft, every revision, the critical-result
        chain and the template. Plain text (`?format=text` or `Accept: text/plain`): the final
        report followed by its addenda and corrections; 404 until a report was issued."""
        found = db.query("SELECT * FROM reading_exams WHERE accession = ?", (accession,))
        if not found:
            raise HTTPException(404, f"no exam with accession {accession}")
        row = found[0]
        revisions = [
            revision_json(r)
            for r in db.query(
                "SELECT * FROM reading_revisions WHERE accession = ? ORDER BY revision", (accession,)
            )
        ]
        as_text = format == "text" or (format is None and prefers_text(request.headers.get("accept", "")))
        if as_text:
            text = report_text(row, revisions)
            if text is None:
                raise HTTPException(404, f"no report issued for exam {accession} yet")
            return PlainTextResponse(text)
        at = now()
        draft = json.loads(row["draft_sections"] or "{}")
        critical = json.loads(row["critical_detail"] or "{}")
        external = json.loads(row["external_report"] or "{}")
        return {
            "accession": accession,
            "exam_state": row["state"],
            "status": row["report_status"],
            "source": row["report_source"],
            "priority": row["priority"],
            "patient": {
                "id": row["patient_id"],
                "issuer": row["patient_issuer"],
                "name": row["patient_name"],
            },
            "procedure": {"code": row["procedure_code"], "text": row["procedure_text"]},
            "modality": row["modality"],
            "body_part": row["body_part"],
            "referring_physician": row["referring_physician"],
            "referring_service": row["referring_service"],
            "completed_at": row["completed_at"],
            "turnaround_due_at": row["turnaround_due_at"],
            "turnaround_breached": bool(row["turnaround_breached"]),
            "claimed_by": row["claimed_by"],
            "claim_expires_at": row["claim_expires_at"],
            "claim_active": _claim_active(row, at),
            "draft": {"author": row["draft_author"], "sections": draft, "saved_at": row["draft_saved_at"]}
            if row["draft_author"]
            else None,
            "revisions": revisions,
            "impression": row["impression"],
            "critical": {
                **critical,
                "state": row["critical"],
                "level": int(row["critical_level"]),
                "ack_due_at": row["critical_due_at"],
            }
            if row["critical"]
            else None,
            "external": external or None,
            "template": rules().template_for(row["procedure_code"]),
            "priors": priors_of(db, [row])[accession],
        }

    @router.get("/api/reporting/templates/{procedure_code}", dependencies=[Depends(requires(*EXAM_READERS))])
    def report_template(procedure_code: str) -> dict[str, Any]:
        """Every report section for the procedure, pre-filled where the configuration has text;
        `configured` says whether reporting.yaml has a template for it."""
        current = rules()
        return {
            "procedure_code": procedure_code,
            "configured": procedure_code in current.templates,
            "sections": current.template_for(procedure_code),
        }

    return router
