"""Running a long-lived part until SIGINT or SIGTERM asks it to stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any


def run_until_signalled(part: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run `part(stop)`; a signal sets `stop` so the part can finish its work and return."""

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await part(stop)

    asyncio.run(_main())
