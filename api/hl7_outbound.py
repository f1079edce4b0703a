"""Outbound HL7 over HTTP: the queue and its dead letters, and retrying or discarding one with a
reason (who, when and why are kept with the row)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel, Field

from adapters.outbound_log import OutboundError, OutboundLog
from api.authz import INTERFACE_STAFF, Principal, requires

Actor = Annotated[Principal, Depends(requires(*INTERFACE_STAFF, audit="messages"))]
# beyond a 64-bit integer no row exists (and SQLite cannot even be asked)
RowId = Annotated[int, Path(ge=1, le=2**63 - 1)]


class ActionRequest(BaseModel):
    reason: str = Field(default="", description="why; mandatory, kept with the row")
    user: str = Field(default="api")  # ignored: the actor is the signed-in user


def outbound_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "destination": row["destination"],
        "lane": row["lane"],
        "type": row["message_type"],
        "control_id": row["control_id"],
        "accession": row["accession"],
        "patient_id": row["patient_id"],
        "event_type": row["event_type"],
        "order_status": row["order_status"],
        "status": row["status"],
        "attempts": row["attempts"],
        "created_at": row["created_at"],
        "dispatched_at": row["dispatched_at"],
        "last_attempt_at": row["last_attempt_at"],
        "last_error": row["last_error"] or None,
        "last_ack": row["last_ack"] or None,
        "finished_at": row["finished_at"],
    }


def _error(error: OutboundError) -> HTTPException:
    return HTTPException(status_code=404 if error.not_found else 409, detail=str(error))


def hl7_outbound_router(outbound: OutboundLog) -> APIRouter:
    router = APIRouter(
        prefix="/api/hl7/outbound",
        tags=["hl7 outbound"],
        dependencies=[Depends(requires(*INTERFACE_STAFF, audit="messages"))],
    )

    @router.get("")
    async def list_outbound(
        status: Annotated[str, Query(description="queued, delivered, dead or discarded")] = "",
        destination: str = "",
        accession: str = "",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        try:
            rows = await asyncio.to_thread(
                outbound.search, status=status, destination=destination, accession=accession, limit=limit
            )
        except OutboundError as error:
            raise HTTPException(status_code=400, detail=str(error)) from None
        return {"messages": [outbound_json(r) for r in rows]}

    @router.get("/{row_id}")
    async def get_outbound(row_id: RowId) -> dict[str, Any]:
        row = await asyncio.to_thread(outbound.get, row_id)
        if row is None:
            raise HTTPException(status_code=404, detail=f"outbound message {row_id} does not exist")
        actions = await asyncio.to_thread(outbound.actions, row_id)
        return {**outbound_json(row), "message": row["message"], "actions": actions}

    async def act(row_id: int, request: ActionRequest, action: str, who: Principal) -> dict[str, Any]:
        if not request.reason.strip():
            raise HTTPException(status_code=400, detail=f"a reason is required to {action} a message")
        operation = outbound.retry if action == "retry" else outbound.discard
        try:
            row = await asyncio.to_thread(operation, row_id, reason=request.reason, user=who.username)
        except OutboundError as error:
            raise _error(error) from None
        return outbound_json(row)

    @router.post("/{row_id}/retry")
    async def retry(row_id: RowId, request: ActionRequest, who: Actor) -> dict[str, Any]:
        """A dead letter goes back to the end of its lane."""
        return await act(row_id, request, "retry", who)

    @router.post("/{row_id}/discard")
    async def discard(row_id: RowId, request: ActionRequest, who: Actor) -> dict[str, Any]:
        """A dead or queued message will not be sent."""
        return await act(row_id, request, "discard", who)

    return router
