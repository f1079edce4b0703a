"""OutboundLaneWorkflow: one per (destination, patient) lane, id `outbound-<destination>-<lane>`.

Delivers its rows strictly one after the other through deliver_hl7, with the destination's
backoff and attempt limit as the activity's retry policy. A row that exhausts its attempts is a
dead letter and the lane goes on with the next: one poison message never blocks the rest.
Rows come by signal (signal-with-start from the dispatcher, at-least-once); repeats are
dropped by (row, generation), so a retried dead letter (a new generation) is taken again.
Idle lanes finish; the next signal-with-start opens a new run.
"""

from __future__ import annotations

from collections import deque
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.deliver_hl7 import DeadLetterRequest, DeliveryRequest

SIGNAL = "deliver"
IDLE = timedelta(minutes=5)
# beyond the ACK timeouts (connect, read): write and mark the row. It is also how long a worker
# killed mid-delivery holds the row before another worker tries again
CONNECT_MARGIN = timedelta(seconds=5)
REMEMBERED = 500
HISTORY_LIMIT = 5_000


def lane_workflow_id(destination: str, lane: str) -> str:
    return f"outbound-{destination}-{lane}"


def delivery_key(request: DeliveryRequest) -> str:
    return f"{request.row_id}:{request.generation}"


@workflow.defn(name="OutboundLaneWorkflow")
class OutboundLaneWorkflow:
    def __init__(self) -> None:
        self._pending: deque[DeliveryRequest] = deque()
        self._seen: list[str] = []
        self.results: dict[str, int] = {}

    @workflow.run
    async def run(self, carried: dict[str, Any] | None) -> dict[str, int]:
        if carried:
            early = list(self._pending)
            self._pending = deque(DeliveryRequest(**r) for r in carried.get("pending", []))
            self._seen = list(carried.get("seen", []))
            for request in early:
                self.deliver(request)
        while True:
            try:
                await workflow.wait_condition(lambda: bool(self._pending), timeout=IDLE)
            except TimeoutError:
                if not self._pending:
                    return self.results
            request = self._pending[0]
            outcome = await self._deliver(request)
            self._pending.popleft()
            self._seen = [*self._seen, delivery_key(request)][-REMEMBERED:]
            self.results[outcome] = self.results.get(outcome, 0) + 1
            info = workflow.info()
            if info.is_continue_as_new_suggested() or info.get_current_history_length() > HISTORY_LIMIT:
                workflow.continue_as_new({"pending": [vars(r) for r in self._pending], "seen": self._seen})

    async def _deliver(self, request: DeliveryRequest) -> str:
        try:
            outcome: str = await workflow.execute_activity(
                "deliver_hl7",
                request,
                start_to_close_timeout=timedelta(seconds=request.ack_timeout_s) * 2 + CONNECT_MARGIN,
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=request.initial_backoff_s),
                    backoff_coefficient=2.0,
                    maximum_interval=timedelta(seconds=request.max_backoff_s),
                    maximum_attempts=request.max_attempts,
                ),
                result_type=str,
            )
            return outcome
        except ActivityError as error:
            # attempts exhausted without the activity itself deciding (e.g. every attempt timed
            # out): the row becomes a dead letter here so the lane can move on
            cause = error.cause or error
            await workflow.execute_activity(
                "dead_letter_hl7",
                DeadLetterRequest(row_id=request.row_id, error=f"gave up: {cause}"[:1000]),
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
            )
            return "dead"

    @workflow.signal(name=SIGNAL)
    def deliver(self, request: DeliveryRequest) -> None:
        key = delivery_key(request)
        if key in self._seen or any(delivery_key(r) == key for r in self._pending):
            return
        self._pending.append(request)

    @workflow.query(name="pending")
    def pending(self) -> list[int]:
        return [r.row_id for r in self._pending]
