"""`radflow listen`: the MLLP listener with its message log, the relay to Temporal, and the
DICOM AE. The ACK path never touches Temporal: a Temporal outage only delays the relay."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from adapters.message_log import MessageLog, MessageLogWriter
from adapters.mpps_log import MppsLog
from adapters.settings import Settings
from adapters.sql import Database
from adapters.temporal import connect
from api.signals import run_until_signalled
from interfaces.dicom.mpps import mpps_service
from interfaces.dicom.server import start_dicom_server
from interfaces.dicom.worklist import modality_worklist_service
from interfaces.hl7.listener import MllpListener
from interfaces.hl7.relay import Relay

log = logging.getLogger("radflow.listen")


async def run_listeners(settings: Settings, stop: asyncio.Event) -> None:
    message_log = MessageLog(Database.for_file(settings, settings.messages_sqlite_path))
    message_log.create_schema()
    mpps_log = MppsLog(message_log.db)
    mpps_log.create_schema()
    loop = asyncio.get_running_loop()
    relay: Relay | None = None

    def wake_relay() -> None:
        if relay is not None:
            loop.call_soon_threadsafe(relay.wake)

    writer = MessageLogWriter(message_log)
    listener = MllpListener(settings, writer, on_accepted=wake_relay)
    await listener.start()
    dicom = start_dicom_server(
        settings, [modality_worklist_service(settings), mpps_service(mpps_log, on_accepted=wake_relay)]
    )
    relay_task: asyncio.Task[None] | None = None
    try:
        # the listener already ACKs; the relay joins when Temporal answers (or never, if
        # we are told to stop first)
        connecting = asyncio.create_task(connect(settings, wait_s=float("inf")))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if connecting.done() and not stop.is_set():
            relay = Relay([message_log, mpps_log], connecting.result(), settings.task_queue)
            relay_task = asyncio.create_task(relay.run_forever())
            wake_relay()
            await stopping
        connecting.cancel()
    finally:
        if relay_task is not None:
            relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay_task
        await listener.stop()
        dicom.shutdown()
        writer.close()


def main(settings: Settings) -> None:
    run_until_signalled(lambda stop: run_listeners(settings, stop))
