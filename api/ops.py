"""The operations console's API: what is stuck and why, and the actions that unstick it.

Stuck: exams older in their state than ops.yaml allows (from the worklist projection), workflows
whose activities keep failing (Temporal's describe: pending activities past their first attempt,
with the last failure), and outbound dead letters. Actions, each with a mandatory reason
(400 without one) and journaled in `ops_actions` (who, when, what, why, result):

- retry now: Temporal's ResetActivity on the failing activity (attempt back to 1, scheduled at
  once instead of after the back-off), for when the cause was fixed;
- re-deliver: send a message-log row's stored command to the exam's workflow again (the relay's
  signal-with-start; a command already applied is dropped as a repeat by the workflow and by the
  exam, so this is always safe);
- cancel: a CancelOrder command through the exam's workflow, as if the placer had sent it;
- force: a documented forced transition (domain/lifecycle.py FORCED_TRANSITIONS), recorded as an
  ExamStateForced event with the reason;
- rebuild workflow: terminate the exam's workflow and start a new one carrying the state the
  event store holds (plus its timers), then re-deliver the exam's messages never applied.

Commands are checked against the exam loaded from the store before they are sent (a refusal
answers 409 at once, as an update validator would), and the answer waits briefly for the exam to
have applied them (202 when it has not yet: the journal and the exam's history will tell).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import ResetActivityRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from adapters.event_store import EventStore
from adapters.ops_actions import FAILED, OK, REFUSED, OpsActions
from adapters.ops_config import OpsRules, describe
from adapters.outbound_log import OutboundError, OutboundLog
from adapters.reporting_config import ReportingRules
from adapters.sql import Database
from adapters.yaml_config import ConfigError
from api.authz import Principal, requires
from domain.errors import DomainError
from domain.exam import Exam, exam_id
from domain.provenance import Provenance, instant
from domain.report import report_id

log = logging.getLogger("radflow.ops")

OPERATIONS = requires("operations")
# module level: with postponed annotations FastAPI resolves them in the module's globals
Who = Annotated[Principal, Depends(OPERATIONS)]
TEMPLATES = Path(__file__).resolve().parent / "templates"
APPLY_WAIT_S = 10.0  # how long an action's answer waits for the exam to apply its command
SUBMIT = "submit"  # the workflows' command signal (interfaces/hl7/relay.py)
MAX_DESCRIBED = 500  # open workflows described per stuck listing


# no NUL (PostgreSQL text refuses it) and no other control characters but line breaks and tabs
Text = Annotated[str, Field(max_length=2000, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*$")]
Accession = Annotated[str, PathParam(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f/]+$")]


class Reasoned(BaseModel):
    reason: Text = ""


class Force(Reasoned):
    target: Annotated[str, Field(max_length=32)] = ""


MAX_ID = 2**63 - 1  # BIGINT: larger ids cannot exist (and SQLite refuses to bind them)


class Redeliver(Reasoned):
    message_id: Annotated[int, Field(ge=1, le=MAX_ID)] | None = None


@dataclass
class OpsContext:
    """What the actions need, created at start-up by create_app."""

    store: EventStore
    projections_db: Database
    messages_db: Database
    connect: Callable[[], Awaitable[Client]]
    task_queue: str
    rules: Callable[[], OpsRules]
    reporting: Callable[[], ReportingRules]
    images_timeout_s: float = 900.0

    @property
    def journal(self) -> OpsActions:
        return OpsActions(self.messages_db)

    @property
    def outbound(self) -> OutboundLog:
        return OutboundLog(self.messages_db)


class ActionRefused(Exception):
    """The action cannot be done as asked: 409 (or 404 with `missing`), journaled as refused."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


def require_reason(body: Reasoned) -> str:
    reason = body.reason.strip()
    if not reason:
        raise HTTPException(400, "a reason is required for every operations action")
    return reason


def rules_or_503(ctx: OpsContext) -> OpsRules:
    """ops.yaml is read on each listing (an edit applies at once); an invalid one says where."""
    try:
        return ctx.rules()
    except ConfigError as error:
        raise HTTPException(503, f"invalid operations configuration: {error}") from error


def _now() -> datetime:
    return datetime.now(UTC)


# --- stuck exams --------------------------------------------------------------------------------


def stuck_exams(db: Database, rules: OpsRules, now: datetime, limit: int = 500) -> list[dict[str, Any]]:
    """Exams past their state's threshold, oldest first, each with the reason in words. The age
    counts from the worklist row's last change (for scheduled: from the appointment)."""
    found: list[dict[str, Any]] = []
    for state, threshold in rules.stuck_after.items():
        if not threshold:
            continue
        column = "scheduled_at" if state == "scheduled" else "updated_at"
        rows = db.query(
            "SELECT accession, state, priority, modality, procedure_code, procedure_text, scheduled_at, "
            f"ordered_at, updated_at FROM worklist WHERE state = ? AND {column} IS NOT NULL AND {column} <> ''",
            (state,),
        )
        for row in rows:
            since = instant(row[column])
            age = now - since
            if age <= threshold:
                continue
            if state == "scheduled":
                reason = (
                    f"scheduled for {row['scheduled_at']}, still scheduled {describe(age)} later, "
                    f"threshold {describe(threshold)}"
                )
            else:
                reason = f"{state} for {describe(age)}, threshold {describe(threshold)}"
            found.append(
                {
                    **row,
                    "since": since.isoformat(),
                    "age_s": int(age.total_seconds()),
                    "threshold_s": int(threshold.total_seconds()),
                    "reason": reason,
                }
            )
    found.sort(key=lambda r: -r["age_s"])
    return found[:limit]


# --- failing workflows --------------------------------------------------------------------------


def _time(ts: Any) -> str | None:
    return ts.ToDatetime(tzinfo=UTC).isoformat() if ts is not None and ts.seconds else None


async def failing_activities(
    client: Client, workflow_id: str, run_id: str | None = None
) -> list[dict[str, Any]]:
    """Pending activities of one workflow that failed at least once (attempt > 1)."""
    description = await client.get_workflow_handle(workflow_id, run_id=run_id).describe()
    failing = []
    for pending in description.raw_description.pending_activities:
        if pending.attempt <= 1 and not pending.HasField("last_failure"):
            continue
        failing.append(
            {
                "activity_id": pending.activity_id,
                "activity_type": pending.activity_type.name,
                "attempt": pending.attempt,
                "last_failure": pending.last_failure.message,
                "last_attempt_at": _time(pending.last_attempt_complete_time),
                "next_attempt_at": _time(pending.next_attempt_schedule_time),
            }
        )
    return failing


async def failing_workflows(client: Client, limit: int = MAX_DESCRIBED) -> list[dict[str, Any]]:
    """Open workflows (any type) with an activity that keeps failing, with the reason."""
    executions = []
    async for execution in client.list_workflows('ExecutionStatus = "Running"', limit=limit):
        executions.append(execution)
    gate = asyncio.Semaphore(16)

    async def check(execution: Any) -> list[dict[str, Any]]:
        async with gate:
            try:
                activities = await failing_activities(client, execution.id, execution.run_id)
            except RPCError as error:
                if error.status == RPCStatusCode.NOT_FOUND:  # ended between list and describe
                    return []
                raise
        return [
            {
                "workflow_id": execution.id,
                "run_id": execution.run_id,
                "workflow_type": execution.workflow_type,
                "accession": execution.id.removeprefix("exam-") if execution.id.startswith("exam-") else None,
                **activity,
                "reason": (
                    f"{activity['activity_type']} failing: attempt {activity['attempt']}, "
                    f"last failure: {activity['last_failure'] or 'timeout'}"
                ),
            }
            for activity in activities
        ]

    found = await asyncio.gather(*(check(e) for e in executions))
    return sorted((row for rows in found for row in rows), key=lambda r: -r["attempt"])


# --- commands ------------------------------------------------------------------------------------


def ops_command(
    kind: str, accession: str, who: Principal, action: str, why: str, **fields: Any
) -> dict[str, Any]:
    """A command in its wire form, with the operator as actor and the reason in the provenance."""
    request_id = uuid.uuid4().hex
    return {
        "kind": kind,
        "accession": accession,
        **fields,
        "provenance": {
            "actor": who.username,
            "source": {
                "kind": "api",
                "application": "radflow-ops",
                "facility": "",
                "control_id": request_id,
                "message_id": f"ops:{action}:{accession}:{request_id}",
            },
            "occurred_at": _now().isoformat(),
            "schema_version": 1,
            "extra": {"ops_action": action, "reason": why},
        },
    }


class Operations:
    """The actions, shared by the HTTP routes (and usable from a CLI)."""

    def __init__(self, ctx: OpsContext) -> None:
        self.ctx = ctx

    def _exam(self, accession: str) -> Exam:
        exam: Exam | None = self.ctx.store.get_or_none(exam_id(accession))
        if exam is None:
            raise ActionRefused(f"no exam with accession {accession}", missing=True)
        return exam

    async def _signal(self, client: Client, workflow_id: str, command: dict[str, Any]) -> None:
        """The relay's own delivery: signal-with-start, so an ended workflow takes it too."""
        await client.start_workflow(
            "ExamWorkflow",
            None,
            id=workflow_id,
            task_queue=self.ctx.task_queue,
            start_signal=SUBMIT,
            start_signal_args=[command],
        )

    async def _wait_applied(self, accession: str, message_id: str) -> dict[str, Any] | None:
        """The exam's state once it applied the command with `message_id`; None if not in time."""
        key = Provenance.from_dict(
            {"actor": "", "source": {"kind": "", "message_id": message_id}, "occurred_at": ""}
        ).dedupe_key
        deadline = asyncio.get_running_loop().time() + APPLY_WAIT_S
        while True:
            exam: Exam | None = await asyncio.to_thread(self.ctx.store.get_or_none, exam_id(accession))
            if exam is not None and key in exam.applied:
                return {"status": "applied", "state": exam.state.value}
            if asyncio.get_running_loop().time() > deadline:
                return None
            await asyncio.sleep(0.1)

    async def _submit(self, accession: str, command: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        client = await self.ctx.connect()
        await self._signal(client, f"exam-{accession}", command)
        message_id = command["provenance"]["source"]["message_id"]
        applied = await self._wait_applied(accession, message_id)
        if applied is None:
            return 202, {
                "status": "submitted",
                "message_id": message_id,
                "note": "not applied yet; see the stuck list",
            }
        return 200, {**applied, "message_id": message_id}

    async def cancel(self, accession: str, who: Principal, reason: str) -> tuple[int, dict[str, Any]]:
        exam = self._exam(accession)
        command = ops_command("cancel_order", accession, who, "cancel", reason, reason=reason)
        try:  # the exam decides now, on a copy never saved: a refusal changes nothing
            exam.cancel(reason, Provenance.from_dict(command["provenance"]))
        except DomainError as refusal:
            raise ActionRefused(str(refusal)) from refusal
        return await self._submit(accession, command)

    async def force(
        self, accession: str, who: Principal, reason: str, target: str
    ) -> tuple[int, dict[str, Any]]:
        exam = self._exam(accession)
        before = exam.state.value
        command = ops_command(
            "force_exam_state", accession, who, "force", reason, target=target, reason=reason
        )
        try:
            exam.force_state(target, reason, Provenance.from_dict(command["provenance"]))
        except DomainError as refusal:
            raise ActionRefused(str(refusal)) from refusal
        status, result = await self._submit(accession, command)
        return status, {**result, "from_state": before, "to_state": target}

    async def retry_now(self, accession: str, who: Principal) -> tuple[int, dict[str, Any]]:
        client = await self.ctx.connect()
        workflow_id = f"exam-{accession}"
        try:
            failing = await failing_activities(client, workflow_id)
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                raise ActionRefused(f"no workflow {workflow_id}", missing=True) from error
            raise
        if not failing:
            raise ActionRefused(f"{workflow_id} has no failing activity to retry")
        for activity in failing:
            await client.workflow_service.reset_activity(
                ResetActivityRequest(
                    namespace=client.namespace,
                    execution=WorkflowExecution(workflow_id=workflow_id),
                    id=activity["activity_id"],
                    identity=f"radflow-ops:{who.username}",
                )
            )
        after = await self._settle(client, workflow_id, {a["activity_id"] for a in failing})
        return 200, {"reset": failing, "still_failing": after}

    @staticmethod
    async def _settle(
        client: Client, workflow_id: str, ids: set[str], wait_s: float = 3.0
    ) -> list[dict[str, Any]]:
        """What still fails a moment after the reset (the retry ran at once)."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            try:
                description = await client.get_workflow_handle(workflow_id).describe()
            except RPCError:
                return []
            pending = [p for p in description.raw_description.pending_activities if p.activity_id in ids]
            done = not pending or description.status != WorkflowExecutionStatus.RUNNING
            if done or asyncio.get_running_loop().time() > deadline:
                return [
                    {
                        "activity_id": p.activity_id,
                        "attempt": p.attempt,
                        "last_failure": p.last_failure.message,
                    }
                    for p in pending
                    if p.attempt > 1
                ]
            await asyncio.sleep(0.1)

    def _message(self, message_id: int) -> dict[str, Any]:
        rows = self.ctx.messages_db.query(
            "SELECT id, status, commands, accession FROM hl7_messages WHERE id = ?", (message_id,)
        )
        if not rows:
            raise ActionRefused(f"no message {message_id} in the message log", missing=True)
        return rows[0]

    async def redeliver(self, accession: str, message_id: int) -> tuple[int, dict[str, Any]]:
        # no exam yet is fine: the message may be the order that never arrived
        row = self._message(message_id)
        workflow_id = f"exam-{accession}"
        commands = [
            e["command"] for e in json.loads(row["commands"] or "[]") if e["workflow_id"] == workflow_id
        ]
        if row["status"] != "accepted" or not commands:
            raise ActionRefused(
                f"message {message_id} ({row['status']}) carries no command for exam {accession}"
            )
        client = await self.ctx.connect()
        for command in commands:
            await self._signal(client, workflow_id, command)
        applied = await self._wait_applied(accession, f"hl7:{message_id}")
        if applied is None:
            return 202, {"status": "submitted", "message_id": message_id, "commands": len(commands)}
        return 200, {**applied, "message_id": message_id, "commands": len(commands)}

    def carried_state(self, exam: Exam) -> dict[str, Any]:
        """What a new run of the exam's workflow starts from: the stored state and the timers
        the activity would set (workflows/command_queue.py `carry`)."""
        rules = self.ctx.reporting()
        timers = {
            "turnaround": exam.turnaround_due(rules.turnaround_for(str(exam.order.get("priority", ""))))
        }
        report = self.ctx.store.get_or_none(report_id(exam.accession))
        if report is not None:
            timers["critical"] = report.summary(exam.state.value).get("critical_due_at", "")
        if exam.awaits_images:
            timers["images"] = (_now() + timedelta(seconds=self.ctx.images_timeout_s)).isoformat()
        return {
            "state": exam.state.value,
            "pending": [],
            "seen": [],
            "timers": {k: v for k, v in timers.items() if v},
        }

    async def rebuild_workflow(
        self, accession: str, who: Principal, reason: str
    ) -> tuple[int, dict[str, Any]]:
        exam = self._exam(accession)
        if exam.is_terminal:
            raise ActionRefused(f"exam {accession} is {exam.state.value}: its workflow has ended for good")
        client = await self.ctx.connect()
        workflow_id = f"exam-{accession}"
        handle = client.get_workflow_handle(workflow_id)
        terminated = None
        try:
            description = await handle.describe()
            if description.status == WorkflowExecutionStatus.RUNNING:
                await handle.terminate(reason=f"rebuilt from the event store by {who.username}: {reason}")
                terminated = description.run_id
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND:
                raise
        carried = self.carried_state(exam)
        try:
            started = await client.start_workflow(
                "ExamWorkflow", carried, id=workflow_id, task_queue=self.ctx.task_queue
            )
        except WorkflowAlreadyStartedError as error:  # a message started a new run meanwhile
            raise ActionRefused(f"{workflow_id} was started again meanwhile; rebuild once more") from error
        # the exam's messages that never reached the exam (lost with the old run): again
        unapplied = self.ctx.messages_db.query(
            "SELECT id, commands FROM hl7_messages WHERE accession = ? AND status = 'accepted' "
            "AND relayed_at IS NOT NULL AND applied_status IS NULL ORDER BY id",
            (accession,),
        )
        redelivered = []
        for row in unapplied:
            for entry in json.loads(row["commands"] or "[]"):
                if entry["workflow_id"] == workflow_id:
                    await self._signal(client, workflow_id, entry["command"])
                    redelivered.append(int(row["id"]))
        return 200, {
            "terminated_run": terminated,
            "run_id": started.result_run_id,
            "carried": carried,
            "redelivered": sorted(set(redelivered)),
        }

    def dead_letter(
        self, row_id: int, action: str, who: Principal, reason: str
    ) -> tuple[int, dict[str, Any]]:
        outbound = self.ctx.outbound
        try:
            row = (outbound.retry if action == "retry" else outbound.discard)(
                row_id, reason=reason, user=who.username
            )
        except OutboundError as error:
            raise ActionRefused(str(error), missing=error.not_found) from error
        return 200, {"id": row_id, "status": row["status"], "generation": row["generation"]}


# --- projections ---------------------------------------------------------------------------------


def projection_positions(ctx: OpsContext) -> list[dict[str, Any]]:
    """Every tracked projection (read models and feeds), its position and lag behind the store."""
    head = ctx.store.max_notification_id()
    out = []
    for where, db in (("projections", ctx.projections_db), ("messages", ctx.messages_db)):
        try:
            rows = db.query("SELECT name, position FROM projection_tracking ORDER BY name")
        except Exception:  # the table is created by the first runner
            rows = []
        for row in rows:
            position = int(row["position"])
            out.append(
                {
                    "name": row["name"],
                    "database": where,
                    "position": position,
                    "head": head,
                    "lag": max(head - position, 0),
                }
            )
    return out


# --- routes ---------------------------------------------------------------------------------------


def ops_router(ctx: OpsContext) -> APIRouter:
    router = APIRouter(prefix="/api/ops", tags=["operations"])
    ops = Operations(ctx)

    async def act(
        who: Principal,
        action: str,
        reason: str,
        run: Callable[[], Awaitable[tuple[int, dict[str, Any]]]],
        *,
        accession: str = "",
        target: str = "",
    ) -> JSONResponse:
        """Run an action and journal it, whatever came of it."""
        try:
            status, result = await run()
            outcome = OK
        except ActionRefused as refused:
            status, result, outcome = (404 if refused.missing else 409), {"detail": str(refused)}, REFUSED
        except RPCError as error:
            if error.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                status, result, outcome = 404, {"detail": f"Temporal: {error.message}"[:500]}, REFUSED
            else:
                status, result, outcome = 503, {"detail": f"Temporal unavailable: {error}"[:500]}, FAILED
        except (TimeoutError, OSError, RuntimeError) as error:
            status, result, outcome = 503, {"detail": f"Temporal unavailable: {error}"[:500]}, FAILED
        await asyncio.to_thread(
            ctx.journal.record,
            username=who.username,
            action=action,
            reason=reason,
            outcome=outcome,
            result=result,
            accession=accession,
            target=target,
        )
        log.info(
            "ops action",
            extra={"action": action, "accession": accession, "user": who.username, "outcome": outcome},
        )
        return JSONResponse(
            {"action": action, "accession": accession or None, "outcome": outcome, **result},
            status_code=status,
        )

    @router.get("/stuck")
    async def stuck(_: Who) -> dict[str, Any]:
        """Exams past their state's threshold, workflows with failing activities, dead letters;
        each with the reason."""
        exams = await asyncio.to_thread(stuck_exams, ctx.projections_db, rules_or_503(ctx), _now())
        workflows: list[dict[str, Any]] = []
        temporal_error = None
        try:
            workflows = await failing_workflows(await ctx.connect())
        except (RPCError, TimeoutError, OSError, RuntimeError) as error:
            temporal_error = str(error)[:300] or type(error).__name__
        dead = await asyncio.to_thread(ctx.outbound.search, status="dead", limit=200)
        for row in dead:
            row["reason"] = (
                f"dead letter to {row['destination']} after {row['attempts']} attempts: {row['last_error']}"
            )
        return {
            "exams": exams,
            "workflows": workflows,
            "dead_letters": dead,
            "temporal_error": temporal_error,
        }

    @router.get("/projections")
    def projections(_: Who) -> dict[str, Any]:
        """Each projection's position in the event store's notification log and its lag."""
        return {"projections": projection_positions(ctx)}

    @router.get("/actions")
    def actions(
        _: Who,
        accession: Annotated[str, Query(max_length=64, pattern=r"^[^\x00-\x1f]*$")] = "",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """The operations journal, newest first."""
        return {"actions": ctx.journal.recent(accession=accession, limit=limit)}

    @router.post("/exams/{accession}/retry")
    async def retry(accession: Accession, body: Reasoned, who: Who) -> JSONResponse:
        """Retry now: the exam workflow's failing activity runs again at once, attempt 1."""
        reason = require_reason(body)
        return await act(who, "retry", reason, lambda: ops.retry_now(accession, who), accession=accession)

    @router.post("/exams/{accession}/redeliver")
    async def redeliver(accession: Accession, body: Redeliver, who: Who) -> JSONResponse:
        """Send a message-log row's stored command(s) to the exam's workflow again."""
        reason = require_reason(body)
        if body.message_id is None:
            raise HTTPException(400, "message_id (the message-log row to re-deliver) is required")
        message_id = body.message_id
        return await act(
            who, "redeliver", reason, lambda: ops.redeliver(accession, message_id),
            accession=accession, target=f"hl7:{message_id}",
        )  # fmt: skip

    @router.post("/exams/{accession}/cancel")
    async def cancel(accession: Accession, body: Reasoned, who: Who) -> JSONResponse:
        """Cancel the order, as the placer's cancel would (refused once the exam has started)."""
        reason = require_reason(body)
        return await act(
            who, "cancel", reason, lambda: ops.cancel(accession, who, reason), accession=accession
        )

    @router.post("/exams/{accession}/force")
    async def force(accession: Accession, body: Force, who: Who) -> JSONResponse:
        """A forced transition allowed by domain/lifecycle.py FORCED_TRANSITIONS."""
        reason = require_reason(body)
        if not body.target.strip():
            raise HTTPException(400, "target (the state to force the exam into) is required")
        target = body.target.strip()
        return await act(
            who, "force", reason, lambda: ops.force(accession, who, reason, target),
            accession=accession, target=target,
        )  # fmt: skip

    @router.post("/exams/{accession}/rebuild-workflow")
    async def rebuild_workflow(accession: Accession, body: Reasoned, who: Who) -> JSONResponse:
        """Terminate the exam's workflow and start one from the event store's state."""
        reason = require_reason(body)
        return await act(
            who, "rebuild_workflow", reason, lambda: ops.rebuild_workflow(accession, who, reason),
            accession=accession,
        )  # fmt: skip

    @router.post("/dead-letters/{row_id}/{action}")
    async def dead_letter(
        row_id: Annotated[int, PathParam(ge=1, le=MAX_ID)], action: str, body: Reasoned, who: Who
    ) -> JSONResponse:
        """Retry (back to its lane) or discard an outbound dead letter."""
        if action not in ("retry", "discard"):
            raise HTTPException(404, "dead-letter actions: retry, discard")
        reason = require_reason(body)

        async def run() -> tuple[int, dict[str, Any]]:
            return await asyncio.to_thread(ops.dead_letter, row_id, action, who, reason)

        return await act(who, f"dead_letter_{action}", reason, run, target=f"outbound:{row_id}")

    return router


def ops_pages_router(ctx: OpsContext) -> APIRouter:
    """/ui/ops: the console page (read from the same functions; its forms post to the API)."""
    from api.web import NAV, when

    router = APIRouter(include_in_schema=False)
    templates = Jinja2Templates(directory=TEMPLATES)
    templates.env.globals["nav"] = NAV
    templates.env.filters["when"] = when

    @router.get("/ui/ops")
    async def console(request: Request, who: Annotated[Principal, Depends(OPERATIONS)]) -> HTMLResponse:
        exams = await asyncio.to_thread(stuck_exams, ctx.projections_db, rules_or_503(ctx), _now())
        workflows: list[dict[str, Any]] = []
        temporal_error = ""
        try:
            workflows = await failing_workflows(await ctx.connect())
        except (RPCError, TimeoutError, OSError, RuntimeError) as error:
            temporal_error = str(error)[:300] or type(error).__name__
        dead = await asyncio.to_thread(ctx.outbound.search, status="dead", limit=200)
        return templates.TemplateResponse(
            request,
            "ops.html",
            {
                "user": who.username,
                "active": "/ui/ops",
                "exams": exams,
                "workflows": workflows,
                "dead_letters": dead,
                "temporal_error": temporal_error,
                "projections": projection_positions(ctx),
                "actions": ctx.journal.recent(limit=20),
                "forced": forced_moves(),
            },
        )

    return router


def forced_moves() -> list[dict[str, str]]:
    from domain.lifecycle import FORCED_TRANSITIONS

    return [
        {"source": s.value, "target": t.value, "case": case} for (s, t), case in FORCED_TRANSITIONS.items()
    ]
