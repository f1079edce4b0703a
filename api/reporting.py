"""HTTP actions of the radiologist: claim, release, autosave, issue a report, acknowledge a
critical result. Each runs the `read` update on the exam's workflow, so an illegal action is
refused synchronously with the domain's reason (409) and nothing changes.

Who acts is the signed-in user (api/authz.py); a `user` field in the body is accepted for older
clients and ignored. A client may send `request_id` so that a retried request is the same
command (applied once).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path
from pydantic import BaseModel, Field
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from adapters.sql import Database
from api.authz import CRITICAL_ACKNOWLEDGERS, REPORTERS, Principal, requires

UPDATE_TIMEOUT_S = 30.0
SECTION_LIMIT = 65_536  # characters per section: far beyond any report, short of abuse

User = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]+$")]
Sections = dict[Annotated[str, Field(min_length=1, max_length=64)], Annotated[str, Field(max_length=SECTION_LIMIT)]]
Accession = Annotated[str, Path(min_length=1, max_length=64)]


class Action(BaseModel):
    user: User | None = None  # ignored: the actor is the signed-in user
    request_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None


class Release(Action):
    reason: Annotated[str, Field(max_length=500)] = ""


class Draft(Action):
    sections: Sections


class Issue(Action):
    sections: Sections
    critical: bool = False


class Acknowledge(Action):
    note: Annotated[str, Field(max_length=2000)] = ""


Reporter = Annotated[Principal, Depends(requires(*REPORTERS, audit="report"))]
Acknowledger = Annotated[Principal, Depends(requires(*CRITICAL_ACKNOWLEDGERS, audit="report"))]


def reading_command(kind: str, accession: str, action: Action, actor: str, **fields: Any) -> dict[str, Any]:
    """The command in its wire form, with provenance: who, from where, when, which request."""
    request_id = action.request_id or str(uuid.uuid4())
    return {
        "kind": kind,
        "accession": accession,
        **fields,
        "provenance": {
            "actor": actor,
            "source": {
                "kind": "api",
                "application": "radflow-api",
                "facility": "",
                "control_id": request_id,
                "message_id": f"api:{kind}:{accession}:{request_id}",
            },
            "occurred_at": datetime.now(UTC).isoformat(),
            "schema_version": 1,
            "extra": {},
        },
    }


def reporting_router(connect: Callable[[], Awaitable[Client]], projections_db: Database) -> APIRouter:
    router = APIRouter(prefix="/api/exams/{accession}", tags=["reporting"])

    def exam_state(accession: str) -> str | None:
        rows = projections_db.query("SELECT state FROM worklist WHERE accession = ?", (accession,))
        return str(rows[0]["state"]) if rows else None

    async def run(accession: str, command: dict[str, Any]) -> dict[str, Any]:
        client = await connect()
        handle = client.get_workflow_handle(f"exam-{accession}")
        try:
            outcome: dict[str, Any] = await asyncio.wait_for(
                handle.execute_update("read", command, id=command["provenance"]["source"]["message_id"]),
                UPDATE_TIMEOUT_S,
            )
        except WorkflowUpdateFailedError as failed:
            cause = failed.cause
            raise HTTPException(409, str(getattr(cause, "message", None) or cause or failed)) from failed
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND:
                raise
            state = await asyncio.to_thread(exam_state, accession)
            if state is None:
                raise HTTPException(404, f"no exam with accession {accession}") from error
            raise HTTPException(409, f"exam {accession}: cannot be reported while {state}") from error
        except TimeoutError as error:
            raise HTTPException(504, f"exam {accession}: its workflow did not answer in {UPDATE_TIMEOUT_S:.0f} s") from error
        return {
            "status": outcome.get("status"),
            "state": outcome.get("state"),
            "reading": outcome.get("reading", {}),
        }

    @router.post("/reading/claim")
    async def claim(accession: Accession, body: Action, who: Reporter) -> dict[str, Any]:
        """Take the exam to read. 409 when another radiologist holds a live claim."""
        me = who.username
        return await run(accession, reading_command("claim_reading", accession, body, me, radiologist=me))

    @router.post("/reading/release")
    async def release(accession: Accession, body: Release, who: Reporter) -> dict[str, Any]:
        me = who.username
        return await run(
            accession,
            reading_command("release_reading", accession, body, me, radiologist=me, reason=body.reason),
        )

    @router.put("/report/draft")
    async def save_draft(accession: Accession, body: Draft, who: Reporter) -> dict[str, Any]:
        """Autosave: renews the writer's claim; an unchanged draft records nothing."""
        me = who.username
        return await run(
            accession,
            reading_command("save_report_draft", accession, body, me, author=me, sections=body.sections),
        )

    @router.post("/report/{kind}")
    async def issue(
        accession: Accession,
        kind: Literal["preliminary", "final", "addendum", "correction"],
        body: Issue,
        who: Reporter,
    ) -> dict[str, Any]:
        """Issue a revision: `final` is the signature (the exam becomes reported; the text is
        immutable from then on); addenda and corrections are new revisions."""
        return await run(
            accession,
            reading_command(
                "issue_report",
                accession,
                body,
                who.username,
                author=who.username,
                report_kind=kind,
                sections=body.sections,
                critical=body.critical,
            ),
        )

    @router.post("/report/critical/acknowledge")
    async def acknowledge(accession: Accession, body: Acknowledge, who: Acknowledger) -> dict[str, Any]:
        """The referring physician (or whoever the chain reached) took note of a critical result;
        recorded as acknowledged by the signed-in user who took the call."""
        me = who.username
        return await run(
            accession,
            reading_command("acknowledge_critical_result", accession, body, me, by=me, note=body.note),
        )

    return router
