"""What each downstream system got about one exam: the outbound rows for its accession (order
status ORM^O01 and report ORU^R01), and per destination where the latest one stands.

Read from the outbound queue (messages database) through OutboundLog; retrying or discarding a
row is the outbound router's job (/api/hl7/outbound/{id}/retry|discard).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends

from adapters.outbound_log import OutboundLog
from api.authz import EXAM_READERS, requires


def delivery_json(row: dict[str, Any]) -> dict[str, Any]:
    report = str(row["message_type"]).startswith("ORU")
    return {
        "id": row["id"],
        "destination": row["destination"],
        "type": row["message_type"],
        "event_type": row["event_type"],
        # the queue's status column: ORC-5 for an order status, OBR-25 (P/F/C) for a report
        "order_status": None if report else row["order_status"],
        "result_status": row["order_status"] if report else None,
        "control_id": row["control_id"],
        "status": row["status"],
        "attempts": row["attempts"],
        "created_at": row["created_at"],
        "dispatched_at": row["dispatched_at"],
        "last_attempt_at": row["last_attempt_at"],
        "finished_at": row["finished_at"],
        "last_error": row["last_error"] or None,
        "last_ack": row["last_ack"] or None,
        "href": f"/api/hl7/outbound/{row['id']}",
    }


def destinations_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per destination: how many messages in each status, and the latest message of each type."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:  # oldest first, so the last one seen is the latest
        entry = out.setdefault(
            row["destination"],
            {"destination": row["destination"], "counts": {}, "latest": {}},
        )
        entry["counts"][row["status"]] = entry["counts"].get(row["status"], 0) + 1
        entry["latest"][row["message_type"]] = delivery_json(row)
    return list(out.values())


def exam_deliveries_router(outbound: OutboundLog) -> APIRouter:
    router = APIRouter(
        prefix="/api/exams", tags=["exams"], dependencies=[Depends(requires(*EXAM_READERS, audit="messages"))]
    )

    @router.get("/{accession}/deliveries")
    async def exam_deliveries(accession: str) -> dict[str, Any]:
        rows = await asyncio.to_thread(outbound.for_accession, accession)
        return {
            "accession": accession,
            "deliveries": [delivery_json(r) for r in rows],
            "destinations": destinations_json(rows),
        }

    return router
