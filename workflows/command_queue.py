"""The part every aggregate workflow shares: take commands by signal, apply them one at a time
in arrival order through the `apply_command` activity, and drop repeats by message id."""

from __future__ import annotations

from collections import deque
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

# apply_command takes milliseconds; a short timeout means a worker killed mid-activity
# delays its exam by seconds, not a minute
APPLY_TIMEOUT = timedelta(seconds=10)
APPLY_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
)
REMEMBERED = 500  # message ids kept across continue-as-new for duplicate detection
HISTORY_LIMIT = 5_000


def dedupe_key(command: dict[str, Any]) -> str:
    source = command["provenance"]["source"]
    return source.get("message_id") or ":".join(
        (source["kind"], source["application"], source["facility"], source["control_id"])
    )


class CommandQueue:
    def __init__(self) -> None:
        self.pending: deque[dict[str, Any]] = deque()
        self.seen: list[str] = []
        self.state: str | None = None
        self.outcomes: list[dict[str, Any]] = []

    def submit(self, command: dict[str, Any]) -> None:
        key = dedupe_key(command)
        if key in self.seen or any(dedupe_key(c) == key for c in self.pending):
            return
        self.pending.append(command)

    async def drain(self) -> None:
        while self.pending:
            command = self.pending[0]
            outcome: dict[str, Any] = await workflow.execute_activity(
                "apply_command",
                command,
                start_to_close_timeout=APPLY_TIMEOUT,
                retry_policy=APPLY_RETRY,
            )
            self.pending.popleft()
            self.seen = [*self.seen, dedupe_key(command)][-REMEMBERED:]
            self.state = outcome.get("state") or self.state
            self.outcomes = [*self.outcomes, outcome][-20:]

    def resume(self, carried: dict[str, Any] | None) -> None:
        """Take over a previous run's state; signals that arrived before `run` stay queued."""
        if not carried:
            return
        early = list(self.pending)
        self.pending = deque(carried.get("pending", []))
        self.seen = list(carried.get("seen", []))
        self.state = carried.get("state")
        for command in early:
            self.submit(command)

    async def serve(self, carried: dict[str, Any] | None, finished: frozenset[str]) -> str | None:
        """Apply commands as they come until the state is one of `finished`; continue as new
        when the history grows long."""
        self.resume(carried)
        while True:
            await workflow.wait_condition(lambda: bool(self.pending))
            await self.drain()
            if self.state in finished:
                return self.state
            if self.should_continue_as_new():
                workflow.continue_as_new(self.carry())

    def carry(self) -> dict[str, Any]:
        return {"pending": list(self.pending), "seen": self.seen, "state": self.state}

    @staticmethod
    def should_continue_as_new() -> bool:
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_length() > HISTORY_LIMIT
