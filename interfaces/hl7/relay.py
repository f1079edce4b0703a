"""The relay: accepted messages from the log to their workflows by signal-with-start.

At-least-once: a row is marked relayed only after every workflow it names took its signal;
the workflows and aggregates drop repeats by message id. Order per workflow follows the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from typing import Any

from temporalio.client import Client

from adapters.message_log import MessageLog

log = logging.getLogger("radflow.relay")

SIGNAL = "submit"


def workflow_type_for(workflow_id: str) -> str:
    return "PatientWorkflow" if workflow_id.startswith("patient-") else "ExamWorkflow"


class Relay:
    def __init__(self, message_log: MessageLog, client: Client, task_queue: str) -> None:
        self._log = message_log
        self._client = client
        self._task_queue = task_queue
        self._wake = asyncio.Event()
        self.relayed = 0
        self.last_error = ""

    def wake(self) -> None:
        self._wake.set()

    async def run_forever(self) -> None:
        backoff = 0.5
        while True:
            self._wake.clear()
            try:
                moved = await self.relay_once()
                backoff = 0.5
            except Exception as error:  # Temporal or the log unavailable: wait and retry
                self.last_error = str(error)
                log.warning("relay failed, retrying", extra={"error": str(error)[:300], "in_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if moved == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)

    async def relay_once(self, limit: int = 200) -> int:
        rows = await asyncio.to_thread(self._log.unrelayed, limit)
        if not rows:
            return 0
        by_workflow: OrderedDict[str, list[tuple[int, dict[str, Any]]]] = OrderedDict()
        for row in rows:
            for entry in row["commands"]:
                by_workflow.setdefault(entry["workflow_id"], []).append((row["id"], entry["command"]))
        failed: set[int] = set()
        gate = asyncio.Semaphore(16)

        async def deliver(workflow_id: str, items: list[tuple[int, dict[str, Any]]]) -> None:
            async with gate:
                for row_id, command in items:
                    try:
                        await self._client.start_workflow(
                            workflow_type_for(workflow_id),
                            None,
                            id=workflow_id,
                            task_queue=self._task_queue,
                            start_signal=SIGNAL,
                            start_signal_args=[command],
                        )
                    except Exception as error:
                        # later rows of this workflow wait, so its order is kept
                        failed.update(r for r, _ in items[items.index((row_id, command)):])
                        self.last_error = str(error)
                        await asyncio.to_thread(self._log.mark_relay_failed, row_id, str(error)[:500])
                        return

        await asyncio.gather(*(deliver(wid, items) for wid, items in by_workflow.items()))
        done = [row["id"] for row in rows if row["id"] not in failed]
        await asyncio.to_thread(self._log.mark_relayed, done)
        self.relayed += len(done)
        if failed:
            raise RuntimeError(f"{len(failed)} messages not relayed: {self.last_error}")
        return len(done)
