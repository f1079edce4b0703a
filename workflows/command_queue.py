"""The part every aggregate workflow shares: take commands by signal, apply them one at a time
in arrival order through the `apply_command` activity, and drop repeats by message id."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta
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
        # when an outcome asks for a later check (e.g. images still awaited), the moment it is
        # due; `on_due` builds the command the queue then applies
        self.due_at: datetime | None = None
        self.on_due: Callable[[datetime], dict[str, Any]] | None = None

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
            wait_s = outcome.get("awaiting_images_s")
            if wait_s is None:
                self.due_at = None
            elif self.due_at is None:
                self.due_at = workflow.now() + timedelta(seconds=float(wait_s))

    def resume(self, carried: dict[str, Any] | None) -> None:
        """Take over a previous run's state; signals that arrived before `run` stay queued."""
        if not carried:
            return
        early = list(self.pending)
        self.pending = deque(carried.get("pending", []))
        self.seen = list(carried.get("seen", []))
        self.state = carried.get("state")
        due = carried.get("due_at")
        self.due_at = datetime.fromisoformat(due) if due else None
        for command in early:
            self.submit(command)

    async def serve(
        self, carried: dict[str, Any] | None, finished: frozenset[str], idle: timedelta | None = None
    ) -> str | None:
        """Apply commands as they come until the state is one of `finished` (or, with `idle`,
        until nothing came for that long); continue as new when the history grows long."""
        self.resume(carried)
        while True:
            if not await self._wait_for_work(idle):
                return self.state
            await self.drain()
            if self.state in finished:
                return self.state
            if self.should_continue_as_new():
                workflow.continue_as_new(self.carry())

    async def _wait_for_work(self, idle: timedelta | None) -> bool:
        """False when idle for `idle`; a due check becomes a pending command when it is due."""
        while not self.pending:
            timeout = idle
            if self.due_at is not None and self.on_due is not None:
                remaining = max(self.due_at - workflow.now(), timedelta(0))
                timeout = remaining if timeout is None else min(timeout, remaining)
            try:
                await workflow.wait_condition(lambda: bool(self.pending), timeout=timeout)
            except TimeoutError:
                if self.due_at is not None and self.on_due is not None and workflow.now() >= self.due_at:
                    self.submit(self.on_due(self.due_at))
                    self.due_at = None
                elif self.due_at is None:
                    return False
        return True

    def carry(self) -> dict[str, Any]:
        return {
            "pending": list(self.pending),
            "seen": self.seen,
            "state": self.state,
            "due_at": self.due_at.isoformat() if self.due_at else None,
        }

    @staticmethod
    def should_continue_as_new() -> bool:
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_length() > HISTORY_LIMIT
