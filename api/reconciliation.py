"""Reconciliation over HTTP: performed procedure steps and stored studies no exam could take, and
linking one to an exam with a reason. A link goes through an outbox to the exam's workflow,
like any other trigger, so it ends up as events with the person and the reason in their
provenance (and the worklist and PACS index follow)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field, field_validator

from adapters.mpps_log import MppsLog
from adapters.storage_log import StorageLog
from api.authz import RECONCILERS, Principal, requires
from interfaces.dicom.mpps import LinkRefused, NotQueued, UnknownAccession, link
from interfaces.dicom.mpps_dataset import ended_at, started_at
from interfaces.dicom.storage import link_study

Actor = Annotated[Principal, Depends(requires(*RECONCILERS, audit="exam"))]


class LinkRequest(BaseModel):
    accession: str = Field(min_length=1)
    reason: str = Field(min_length=1, description="why this step belongs to this exam; kept in the history")
    user: str = Field(default="api", min_length=1)  # ignored: the actor is the signed-in user

    @field_validator("accession", "reason", "user")
    @classmethod
    def not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()


def queue_entry_json(row: dict[str, Any]) -> dict[str, Any]:
    step = row["step"]
    series = step.get("series", [])
    return {
        "sop_instance_uid": row["sop_instance_uid"],
        "queued_at": row["queued_at"],
        "reason": row["reason"],
        "claimed_accession": row["claimed_accession"] or None,
        "status": row["status"],
        "calling_ae": row["calling_ae"],
        "updated_at": row["updated_at"],
        "patient": {"id": step.get("patient_id", ""), "name": step.get("patient_name", "")},
        "modality": step.get("modality", ""),
        "performed_station_ae": step.get("station_ae", ""),
        "study_instance_uid": step.get("study_instance_uid", ""),
        "started_at": started_at(step) or None,
        "ended_at": ended_at(step) or None,
        "series": len(series),
        "instances": sum(len(s.get("instances", [])) for s in series),
        "linked": None
        if not row["linked_at"]
        else {
            "accession": row["linked_accession"],
            "reason": row["link_reason"],
            "by": row["linked_by"],
            "at": row["linked_at"],
        },
    }


def study_entry_json(row: dict[str, Any]) -> dict[str, Any]:
    study = row["attributes"].get("study", {})
    return {
        "study_instance_uid": row["study_instance_uid"],
        "queued_at": row["first_received_at"],
        "reason": row["queued_reason"],
        "claimed_accession": row["claimed_accession"] or None,
        "patient": {"id": row["patient_id"], "name": study.get("patient_name", "")},
        "study_date": study.get("study_date", ""),
        "study_description": study.get("study_description", ""),
        "series": int(row["series"]),
        "instances": int(row["instances"]),
        "linked": None
        if not row["accession"]
        else {
            "accession": row["accession"],
            "how": row["linked_how"],
            "by": row["linked_by"],
            "at": row["linked_at"],
        },
    }


def _link_error(refused: LinkRefused) -> HTTPException:
    if isinstance(refused, NotQueued):
        return HTTPException(404, str(refused))
    if isinstance(refused, UnknownAccession):
        return HTTPException(422, str(refused))
    return HTTPException(409, str(refused))


def reconciliation_router(mpps_log: MppsLog, storage_log: StorageLog) -> APIRouter:
    router = APIRouter(prefix="/api/reconciliation", tags=["reconciliation"])

    @router.get("/mpps", dependencies=[Depends(requires(*RECONCILERS, audit="exam"))])
    def list_mpps(
        include_linked: Annotated[bool, Query(description="also list steps already linked")] = False,
    ) -> dict[str, Any]:
        """Performed procedure steps waiting for a person: unknown or missing accession, or
        refused by their exam after the modality was told success. Oldest first."""
        rows = mpps_log.reconciliation(include_linked=include_linked)
        return {"items": [queue_entry_json(r) for r in rows], "total": len(rows)}

    @router.post("/mpps/{sop_instance_uid}/link", status_code=202)
    async def link_mpps(sop_instance_uid: str, body: LinkRequest, who: Actor) -> dict[str, Any]:
        """Attach a queued step to an exam. 202: durable and on its way to the exam's workflow;
        what the exam made of it shows in its history and in this queue."""
        try:
            rows = await asyncio.to_thread(
                link, mpps_log, sop_instance_uid, body.accession, body.reason, who.username
            )
        except LinkRefused as refused:
            raise _link_error(refused) from refused
        return {
            "sop_instance_uid": sop_instance_uid,
            "accession": body.accession,
            "message_ids": [f"mpps:{r}" for r in rows],
        }

    @router.get("/studies", dependencies=[Depends(requires(*RECONCILERS, audit="images"))])
    def list_studies(
        include_linked: Annotated[bool, Query(description="also list studies already linked")] = False,
    ) -> dict[str, Any]:
        """Stored studies no exam could claim (unknown or missing accession, patient ID
        mismatch, cancelled exam, or refused by their exam). Oldest first."""
        rows = storage_log.reconciliation(include_linked=include_linked)
        return {"items": [study_entry_json(r) for r in rows], "total": len(rows)}

    @router.post("/studies/{study_instance_uid}/link", status_code=202)
    async def link_stored_study(study_instance_uid: str, body: LinkRequest, who: Actor) -> dict[str, Any]:
        """Attach a queued study to an exam. 202: durable and on its way to the exam's workflow."""
        try:
            row = await asyncio.to_thread(
                link_study, storage_log, study_instance_uid, body.accession, body.reason, who.username
            )
        except LinkRefused as refused:
            raise _link_error(refused) from refused
        return {
            "study_instance_uid": study_instance_uid,
            "accession": body.accession,
            "message_ids": [f"dicom-batch:{row}"],
        }

    return router
