"""Reconciliation over HTTP: performed procedure steps no exam could take, and linking one to an
exam with a reason. The link goes through the MPPS outbox to the exam's workflow, like any
other trigger, so it ends up as events with the person and the reason in their provenance."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field, field_validator

from adapters.mpps_log import MppsLog
from interfaces.dicom.mpps import AlreadyLinked, IllegalLink, NotQueued, UnknownAccession, link
from interfaces.dicom.mpps_dataset import ended_at, started_at


class LinkRequest(BaseModel):
    accession: str = Field(min_length=1)
    reason: str = Field(min_length=1, description="why this step belongs to this exam; kept in the history")
    user: str = Field(default="api", min_length=1)

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
        else {"accession": row["linked_accession"], "reason": row["link_reason"], "by": row["linked_by"], "at": row["linked_at"]},
    }


def reconciliation_router(mpps_log: MppsLog) -> APIRouter:
    router = APIRouter(prefix="/api/reconciliation", tags=["reconciliation"])

    @router.get("/mpps")
    def list_mpps(
        include_linked: Annotated[bool, Query(description="also list steps already linked")] = False,
    ) -> dict[str, Any]:
        """Performed procedure steps waiting for a person: unknown or missing accession, or
        refused by their exam after the modality was told success. Oldest first."""
        rows = mpps_log.reconciliation(include_linked=include_linked)
        return {"items": [queue_entry_json(r) for r in rows], "total": len(rows)}

    @router.post("/mpps/{sop_instance_uid}/link", status_code=202)
    async def link_mpps(sop_instance_uid: str, body: LinkRequest) -> dict[str, Any]:
        """Attach a queued step to an exam. 202: durable and on its way to the exam's workflow;
        what the exam made of it shows in its history and in this queue."""
        try:
            rows = await asyncio.to_thread(link, mpps_log, sop_instance_uid, body.accession, body.reason, body.user)
        except NotQueued as refused:
            raise HTTPException(404, str(refused)) from refused
        except UnknownAccession as refused:
            raise HTTPException(422, str(refused)) from refused
        except (AlreadyLinked, IllegalLink) as refused:
            raise HTTPException(409, str(refused)) from refused
        return {
            "sop_instance_uid": sop_instance_uid,
            "accession": body.accession,
            "message_ids": [f"mpps:{r}" for r in rows],
        }

    return router
