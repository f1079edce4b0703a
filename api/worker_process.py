"""`radflow worker`: the Temporal worker (exam, patient and study workflows, apply_command) and the
projection runners, in one process so that an append wakes the projections at once."""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from temporalio.worker import Worker

from activities.apply_command import CommandActivities
from activities.deliver_hl7 import DeliveryActivities
from adapters.event_store import open_event_store
from adapters.message_log import MessageLog
from adapters.mpps_log import MppsLog
from adapters.outbound_config import load_destinations
from adapters.outbound_log import OutboundLog
from adapters.reporting_config import load_reporting_rules
from adapters.settings import Settings
from adapters.sql import Database
from adapters.storage_log import StorageLog
from adapters.temporal import connect
from api.signals import run_until_signalled
from interfaces.hl7.outbound_dispatcher import OutboundDispatcher
from projections.audit_chain import AuditChainProjection
from projections.order_status_feed import OrderStatusFeed
from projections.pacs_index import PacsIndexProjection
from projections.reading_worklist import ReadingWorklistProjection
from projections.report_feed import ReportFeed
from projections.runner import ProjectionRunner
from projections.worklist import WorklistProjection
from workflows.exam import ExamWorkflow
from workflows.outbound import OutboundLaneWorkflow
from workflows.patient import PatientWorkflow
from workflows.study import StudyWorkflow

log = logging.getLogger("radflow.worker")


def projection_runners(settings: Settings) -> list[ProjectionRunner]:
    store = open_event_store(settings)
    db = Database.for_file(settings, settings.projections_sqlite_path)
    runners = [
        ProjectionRunner(store, db, WorklistProjection()),
        ProjectionRunner(store, db, PacsIndexProjection()),
        ProjectionRunner(store, db, ReadingWorklistProjection(load_reporting_rules(settings.hl7_config_dir))),
        ProjectionRunner(store, db, AuditChainProjection(store)),  # tamper evidence (radflow audit verify)
    ]
    for runner in runners:
        runner.create_schema()
    return runners


def message_log(settings: Settings) -> MessageLog:
    log_ = MessageLog(Database.for_file(settings, settings.messages_sqlite_path))
    log_.create_schema()
    return log_


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    # read first: an invalid destinations.yaml stops the worker before it takes any work
    destinations = load_destinations(settings.hl7_config_dir)
    reporting = load_reporting_rules(settings.hl7_config_dir)
    store = open_event_store(settings)
    runners = projection_runners(settings)
    # the order status feed runs over the messages database, where the outbound queue lives
    outbound = OutboundLog(Database.for_file(settings, settings.messages_sqlite_path))
    outbound.create_schema()
    feed = ProjectionRunner(store, outbound.db, OrderStatusFeed(destinations))
    feed.create_schema()
    runners.append(feed)
    reports = ProjectionRunner(store, outbound.db, ReportFeed(destinations))  # ORU^R01, same queue
    reports.create_schema()
    runners.append(reports)
    threads = [
        threading.Thread(target=r.run_forever, name=f"projection-{r.projection.name}", daemon=True)
        for r in runners
    ]
    for thread in threads:
        thread.start()

    def wake_projections() -> None:
        for runner in runners:
            runner.wake()

    messages = message_log(settings)
    mpps_log = MppsLog(messages.db)
    mpps_log.create_schema()
    storage_log = StorageLog(messages.db)
    storage_log.create_schema()
    activities = CommandActivities(
        store,
        messages,
        on_saved=wake_projections,
        other_logs=[mpps_log, storage_log],
        images_timeout_s=settings.images_timeout_s,
        reporting=reporting,
    )
    client = await connect(settings)
    delivery = DeliveryActivities(outbound, destinations)
    dispatcher = OutboundDispatcher(outbound, destinations, client, settings.task_queue)
    loop = asyncio.get_running_loop()

    def wake_dispatcher() -> None:  # from a runner's thread
        loop.call_soon_threadsafe(dispatcher.wake)

    for queueing in (feed, reports):  # what a feed queued goes out now, not at the next poll
        queueing.on_applied = wake_dispatcher
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="activity") as executor:
        worker = Worker(
            client,
            task_queue=settings.task_queue,
            workflows=[ExamWorkflow, PatientWorkflow, StudyWorkflow, OutboundLaneWorkflow],
            activities=[activities.apply_command, delivery.deliver_hl7, delivery.dead_letter_hl7],
            activity_executor=executor,
        )
        log.info("worker started", extra={"task_queue": settings.task_queue})
        async with worker:
            dispatching = asyncio.create_task(dispatcher.run_forever(), name="outbound-dispatcher")
            await stop.wait()
            dispatching.cancel()
    for runner in runners:
        runner.stop()


def main(settings: Settings) -> None:
    run_until_signalled(lambda stop: run_worker(settings, stop))
