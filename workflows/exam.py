"""ExamWorkflow: one per exam (`exam-<accession>`), living from order to a terminal state.

Machines signal commands (`submit`: HL7, DICOM, timers). People act through the `read` update
(claim, draft, sign, addendum, acknowledge a critical result): its validator refuses an
illegal action at once, from the reading summary the last outcome left, and the handler
returns the command's outcome (or its refusal) once the activity applied it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from domain.lifecycle import TERMINAL_STATES
    from domain.report import action_of, refusal
    from workflows.command_queue import CommandQueue, dedupe_key

FINISHED = frozenset(state.value for state in TERMINAL_STATES)
# a timer's name -> the command kind the exam then applies
TIMER_COMMANDS = {
    "images": "check_images",
    "turnaround": "check_turnaround",
    "critical": "check_critical_result",
}


@workflow.defn(name="ExamWorkflow")
class ExamWorkflow:
    def __init__(self) -> None:
        self._queue = CommandQueue()
        self._queue.on_due = self._timer_due

    def _timer_due(self, name: str, due_at: datetime) -> dict[str, Any]:
        """A wait ran out: the command that checks it. Deterministic, so a replay builds the
        same command (and its message id makes a repeat a no-op)."""
        accession = workflow.info().workflow_id.removeprefix("exam-")
        command: dict[str, Any] = {"kind": TIMER_COMMANDS[name], "accession": accession}
        control = f"{name}-timeout"
        if name == "critical":
            level = int(self._reading().get("critical_level", 0))
            command["level"] = level
            control = f"critical-timeout:{level}"
        elif name == "images":
            control = "images-timeout"
        command["provenance"] = {
            "actor": "radflow",
            "source": {
                "kind": "timer",
                "application": "radflow",
                "facility": "",
                "control_id": control,
                "message_id": f"{control}:{accession}:{due_at.isoformat()}",
            },
            "occurred_at": due_at.isoformat(),
            "schema_version": 1,
            "extra": {},
        }
        return command

    def _reading(self) -> dict[str, Any]:
        for outcome in reversed(self._queue.outcomes):
            if "reading" in outcome:
                return dict(outcome["reading"])
        return {"exam_state": self._queue.state or ""}

    @workflow.run
    async def run(self, carried: dict[str, Any] | None) -> str | None:
        return await self._queue.serve(carried, finished=FINISHED)

    @workflow.signal(name="submit")
    def submit(self, command: dict[str, Any]) -> None:
        self._queue.submit(command)

    @workflow.update(name="read")
    async def read(self, command: dict[str, Any]) -> dict[str, Any]:
        """Apply a person's reading command and answer with its outcome; a refusal by the
        domain fails the update with the reason (nothing was changed)."""
        key = dedupe_key(command)
        if key not in self._queue.results:
            if key in self._queue.seen:
                return {"status": "duplicate", "state": self._queue.state, "reading": self._reading()}
            self._queue.submit(command)
            await workflow.wait_condition(lambda: key in self._queue.results)
        outcome = self._queue.results[key]
        if outcome.get("status") == "refused":
            raise ApplicationError(str(outcome.get("reason", "refused")), type="Refused", non_retryable=True)
        return outcome

    @read.validator
    def validate_read(self, command: dict[str, Any]) -> None:
        """Refuse at once, before anything is written to the history, what the summary already
        forbids. With commands still queued the summary may be stale: the activity decides. A
        repeat of an applied command is let through: the handler answers with its outcome."""
        key = dedupe_key(command)
        if self._queue.pending or key in self._queue.results or key in self._queue.seen:
            return
        action, user, has_text = action_of(command)
        why = refusal(self._reading(), action, user, workflow.now(), with_text=has_text)
        if why:
            raise ValueError(f"exam {command.get('accession', '')}: {why}")

    @workflow.query(name="state")
    def state(self) -> str | None:
        return self._queue.state

    @workflow.query(name="outcomes")
    def outcomes(self) -> list[dict[str, Any]]:
        return self._queue.outcomes
