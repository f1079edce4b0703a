"""The outbound dispatcher: queued rows to their lane workflow by signal-with-start.

At-least-once, like the inbound relay: a row is marked dispatched only after its lane took the
signal; the lane drops repeats by (row, generation) and the activity skips rows no longer
queued. Rows of one lane are signalled in id order, and a lane whose signal failed stops for
this pass, so a lane's order is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from typing import Any

from temporalio.client import Client

from activities.deliver_hl7 import DeliveryRequest
from adapters.outbound_config import Destinations
from adapters.outbound_log import OutboundLog
from workflows.outbound import SIGNAL, lane_workflow_id

log = logging.getLogger("radflow.outbound")


class OutboundDispatcher:
    def __init__(
        self, outbound: OutboundLog, destinations: Destinations, client: Client, task_queue: str
    ) -> None:
        self._outbound = outbound
        self._destinations = destinations
        self._client = client
        self._task_queue = task_queue
        self._wake = asyncio.Event()
        self.dispatched = 0
        self.last_error = ""

    def wake(self) -> None:
        self._wake.set()

    async def run_forever(self, poll_s: float = 0.2) -> None:
        backoff = 0.5
        while True:
            self._wake.clear()
            try:
                moved = await self.dispatch_once()
                backoff = 0.5
            except Exception as error:  # Temporal or the database unavailable: wait and retry
                self.last_error = str(error)
                log.warning("outbound dispatch failed, retrying", extra={"error": str(error)[:300]})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if moved == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=poll_s)

    async def dispatch_once(self, limit: int = 200) -> int:
        names = [d.name for d in self._destinations.items]
        rows = await asyncio.to_thread(self._outbound.undispatched, names, limit)
        if not rows:
            return 0
        lanes: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        for row in rows:
            lanes.setdefault(lane_workflow_id(row["destination"], row["lane"]), []).append(row)
        done: list[int] = []
        gate = asyncio.Semaphore(16)

        async def signal(workflow_id: str, lane_rows: list[dict[str, Any]]) -> None:
            async with gate:
                for row in lane_rows:
                    destination = self._destinations.by_name(row["destination"])
                    options = destination.delivery_options() if destination else {}
                    request = DeliveryRequest(
                        row_id=int(row["id"]), generation=int(row["generation"]), **options
                    )
                    try:
                        await self._client.start_workflow(
                            "OutboundLaneWorkflow",
                            None,
                            id=workflow_id,
                            task_queue=self._task_queue,
                            start_signal=SIGNAL,
                            start_signal_args=[request],
                        )
                    except Exception as error:
                        self.last_error = str(error)
                        log.warning(
                            "outbound lane not signalled",
                            extra={"lane": workflow_id, "error": str(error)[:300]},
                        )
                        return
                    done.append(int(row["id"]))

        await asyncio.gather(*(signal(wid, lane_rows) for wid, lane_rows in lanes.items()))
        await asyncio.to_thread(self._outbound.mark_dispatched, done)
        self.dispatched += len(done)
        return len(done)
