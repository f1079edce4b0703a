"""The HTTP API: exams from the worklist projection, histories from the event store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from temporalio.client import Client

from adapters.access_audit import AccessAudit
from adapters.commitment_log import CommitmentLog
from adapters.event_store import EventStore, open_event_store
from adapters.message_log import MessageLog
from adapters.mpps_log import MppsLog
from adapters.ops_actions import OpsActions
from adapters.ops_config import load_ops_rules
from adapters.outbound_log import OutboundLog
from adapters.reporting_config import load_reporting_rules
from adapters.settings import Settings
from adapters.sql import Database
from adapters.storage_log import StorageLog
from api.audit import audit_router
from api.auth import install as install_auth
from api.authz import (
    EXAM_READERS,
    IMAGING_STAFF,
    AccessAuditMiddleware,
    loopback_only,
    requires,
    undeclared_routes,
)
from api.exam_deliveries import exam_deliveries_router
from api.hl7_mapping import hl7_mapping_router
from api.hl7_messages import hl7_messages_router
from api.hl7_outbound import hl7_outbound_router
from api.metrics import RadflowCollector, metrics_router
from api.ops import OpsContext, ops_pages_router, ops_router
from api.reading import reading_router
from api.reconciliation import reconciliation_router
from api.reporting import reporting_router
from api.web import web_router
from domain.exam import exam_id
from domain.report import report_id
from interfaces.hl7.channels import load_channels
from projections.audit_chain import AuditChainProjection
from projections.pacs_index import PacsIndexProjection
from projections.reading_worklist import ReadingWorklistProjection
from projections.runner import ProjectionRunner
from projections.worklist import PRIORITY_RANK, WorklistProjection

EXAM_STATES = (
    "ordered",
    "scheduled",
    "in_progress",
    "completed",
    "reported",
    "billed",
    "cancelled",
    "discontinued",
)


def exam_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "accession": row["accession"],
        "state": row["state"],
        "priority": row["priority"],
        "patient": {"id": row["patient_id"], "issuer": row["patient_issuer"], "name": row["patient_name"]},
        "procedure": {"code": row["procedure_code"], "text": row["procedure_text"]},
        "modality": row["modality"],
        "scheduled_at": row["scheduled_at"],
        "ordered_at": row["ordered_at"],
        "updated_at": row["updated_at"],
        "requested_procedure_id": row["requested_procedure_id"],
        "study_instance_uid": row["study_instance_uid"] or None,
        "placer_order_number": row["placer_order_number"],
        "filler_order_number": row["filler_order_number"],
    }


def event_json(event: Any) -> dict[str, Any]:
    attributes = dict(vars(event))
    provenance = attributes.pop("provenance", {}) or {}
    for key in ("timestamp", "originator_id", "originator_topic", "originator_version"):
        attributes.pop(key, None)
    return {
        "type": type(event).__name__,
        "version": event.originator_version,
        "occurred_at": provenance.get("occurred_at"),
        "recorded_at": event.timestamp.isoformat(),
        "actor": provenance.get("actor"),
        "source": provenance.get("source", {}),
        "message_href": _message_href(provenance.get("source", {}).get("message_id", "")),
        "context": provenance.get("extra", {}),  # e.g. the reason a person gave for a link
        "schema_version": provenance.get("schema_version"),
        "data": attributes,
    }


def _message_href(message_id: str) -> str | None:
    """An event caused by an HL7 message links back to it in the message browser."""
    return f"/api/hl7/messages/{message_id.removeprefix('hl7:')}" if message_id.startswith("hl7:") else None


async def _port_open(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


def _dicom_answers(host: str, port: int, called_ae: str) -> bool:
    """A C-ECHO, not a bare TCP connect: pynetdicom keeps a connection that never sends an
    A-ASSOCIATE-RQ as an association for its 30 s ACSE timeout, so a monitor probing the port
    every second held ~30 of the AE's association slots and modalities got A-ASSOCIATE-RJ. A
    rejection (an allow-list without this caller) still proves the AE is serving."""
    ae = AE(ae_title="RADFLOW-HEALTH")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 2
    assoc = ae.associate(host, port, ae_title=called_ae)
    if assoc.is_rejected:
        return True
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return "Status" in status and int(status.Status) == 0
    finally:
        assoc.release()


def _outbound_log(db: Database) -> OutboundLog:
    outbound = OutboundLog(db)
    outbound.create_schema()
    return outbound


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """An app stopped gives its database connections back (tests start many apps in one
    process, and PostgreSQL counts every pool's connections against its limit)."""
    yield
    for close in getattr(app.state, "closers", []):
        close()


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        lifespan=_lifespan,
        title="radflow",
        summary="Radiology information and picture archiving: exams, worklists and histories.",
        version="0.1.0",
    )
    store: EventStore = open_event_store(settings, create_table=not settings.uses_postgres)
    projections_db = Database.for_file(settings, settings.projections_sqlite_path)
    worklist = ProjectionRunner(store, projections_db, WorklistProjection())
    worklist.create_schema()
    ProjectionRunner(store, projections_db, PacsIndexProjection()).create_schema()
    ProjectionRunner(store, projections_db, ReadingWorklistProjection()).create_schema()
    mpps_log = MppsLog(Database.for_file(settings, settings.messages_sqlite_path))
    mpps_log.create_schema()
    storage_log = StorageLog(mpps_log.db)
    storage_log.create_schema()
    commitment_log = CommitmentLog(storage_log.db)
    commitment_log.create_schema()
    app.state.closers = [projections_db.close, mpps_log.db.close, store.close]

    def patient_of(accession: str) -> str | None:
        rows = projections_db.query("SELECT patient_id FROM worklist WHERE accession = ?", (accession,))
        return str(rows[0]["patient_id"]) if rows else None

    install_auth(app, settings, mpps_log.db, patient_of)  # app.state.gate, /api/auth, /api/users
    app.add_middleware(AccessAuditMiddleware)
    app.include_router(reconciliation_router(mpps_log, storage_log))
    app.include_router(
        hl7_messages_router(
            MessageLog(mpps_log.db), store, channels=lambda: load_channels(settings.hl7_config_dir)
        )
    )
    app.include_router(hl7_outbound_router(_outbound_log(mpps_log.db)))
    app.include_router(exam_deliveries_router(OutboundLog(mpps_log.db)))
    app.include_router(hl7_mapping_router(settings))
    app.include_router(reading_router(projections_db, lambda: load_reporting_rules(settings.hl7_config_dir)))
    temporal: dict[str, Client] = {}

    async def temporal_client() -> Client:
        """One client for the app, connected on first use (the API starts before Temporal)."""
        if "client" not in temporal:
            temporal["client"] = await asyncio.wait_for(
                Client.connect(settings.temporal_target, namespace=settings.temporal_namespace), 2.0
            )
        return temporal["client"]

    app.include_router(reporting_router(temporal_client, projections_db))
    app.include_router(web_router(projections_db, store))  # the pages people use: /ui/...
    # operations: stuck exams, actions, projections (api/ops.py); /metrics (loopback only)
    OpsActions(mpps_log.db).create_schema()
    ops_context = OpsContext(
        store=store,
        projections_db=projections_db,
        messages_db=mpps_log.db,
        connect=temporal_client,
        task_queue=settings.task_queue,
        rules=lambda: load_ops_rules(settings.hl7_config_dir),
        reporting=lambda: load_reporting_rules(settings.hl7_config_dir),
        images_timeout_s=settings.images_timeout_s,
    )
    app.include_router(ops_router(ops_context))
    app.include_router(ops_pages_router(ops_context))
    app.include_router(metrics_router(RadflowCollector(mpps_log.db, projections_db, store.max_notification_id)))
    # the auditor's exam history, access and DICOM audit (api/audit.py); the chain is the worker's
    ProjectionRunner(store, projections_db, AuditChainProjection(store)).create_schema()
    app.include_router(audit_router(store, projections_db, mpps_log.db, AccessAudit(mpps_log.db), temporal_client))

    @app.get("/healthz", tags=["operations"], dependencies=[Depends(loopback_only)])
    async def healthz() -> JSONResponse:
        """200 only when the store, Temporal and both listeners answer; detail per part."""
        parts: dict[str, dict[str, Any]] = {}
        try:
            lag = await asyncio.to_thread(worklist.lag)
            parts["store"] = {"ok": True, "worklist_lag": lag}
        except Exception as error:
            parts["store"] = {"ok": False, "error": str(error)[:200]}
        try:
            client = await temporal_client()
            await asyncio.wait_for(client.service_client.check_health(), 2.0)
            parts["temporal"] = {"ok": True, "address": settings.temporal_target}
        except Exception as error:
            temporal.pop("client", None)
            parts["temporal"] = {
                "ok": False,
                "address": settings.temporal_target,
                "error": str(error)[:200] or type(error).__name__,
            }
        parts["mllp"] = {"ok": await _port_open(settings.bind_host, settings.mllp_port), "port": settings.mllp_port}
        dicom_ok = await asyncio.to_thread(_dicom_answers, settings.bind_host, settings.dicom_port, settings.ae_title)
        parts["dicom"] = {"ok": dicom_ok, "port": settings.dicom_port, "check": "C-ECHO"}
        healthy = all(part["ok"] for part in parts.values())
        return JSONResponse(
            {"status": "ok" if healthy else "degraded", "parts": parts}, status_code=200 if healthy else 503
        )

    @app.get("/api/studies", tags=["pacs"], dependencies=[Depends(requires(*IMAGING_STAFF, audit="images"))])
    def list_studies(
        patient_id: str | None = None,
        accession: Annotated[str | None, Query(description="the exam a study is linked to")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,  # bounded: SQLite takes 64-bit integers only
    ) -> dict[str, Any]:
        """Stored studies from the PACS index, newest first: a patient's priors are one call."""
        filters, params = [], []
        for column, value in (("patient_id", patient_id), ("linked_accession", accession)):
            if value:
                filters.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(filters)}" if filters else ""
        total = projections_db.query(f"SELECT COUNT(*) AS n FROM pacs_studies {where}", params)[0]["n"]
        rows = projections_db.query(
            f"SELECT * FROM pacs_studies {where} ORDER BY study_date DESC, first_stored_at DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return {"studies": rows, "total": int(total), "limit": limit, "offset": offset}

    @app.get(
        "/api/studies/{study_instance_uid}",
        tags=["pacs"],
        dependencies=[Depends(requires(*IMAGING_STAFF, audit="images"))],
    )
    def get_study(study_instance_uid: str) -> dict[str, Any]:
        rows = projections_db.query(
            "SELECT * FROM pacs_studies WHERE study_instance_uid = ?", (study_instance_uid,)
        )
        if not rows:
            raise HTTPException(404, f"no stored study {study_instance_uid}")
        series = projections_db.query(
            "SELECT * FROM pacs_series WHERE study_instance_uid = ? ORDER BY series_number, series_instance_uid",
            (study_instance_uid,),
        )
        return {**rows[0], "series": series, "batches": storage_log.batches_of(study_instance_uid)}

    @app.get("/api/dicom/associations", tags=["operations"], dependencies=[Depends(requires(*IMAGING_STAFF))])
    def list_associations(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
        """Every DICOM association, newest first: who called, from where, what was exchanged."""
        return {"associations": storage_log.associations(limit)}

    @app.get(
        "/api/dicom/store-failures",
        tags=["operations"],
        dependencies=[Depends(requires(*IMAGING_STAFF, audit="images"))],
    )
    def list_store_failures(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
        """C-STOREs answered with a failure status, newest first, with the reason given."""
        return {"failures": storage_log.failures(limit)}

    @app.get(
        "/api/dicom/commitments",
        tags=["operations"],
        dependencies=[Depends(requires(*IMAGING_STAFF, audit="images"))],
    )
    def list_commitments(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        undelivered: Annotated[bool, Query(description="only reports not yet delivered")] = False,
    ) -> dict[str, Any]:
        """Storage commitment requests, what radflow answered, and whether the report arrived."""
        return {"commitments": commitment_log.recent(limit, undelivered)}

    @app.get("/api/exams", tags=["exams"], dependencies=[Depends(requires(*EXAM_READERS, audit="exam"))])
    def list_exams(
        state: Annotated[str | None, Query(description="lifecycle state, e.g. ordered")] = None,
        modality: str | None = None,
        patient_id: str | None = None,
        priority: Annotated[str | None, Query(description="STAT, ASAP or ROUTINE")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,  # bounded: SQLite takes 64-bit integers only
    ) -> dict[str, Any]:
        """Exams from the worklist, STAT first, then oldest order first."""
        if state is not None and state not in EXAM_STATES:
            raise HTTPException(422, f"unknown state {state!r}; one of {', '.join(EXAM_STATES)}")
        filters, params = [], []
        for column, value in (
            ("state", state),
            ("modality", modality),
            ("patient_id", patient_id),
            ("priority", priority and priority.upper()),
        ):
            if value:
                filters.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(filters)}" if filters else ""
        total = projections_db.query(f"SELECT COUNT(*) AS n FROM worklist {where}", params)[0]["n"]
        rows = projections_db.query(
            f"SELECT * FROM worklist {where} ORDER BY {PRIORITY_RANK}, ordered_at, accession LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return {"exams": [exam_json(r) for r in rows], "total": int(total), "limit": limit, "offset": offset}

    @app.get(
        "/api/exams/{accession}", tags=["exams"], dependencies=[Depends(requires(*EXAM_READERS, audit="exam"))]
    )
    def get_exam(accession: str) -> dict[str, Any]:
        rows = projections_db.query("SELECT * FROM worklist WHERE accession = ?", (accession,))
        if not rows:
            raise HTTPException(404, f"no exam with accession {accession}")
        return exam_json(rows[0])

    @app.get(
        "/api/exams/{accession}/history",
        tags=["exams"],
        dependencies=[Depends(requires(*EXAM_READERS, audit="exam"))],
    )
    def exam_history(accession: str) -> dict[str, Any]:
        """Every domain event of the exam and of its report (reading, revisions, critical-result
        chain), oldest first, each with its provenance and `aggregate` (exam or report)."""
        events = store.events_of(exam_id(accession))
        if not events:
            raise HTTPException(404, f"no exam with accession {accession}")
        tagged = [(e, "exam") for e in events] + [(e, "report") for e in store.events_of(report_id(accession))]
        tagged.sort(key=lambda pair: getattr(pair[0], "timestamp"))  # noqa: B009 (not on the protocol)
        return {"accession": accession, "events": [{**event_json(e), "aggregate": kind} for e, kind in tagged]}

    @app.exception_handler(Exception)
    async def unexpected(_: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"internal error: {type(error).__name__}"}, status_code=500)

    undeclared = undeclared_routes(app.routes)  # deny by default: a route must say who may call it
    if undeclared:
        raise RuntimeError(f"routes without an access rule (api/authz.py requires): {'; '.join(undeclared)}")
    return app
