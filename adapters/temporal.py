"""Connecting to Temporal: the embedded dev server or a configured cluster."""

from __future__ import annotations

import asyncio
import logging

from temporalio.client import Client

from adapters.settings import Settings

log = logging.getLogger("radflow.temporal")


async def connect(settings: Settings, *, wait_s: float = 60.0) -> Client:
    """Connect, retrying while the server starts (the supervisor starts both at once)."""
    deadline = asyncio.get_running_loop().time() + wait_s
    delay = 0.2
    while True:
        try:
            return await Client.connect(settings.temporal_target, namespace=settings.temporal_namespace)
        except Exception as error:
            if asyncio.get_running_loop().time() > deadline:
                raise
            log.info(
                "temporal not reachable yet",
                extra={"target": settings.temporal_target, "error": str(error)[:200]},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
