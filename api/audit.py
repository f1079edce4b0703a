"""The auditor's views: an exam's whole history (events with provenance, the raw messages that
caused them, outbound deliveries with their ACKs, the workflow's own history from Temporal, who
viewed the exam, and whether its hash chain still holds), as JSON, as a JSON download and as a
printable page; the access audit searched by patient, user, exam and time; DICOM associations.

Everything here reads: the event store, the logs in the messages database, the chain in the
projections database, Temporal's describe/history. Reading an exam's history is itself an access
to patient data and is recorded (`requires(..., audit="exam")`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.templating import Jinja2Templates
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from adapters.access_audit import AccessAudit
from adapters.event_store import EventStore
from adapters.mpps_log import PREFIX as MPPS_PREFIX
from adapters.outbound_log import OutboundLog
from adapters.sql import Database
from adapters.storage_log import PREFIX as BATCH_PREFIX
from api.authz import requires
from api.web import NAV, TEMPLATES, person_name, when
from domain.exam import exam_id
from domain.report import report_id
from domain.study import study_id
from projections.audit_chain import chain_links, chain_position, verify_chain

log = logging.getLogger(__name__)

HL7_PREFIX = "hl7:"
HISTORY_LIMIT = 2000  # Temporal history events listed; a long-lived exam continues as new anyway
TEMPORAL_TIMEOUT_S = 5.0
Accession = Annotated[str, Path(min_length=1, max_length=64)]


def _raw(value: Any) -> dict[str, str]:
    """Bytes exactly (base64) and as text for reading (HL7 segments on their own lines)."""
    data = bytes(value or b"")
    return {
        "base64": base64.b64encode(data).decode(),
        "text": data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n"),
    }


class ExamHistory:
    """Collects one exam's history from the store, the logs, the chain and Temporal."""

    def __init__(
        self,
        store: EventStore,
        projections_db: Database,
        messages_db: Database,
        access_audit: AccessAudit,
        connect: Callable[[], Awaitable[Client]],
    ) -> None:
        self.store = store
        self.projections_db = projections_db
        self.messages_db = messages_db
        self.outbound = OutboundLog(messages_db)
        self.access_audit = access_audit
        self.connect = connect

    def _study_uids(self, accession: str) -> list[str]:
        rows = self.messages_db.query(
            "SELECT study_instance_uid FROM dicom_studies WHERE accession = ? ORDER BY first_received_at",
            (accession,),
        )
        return [str(r["study_instance_uid"]) for r in rows]

    def events(self, accession: str) -> list[dict[str, Any]]:
        from api.app import event_json  # api.app includes this router: imported when called

        tagged: list[tuple[Any, str, str]] = [
            (e, "exam", str(exam_id(accession))) for e in self.store.events_of(exam_id(accession))
        ]
        if not tagged:
            return []
        tagged += [
            (e, "report", str(report_id(accession))) for e in self.store.events_of(report_id(accession))
        ]
        for uid in self._study_uids(accession):
            tagged += [(e, "study", str(study_id(uid))) for e in self.store.events_of(study_id(uid))]
        tagged.sort(key=lambda item: getattr(item[0], "timestamp"))  # noqa: B009 (not on the protocol)
        return [{**event_json(e), "aggregate": kind, "aggregate_id": agg} for e, kind, agg in tagged]

    def inbound(self, accession: str, events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        """The raw messages behind the events (by provenance id), and the HL7 messages naming
        the exam that caused none (refused, duplicates)."""
        hl7_ids: set[int] = set()
        mpps_ids: set[int] = set()
        batch_ids: set[int] = set()
        for event in events:
            message_id = str(event["source"].get("message_id") or "")
            for prefix, into in ((HL7_PREFIX, hl7_ids), (MPPS_PREFIX, mpps_ids), (BATCH_PREFIX, batch_ids)):
                tail = message_id.removeprefix(prefix)
                if message_id.startswith(prefix) and tail.isdigit():
                    into.add(int(tail))
        hl7_ids |= {
            int(r["id"])
            for r in self.messages_db.query(
                "SELECT id FROM hl7_messages WHERE accession = ? UNION "
                "SELECT message_id AS id FROM hl7_message_orders WHERE accession = ?",
                (accession, accession),
            )
        }
        mpps_ids |= {
            int(r["id"])
            for r in self.messages_db.query("SELECT id FROM mpps_messages WHERE accession = ?", (accession,))
        }
        return {
            "hl7": [self._hl7(row_id) for row_id in sorted(hl7_ids)],
            "mpps": [self._mpps(row_id) for row_id in sorted(mpps_ids)],
            "dicom_batches": [self._batch(row_id) for row_id in sorted(batch_ids)],
        }

    def _one(self, statement: str, row_id: int) -> dict[str, Any] | None:
        rows = self.messages_db.query(statement, (row_id,))
        return rows[0] if rows else None

    def _hl7(self, row_id: int) -> dict[str, Any]:
        row = self._one("SELECT * FROM hl7_messages WHERE id = ?", row_id)
        if row is None:
            return {"id": row_id, "missing": True}
        return {
            "id": row_id,
            "href": f"/api/hl7/messages/{row_id}",
            "received_at": row["received_at"],
            "peer": row["peer"],
            "sender": {"application": row["sending_application"], "facility": row["sending_facility"]},
            "message_type": row["message_type"],
            "control_id": row["control_id"],
            "status": row["status"],
            "ack_code": row["ack_code"],
            "acked_at": row.get("acked_at"),
            "applied": {
                "status": row["applied_status"],
                "reason": row["applied_reason"],
                "at": row["applied_at"],
            },
            "duplicate_of": row["duplicate_of"],
            "reprocess_of": row.get("reprocess_of"),
            "raw": _raw(row["raw"]),
            "ack": _raw(row["ack"]),
        }

    def _mpps(self, row_id: int) -> dict[str, Any]:
        row = self._one("SELECT * FROM mpps_messages WHERE id = ?", row_id)
        if row is None:
            return {"id": row_id, "missing": True}
        return {
            "id": row_id,
            "received_at": row["received_at"],
            "dimse": row["dimse"],
            "sop_instance_uid": row["sop_instance_uid"],
            "calling_ae": row["calling_ae"],
            "peer": row["peer"],
            "outcome": row["outcome"],
            "dimse_status": row["dimse_status"],
            "error_comment": row["error_comment"],
            "raw_dataset_base64": base64.b64encode(bytes(row["raw"] or b"")).decode(),
        }

    def _batch(self, row_id: int) -> dict[str, Any]:
        row = self._one("SELECT * FROM dicom_batches WHERE id = ?", row_id)
        if row is None:
            return {"id": row_id, "missing": True}
        instances = self.messages_db.query(
            "SELECT sop_instance_uid, sop_class_uid, series_instance_uid, received_at, calling_ae, association_id, "
            "size FROM dicom_instances WHERE batch_id = ? ORDER BY received_at, sop_instance_uid",
            (row_id,),
        )
        return {
            "id": row_id,
            "received_at": row["received_at"],
            "study_instance_uid": row["study_instance_uid"],
            "instances": instances,
            "applied": {
                "status": row["applied_status"],
                "reason": row["applied_reason"],
                "at": row["applied_at"],
            },
        }

    def deliveries(self, accession: str) -> list[dict[str, Any]]:
        rows = self.outbound.for_accession(accession)
        for row in rows:
            row["last_ack"] = _raw(
                row["last_ack"].encode() if isinstance(row["last_ack"], str) else row["last_ack"]
            )
            row["actions"] = self.outbound.actions(int(row["id"]))
        return rows

    def viewers(self, accession: str) -> list[dict[str, Any]]:
        return self.access_audit.search(accession=accession, limit=10_000)

    def chain(self, accession: str) -> dict[str, Any]:
        links = chain_links(self.projections_db, accession)
        broken = verify_chain(self.store, accession, links) if links else None
        return {
            "links": len(links),
            "head": links[-1]["hash"] if links else None,
            "intact": broken is None,
            "broken": broken.__dict__ if broken else None,
            "chain_position": chain_position(self.projections_db),
            "store_position": self.store.max_notification_id(),
        }

    async def workflow(self, accession: str) -> dict[str, Any]:
        """Temporal's own account; when Temporal does not answer, say so instead of failing."""
        workflow_id = f"exam-{accession}"
        try:
            client = await self.connect()
            handle = client.get_workflow_handle(workflow_id)
            described = await asyncio.wait_for(handle.describe(), TEMPORAL_TIMEOUT_S)
            history: list[dict[str, Any]] = []
            counts: dict[str, int] = {}

            async def read() -> None:
                async for event in handle.fetch_history_events():
                    name = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
                    counts[name] = counts.get(name, 0) + 1
                    if len(history) < HISTORY_LIMIT:
                        history.append(
                            {"id": event.event_id, "type": name, "time": _ts(event), **_detail(event)}
                        )

            await asyncio.wait_for(read(), TEMPORAL_TIMEOUT_S * 2)
        except Exception as error:  # unreachable, unknown workflow, timeout: the rest still stands
            return {
                "available": False,
                "workflow_id": workflow_id,
                "error": f"{type(error).__name__}: {str(error)[:300]}",
            }
        return {
            "available": True,
            "workflow_id": workflow_id,
            "run_id": described.run_id,
            "type": described.workflow_type,
            "status": described.status.name if described.status else None,
            "task_queue": described.task_queue,
            "started_at": described.start_time.isoformat() if described.start_time else None,
            "closed_at": described.close_time.isoformat() if described.close_time else None,
            "history_length": described.history_length,
            "event_counts": counts,
            "history": history,
            "history_truncated": sum(counts.values()) > len(history),
        }

    async def build(self, accession: str) -> dict[str, Any]:
        events = await asyncio.to_thread(self.events, accession)
        if not events:
            raise HTTPException(404, f"no exam with accession {accession}")
        inbound, deliveries, viewers, chain, workflow = await asyncio.gather(
            asyncio.to_thread(self.inbound, accession, events),
            asyncio.to_thread(self.deliveries, accession),
            asyncio.to_thread(self.viewers, accession),
            asyncio.to_thread(self.chain, accession),
            self.workflow(accession),
        )
        exam = self.projections_db.query("SELECT * FROM worklist WHERE accession = ?", (accession,))
        return {
            "accession": accession,
            "generated_at": datetime.now().astimezone().isoformat(),
            "exam": exam[0] if exam else None,
            "events": events,
            "inbound": inbound,
            "deliveries": deliveries,
            "workflow": workflow,
            "viewers": viewers,
            "chain": chain,
        }


def _ts(event: Any) -> str | None:
    return event.event_time.ToDatetime().isoformat() + "Z" if event.HasField("event_time") else None


def _detail(event: Any) -> dict[str, str]:
    """The name that says what a history event was about (signal, update, activity, timer)."""
    for field, attribute in (
        ("workflow_execution_signaled_event_attributes", "signal_name"),
        ("workflow_execution_update_accepted_event_attributes", None),
        ("activity_task_scheduled_event_attributes", None),
        ("timer_started_event_attributes", "timer_id"),
    ):
        if event.HasField(field):
            attrs = getattr(event, field)
            if field.startswith("activity"):
                return {"name": attrs.activity_type.name}
            if field.startswith("workflow_execution_update"):
                return {"name": attrs.accepted_request.input.name}
            return {"name": str(getattr(attrs, attribute or ""))}
    return {}


def audit_router(
    store: EventStore,
    projections_db: Database,
    messages_db: Database,
    access_audit: AccessAudit,
    connect: Callable[[], Awaitable[Client]],
) -> APIRouter:
    router = APIRouter(tags=["audit"])
    templates = Jinja2Templates(directory=TEMPLATES)
    templates.env.filters["when"] = when
    templates.env.filters["person"] = person_name
    templates.env.globals["nav"] = NAV
    history = ExamHistory(store, projections_db, messages_db, access_audit, connect)

    @router.get("/api/audit/exams/{accession}", dependencies=[Depends(requires("auditor", audit="exam"))])
    async def exam_history(
        accession: Accession,
        format: Annotated[Literal["json"] | None, Query(description="json: as a file download")] = None,
    ) -> JSONResponse:
        """Everything that happened to one exam, for an auditor (see the module docstring)."""
        body = await history.build(accession)
        headers = {}
        if format == "json":
            headers["Content-Disposition"] = f'attachment; filename="radflow-audit-{accession}.json"'
        return JSONResponse(json.loads(json.dumps(body, default=str)), headers=headers)

    @router.get(
        "/ui/audit/exams/{accession}",
        include_in_schema=False,
        dependencies=[Depends(requires("auditor", audit="exam"))],
    )
    async def exam_history_page(request: Request, accession: Accession) -> HTMLResponse:
        body = await history.build(accession)
        return templates.TemplateResponse(
            request, "audit_exam.html", {"h": body, "active": "", "user": _username(request)}
        )

    @router.get("/api/audit/access", dependencies=[Depends(requires("auditor", audit="access_audit"))])
    def access(
        patient: Annotated[str | None, Query(max_length=128, description="patient MRN")] = None,
        user: Annotated[str | None, Query(max_length=128)] = None,
        accession: Annotated[str | None, Query(max_length=64)] = None,
        since: Annotated[str | None, Query(max_length=40, description="ISO 8601, inclusive")] = None,
        until: Annotated[str | None, Query(max_length=40, description="ISO 8601, exclusive")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        after: Annotated[
            int | None, Query(ge=0, le=2**63 - 1, description="the `next` of the previous page")
        ] = None,
    ) -> dict[str, Any]:
        """Who read or changed what, oldest first, in keyset pages."""
        for name, value in (("since", since), ("until", until)):
            if value:
                try:
                    datetime.fromisoformat(value.replace("Z", "+00:00"))
                except ValueError as error:
                    raise HTTPException(422, f"{name}: not an ISO 8601 date or time: {value!r}") from error
        rows = access_audit.search(
            patient=patient,
            user=user,
            accession=accession,
            since=since,
            until=until,
            limit=limit,
            after_id=after,
        )
        return {"entries": rows, "next": rows[-1]["id"] if len(rows) == limit else None}

    @router.get("/api/audit/dicom", dependencies=[Depends(requires("auditor", audit="dicom_audit"))])
    def dicom(
        calling_ae: Annotated[str | None, Query(max_length=16)] = None,
        since: Annotated[str | None, Query(max_length=40)] = None,
        until: Annotated[str | None, Query(max_length=40)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        before: Annotated[
            int | None, Query(ge=0, le=2**63 - 1, description="the `next` of the previous page")
        ] = None,
    ) -> dict[str, Any]:
        """DICOM associations, newest first: calling AE, address, how it ended, the DIMSE requests
        exchanged, the instances it stored, the instances its retrieves (C-MOVE, C-GET) sent, and
        the stores refused."""
        filters, params = [], []
        for clause, value in (
            ("calling_ae = ?", calling_ae),
            ("started_at >= ?", since),
            ("started_at < ?", until),
            ("id < ?", before),
        ):
            if value is not None and value != "":
                filters.append(clause)
                params.append(value)
        where = f"WHERE {' AND '.join(filters)} " if filters else ""
        rows = messages_db.query(
            f"SELECT * FROM dicom_associations {where}ORDER BY id DESC LIMIT ?", [*params, limit]
        )
        for row in rows:
            row["exchanged"] = json.loads(row["exchanged"] or "{}")
            row["stored_instances"] = messages_db.query(
                "SELECT sop_instance_uid, sop_class_uid, study_instance_uid, series_instance_uid, received_at "
                "FROM dicom_instances WHERE association_id = ? ORDER BY received_at LIMIT 1000",
                (row["id"],),
            )
            row["retrieved_instances"] = messages_db.query(
                "SELECT operation, destination, study_instance_uid, sop_instance_uid, outcome, at "
                "FROM dicom_retrievals WHERE association_id = ? ORDER BY id LIMIT 1000",
                (row["id"],),
            )
            row["refused_stores"] = messages_db.query(
                "SELECT sop_instance_uid, sop_class_uid, status, reason, received_at "
                "FROM dicom_store_failures WHERE association_id = ? ORDER BY id LIMIT 1000",
                (row["id"],),
            )
        return {"associations": rows, "next": rows[-1]["id"] if len(rows) == limit else None}

    return router


def _username(request: Request) -> str:
    principal = (request.scope.get("state") or {}).get("principal")
    return str(getattr(principal, "username", ""))
