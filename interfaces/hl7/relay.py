"""The relay: accepted rows from the inbound logs (HL7 messages, MPPS) to their workflows by
signal-with-start.

At-least-once: a row is marked relayed only after every workflow it names took its signal;
the workflows and aggregates drop repeats by message id. Order per workflow follows arrival:
the logs are merged by the time each row was received, so an order taken over MLLP reaches
its exam before the MPPS that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

from temporalio.client import Client

log = logging.getLogger("radflow.relay")

SIGNAL = "submit"


class Outbox(Protocol):
    """An inbound log whose rows carry commands: [{workflow_id, command}], oldest id first."""

    def unrelayed(self, limit: int = 200) -> list[dict[str, Any]]: ...

    def mark_relayed(self, ids: list[int]) -> None: ...

    def mark_relay_failed(self, row_id: int, error: str) -> None: ...


def workflow_type_for(workflow_id: str) -> str:
    if workflow_id.startswith("patient-"):
        return "PatientWorkflow"
    if workflow_id.startswith("study-"):
        return "StudyWorkflow"
    return "ExamWorkflow"


def merge_pages(pages: Sequence[list[dict[str, Any]]], limit: int) -> list[tuple[int, dict[str, Any]]]:
    """(outbox index, row) in arrival order across outboxes, each outbox's own order kept.

    A full page may hide older rows behind it, so rows of the *other* outboxes received after
    its last row wait for the next pass; and once a row of an outbox waits, so do the rows
    after it in that outbox.
    """
    horizons = [page[-1]["received_at"] if len(page) >= limit else None for page in pages]
    ready: list[list[tuple[int, dict[str, Any]]]] = []
    for index, page in enumerate(pages):
        others = [h for i, h in enumerate(horizons) if i != index and h is not None]
        horizon = min(others) if others else None
        kept = []
        for row in page:
            if horizon is not None and row["received_at"] > horizon:
                break
            kept.append((index, row))
        ready.append(kept)
    return list(heapq.merge(*ready, key=lambda item: (item[1]["received_at"], item[0])))


class Relay:
    """Outboxes are given in dependency order: HL7 log first, then the logs whose rows can
    only exist once an HL7 row does (MPPS)."""

    def __init__(self, outboxes: Outbox | Sequence[Outbox], client: Client, task_queue: str) -> None:
        self._outboxes: list[Outbox] = list(outboxes) if isinstance(outboxes, Sequence) else [outboxes]
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
        # last outbox first: a row of a later outbox may depend on a row of an earlier one (an
        # MPPS is accepted only once its order is committed), so reading the later one first
        # guarantees the rows it depends on are visible when the earlier one is read
        pages: list[list[dict[str, Any]]] = [[] for _ in self._outboxes]
        for index in reversed(range(len(self._outboxes))):
            pages[index] = await asyncio.to_thread(self._outboxes[index].unrelayed, limit)
        rows = merge_pages(pages, limit)
        if not rows:
            return 0
        Key = tuple[int, int]  # (outbox index, row id)
        by_workflow: OrderedDict[str, list[tuple[Key, dict[str, Any]]]] = OrderedDict()
        for index, row in rows:
            for entry in row["commands"]:
                by_workflow.setdefault(entry["workflow_id"], []).append(
                    ((index, row["id"]), entry["command"])
                )
        failed: set[Key] = set()
        gate = asyncio.Semaphore(16)

        async def deliver(workflow_id: str, items: list[tuple[Key, dict[str, Any]]]) -> None:
            async with gate:
                for position, (key, command) in enumerate(items):
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
                        failed.update(k for k, _ in items[position:])
                        self.last_error = str(error)
                        outbox = self._outboxes[key[0]]
                        await asyncio.to_thread(outbox.mark_relay_failed, key[1], str(error)[:500])
                        return

        await asyncio.gather(*(deliver(wid, items) for wid, items in by_workflow.items()))
        done = 0
        for index, outbox in enumerate(self._outboxes):
            ids = [row["id"] for i, row in rows if i == index and (i, row["id"]) not in failed]
            await asyncio.to_thread(outbox.mark_relayed, ids)
            done += len(ids)
        self.relayed += done
        if failed:
            raise RuntimeError(f"{len(failed)} messages not relayed: {self.last_error}")
        return done
