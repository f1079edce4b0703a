"""`radflow listen`: the MLLP listener with its message log, the relay to Temporal, and the
DICOM AE (with RADFLOW_DICOM_PROCESSES > 1, the receivers sharing its port: dicom_processes.py).
The ACK path never touches Temporal: a Temporal outage only delays the relay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from adapters.dicom_config import load_dicom_config
from adapters.message_log import MessageLog, MessageLogWriter
from adapters.mpps_log import MppsLog
from adapters.settings import Settings
from adapters.sql import Database
from adapters.storage_log import StorageLog
from adapters.temporal import connect
from api.dicom_processes import Receivers, start_dicom_part
from api.signals import run_until_signalled
from interfaces.dicom.late_orders import Exam, link_late_arrivals
from interfaces.hl7.channels import load_channels
from interfaces.hl7.listener import MllpListener
from interfaces.hl7.relay import Relay

log = logging.getLogger("radflow.listen")


async def run_listeners(settings: Settings, stop: asyncio.Event) -> None:
    channels = load_channels(settings.hl7_config_dir)  # before any port opens: a bad file stops us
    message_log = MessageLog(Database.for_file(settings, settings.messages_sqlite_path))
    message_log.create_schema()
    mpps_log = MppsLog(message_log.db)
    mpps_log.create_schema()
    storage_log = StorageLog(message_log.db)
    storage_log.create_schema()
    dicom_config = load_dicom_config(settings.dicom_config, settings.dicom_peers)
    projections_db = Database.for_file(settings, settings.projections_sqlite_path)
    loop = asyncio.get_running_loop()
    relay: Relay | None = None

    def wake_relay() -> None:
        if relay is not None:
            loop.call_soon_threadsafe(relay.wake)

    writer = MessageLogWriter(message_log)
    listener = MllpListener(settings, writer, on_accepted=wake_relay, channels=channels)
    await listener.start()
    dicom = start_dicom_part(settings, message_log, projections_db, dicom_config, wake_relay)
    receivers = Receivers(settings, on_wake=wake_relay)
    receivers.start()
    dicom.server.dispatch = receivers.dispatch
    background = [
        asyncio.create_task(
            link_late_orders_forever(mpps_log, storage_log, worklist_exam(projections_db), wake_relay, stop),
            name="late-orders",
        ),
        asyncio.create_task(receivers.supervise(stop), name="dicom-receivers"),
    ]
    relay_task: asyncio.Task[None] | None = None
    try:
        # the listener already ACKs; the relay joins when Temporal answers (or never, if
        # we are told to stop first)
        connecting = asyncio.create_task(connect(settings, wait_s=float("inf")))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if connecting.done() and not stop.is_set():
            relay = Relay([message_log, mpps_log, storage_log], connecting.result(), settings.task_queue)
            relay_task = asyncio.create_task(relay.run_forever())
            wake_relay()
            await stopping
        connecting.cancel()
    finally:
        for task in background:
            task.cancel()
        if relay_task is not None:
            relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay_task
        await listener.stop()
        dicom.server.dispatch = None
        receivers.stop()
        dicom.stop()
        writer.close()


def worklist_exam(projections_db: Database) -> Callable[[str], Exam | None]:
    """The exam as the worklist shows it: present only once its order was applied."""

    def lookup(accession: str) -> Exam | None:
        try:
            rows = projections_db.query(
                "SELECT accession, patient_id, state FROM worklist WHERE accession = ?", (accession,)
            )
        except Exception:  # no worklist yet (fresh install)
            return None
        return Exam(rows[0]["accession"], rows[0]["patient_id"], rows[0]["state"]) if rows else None

    return lookup


async def link_late_orders_forever(
    mpps_log: MppsLog,
    storage_log: StorageLog,
    exam_of: Callable[[str], Exam | None],
    wake_relay: Callable[[], None],
    stop: asyncio.Event,
    poll_s: float = 1.0,
) -> None:
    """Every `poll_s`, link queued MPPS and studies whose order has arrived since."""
    while not stop.is_set():
        try:
            if await asyncio.to_thread(link_late_arrivals, mpps_log, storage_log, exam_of):
                wake_relay()
        except Exception:  # a database hiccup: try again at the next round
            log.exception("linking late orders failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), poll_s)


def main(settings: Settings) -> None:
    run_until_signalled(lambda stop: run_listeners(settings, stop))
