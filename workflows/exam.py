"""ExamWorkflow: one per exam (`exam-<accession>`), living from order to a terminal state."""

from __future__ import annotations

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
