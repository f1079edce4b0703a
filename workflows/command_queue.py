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


RESULTS_KEPT = 200  # outcomes by command key, for updates waiting on their command


class CommandQueue:
    def __init__(self) -> None:
        self.pending: deque[dict[str, Any]] = deque()
        self.seen: list[str] = []
        self.state: str | None = None
        self.outcomes: list[dict[str, Any]] = []
        self.results: dict[str, dict[str, Any]] = {}
        # when an outcome asks for a later check (images still awaited, a report's turnaround
        # target, a critical result's acknowledgement), the moment each is due by name;
        # `on_due(name, due_at)` builds the command the queue then applies
        self.timers: dict[str, datetime] = {}
        self.on_due: Callable[[str, datetime], dict[str, Any]] | None = None

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
            key = dedupe_key(command)
            self.seen = [*self.seen, key][-REMEMBERED:]
            self.results[key] = outcome
            while len(self.results) > RESULTS_KEPT:
                del self.results[next(iter(self.results))]
            self.state = outcome.get("state") or self.state
            self.outcomes = [*self.outcomes, outcome][-20:]
            self._set_timers(outcome)

    def _set_timers(self, outcome: dict[str, Any]) -> None:
        wait_s = outcome.get("awaiting_images_s")
        if wait_s is None:
            self.timers.pop("images", None)
        elif "images" not in self.timers:
            self.timers["images"] = workflow.now() + timedelta(seconds=float(wait_s))
        for name, due in (outcome.get("timers") or {}).items():
            if due:
                self.timers[name] = datetime.fromisoformat(due)
            else:
                self.timers.pop(name, None)

    def resume(self, carried: dict[str, Any] | None) -> None:
        """Take over a previous run's state; signals that arrived before `run` stay queued."""
        if not carried:
            return
        early = list(self.pending)
        self.pending = deque(carried.get("pending", []))
        self.seen = list(carried.get("seen", []))
        self.state = carried.get("state")
        self.timers = {name: datetime.fromisoformat(at) for name, at in (carried.get("timers") or {}).items()}
        if carried.get("due_at"):  # carried by a run from before named timers
            self.timers["images"] = datetime.fromisoformat(carried["due_at"])
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
                break
            await self.drain()
            if self.state in finished:
                break
            if self.should_continue_as_new():
                # an update still waiting for its outcome must get it from this run
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self.carry())
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.state

    async def _wait_for_work(self, idle: timedelta | None) -> bool:
        """False when idle for `idle`; a timer becomes a pending command when it is due."""
        while not self.pending:
            timers = self.timers if self.on_due is not None else {}
            timeout = idle
            if timers:
                remaining = max(min(timers.values()) - workflow.now(), timedelta(0))
                timeout = remaining if timeout is None else min(timeout, remaining)
            try:
                await workflow.wait_condition(lambda: bool(self.pending), timeout=timeout)
            except TimeoutError:
                now = workflow.now()
                due = [(name, at) for name, at in timers.items() if at <= now]
                for name, at in due:
                    del self.timers[name]
                    if self.on_due is not None:
                        self.submit(self.on_due(name, at))
                if not due and not timers:
                    return False
        return True

    def carry(self) -> dict[str, Any]:
        return {
            "pending": list(self.pending),
            "seen": self.seen,
            "state": self.state,
            "timers": {name: at.isoformat() for name, at in self.timers.items()},
        }

    @staticmethod
    def should_continue_as_new() -> bool:
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_length() > HISTORY_LIMIT
