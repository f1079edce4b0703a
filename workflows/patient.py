"""PatientWorkflow: one per patient identity (`patient-<issuer>|<id>`), serialising ADT."""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.command_queue import CommandQueue


@workflow.defn(name="PatientWorkflow")
class PatientWorkflow:
    def __init__(self) -> None:
        self._queue = CommandQueue(None)

    @workflow.run
    async def run(self, carried: dict[str, Any] | None) -> None:
        if carried:
            pending = list(self._queue.pending)
            self._queue = CommandQueue(carried)
            for command in pending:
                self._queue.submit(command)
        while True:
            await workflow.wait_condition(lambda: bool(self._queue.pending))
            await self._queue.drain()
            if CommandQueue.should_continue_as_new():
                workflow.continue_as_new(self._queue.carry())

    @workflow.signal(name="submit")
    def submit(self, command: dict[str, Any]) -> None:
        self._queue.submit(command)

    @workflow.query(name="state")
    def state(self) -> str | None:
        return self._queue.state
