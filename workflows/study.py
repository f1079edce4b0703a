"""StudyWorkflow: one per stored study no exam could claim (`study-<Study Instance UID>`).

It applies the study's batches in order while it waits for reconciliation, and finishes after a
quiet hour; a later batch simply starts it again. Once linked, batches go to the exam instead.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.command_queue import CommandQueue

IDLE = timedelta(hours=1)


@workflow.defn(name="StudyWorkflow")
class StudyWorkflow:
    def __init__(self) -> None:
        self._queue = CommandQueue()

    @workflow.run
    async def run(self, carried: dict[str, Any] | None) -> str | None:
        return await self._queue.serve(carried, finished=frozenset(), idle=IDLE)

    @workflow.signal(name="submit")
    def submit(self, command: dict[str, Any]) -> None:
        self._queue.submit(command)

    @workflow.query(name="state")
    def state(self) -> str | None:
        return self._queue.state
