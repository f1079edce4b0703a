"""ExamWorkflow: one per exam (`exam-<accession>`), living from order to a terminal state."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from domain.lifecycle import TERMINAL_STATES
    from workflows.command_queue import CommandQueue

FINISHED = frozenset(state.value for state in TERMINAL_STATES)


@workflow.defn(name="ExamWorkflow")
class ExamWorkflow:
    def __init__(self) -> None:
        self._queue = CommandQueue()
        self._queue.on_due = self._images_due

    def _images_due(self, due_at: datetime) -> dict[str, Any]:
        """The wait for the instances the MPPS referenced ran out: ask the exam to record what
        is missing. Deterministic, so a replay builds the same command."""
        accession = workflow.info().workflow_id.removeprefix("exam-")
        return {
            "kind": "check_images",
            "accession": accession,
            "provenance": {
                "actor": "radflow",
                "source": {
                    "kind": "timer",
                    "application": "radflow",
                    "facility": "",
                    "control_id": "images-timeout",
                    "message_id": f"images-timeout:{accession}:{due_at.isoformat()}",
                },
                "occurred_at": due_at.isoformat(),
                "schema_version": 1,
                "extra": {},
            },
        }

    @workflow.run
    async def run(self, carried: dict[str, Any] | None) -> str | None:
        return await self._queue.serve(carried, finished=FINISHED)

    @workflow.signal(name="submit")
    def submit(self, command: dict[str, Any]) -> None:
        self._queue.submit(command)

    @workflow.query(name="state")
    def state(self) -> str | None:
        return self._queue.state

    @workflow.query(name="outcomes")
    def outcomes(self) -> list[dict[str, Any]]:
        return self._queue.outcomes
