"""PatientWorkflow: one per patient identity (`patient-<issuer>|<id>`), serialising ADT.

A patient never finishes: the workflow continues as new when its history grows long.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.command_queue import CommandQueue


@workflow.defn(name="PatientWorkflow")
class PatientWorkflow:
    def __init__(self) -> None:
        self._queue = CommandQueue()

    @workflow.run
    async def run(self, carried: dict[str, Any] | None) -> None:
        await self._queue.serve(carried, finished=frozenset())

    @workflow.signal(name="submit")
    def submit(self, command: dict[str, Any]) -> None:
        self._queue.submit(command)

    @workflow.query(name="state")
    def state(self) -> str | None:
        return self._queue.state
