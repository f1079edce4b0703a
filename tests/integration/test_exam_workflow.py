"""Exam and patient workflows on the session's Temporal dev server, with an in-process worker on
its own task queue applying commands to a real SQLite event store and message log."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.apply_command import CommandActivities
from adapters.event_store import EventStore, open_event_store
from adapters.message_log import MessageLog
from adapters.settings import Settings
from adapters.sql import Database
from domain.exam import exam_id
from domain.patient import Patient, patient_id
from interfaces.hl7.relay import Relay
from tests.integration.builders import adt_a08, cancel_order, orm, place_order, record
from workflows.exam import ExamWorkflow
from workflows.patient import PatientWorkflow

pytestmark = pytest.mark.temporal

T = TypeVar("T")


@dataclass
class Radflow:
    """A worker's worth of radflow: its client, task queue, event store and message log."""

    client: Client
    task_queue: str
    store: EventStore
    log: MessageLog

    async def submit(self, workflow_id: str, command: dict[str, Any]) -> WorkflowHandle[Any, Any]:
        """What the relay does: signal-with-start, so the first command creates the workflow."""
        workflow_type = "PatientWorkflow" if workflow_id.startswith("patient-") else "ExamWorkflow"
        return await self.client.start_workflow(
            workflow_type,
            None,
            id=workflow_id,
            task_queue=self.task_queue,
            start_signal="submit",
            start_signal_args=[command],
        )


@pytest.fixture
async def radflow(temporal_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Radflow]:
    settings = Settings(data_dir=tmp_path, database_url="")
    store = open_event_store(settings)
    db = Database.for_file(settings, settings.messages_sqlite_path)
    log = MessageLog(db)
    log.create_schema()
    task_queue = f"integration-{uuid.uuid4().hex[:8]}"
    activities = CommandActivities(store, log)
    try:
        with ThreadPoolExecutor(max_workers=4) as executor:
            async with Worker(
                temporal_env.client,
                task_queue=task_queue,
                workflows=[ExamWorkflow, PatientWorkflow],
                activities=[activities.apply_command],
                activity_executor=executor,
            ):
                yield Radflow(temporal_env.client, task_queue, store, log)
    finally:
        db.close()
        store.close()


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout: float = 15.0) -> T:
    """Poll until `probe` returns something truthy (a workflow query, a log row)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(0.05)


async def finished(handle: WorkflowHandle[Any, Any], timeout: float = 15.0) -> Any:
    """The workflow's result; a workflow that never ends fails the test instead of hanging it."""
    return await asyncio.wait_for(handle.result(), timeout)


async def query_state(handle: WorkflowHandle[Any, Any]) -> str | None:
    return await handle.query("state")  # type: ignore[no-any-return]


async def applied(log: MessageLog, row_id: int) -> dict[str, Any] | None:
    """The log row once the workflow has recorded what applying it did, else None."""
    row = await asyncio.to_thread(log.get, row_id)
    return row if row is not None and row["applied_status"] else None


def event_names(store: EventStore, accession: str) -> list[str]:
    return [type(e).__name__ for e in store.events_of(exam_id(accession))]


async def test_signal_with_start_creates_the_exam_and_the_state_query_reports_it(radflow: Radflow) -> None:
    accession = f"ACC{uuid.uuid4().hex[:8]}"

    handle = await radflow.submit(f"exam-{accession}", place_order(accession, f"test:{accession}:1"))

    assert await eventually(lambda: query_state(handle)) == "ordered"
    assert event_names(radflow.store, accession) == ["ExamOrdered"]
    [event] = radflow.store.events_of(exam_id(accession))
    assert cast(Any, event).provenance["source"]["message_id"] == f"test:{accession}:1"
    description = await handle.describe()
    assert description.status == WorkflowExecutionStatus.RUNNING
    assert description.workflow_type == "ExamWorkflow"


async def test_a_repeated_signal_with_the_same_message_id_is_applied_once(radflow: Radflow) -> None:
    accession = f"ACC{uuid.uuid4().hex[:8]}"
    order = place_order(accession, f"test:{accession}:1")
    handle = await radflow.submit(f"exam-{accession}", order)
    await eventually(lambda: query_state(handle))

    await radflow.submit(f"exam-{accession}", order)  # the relay retrying after a crash
    await handle.signal("submit", order)
    await handle.signal("submit", cancel_order(accession, f"test:{accession}:2"))

    assert await finished(handle) == "cancelled"
    assert event_names(radflow.store, accession) == ["ExamOrdered", "ExamCancelled"]
    # the repeats never reached the activity: the workflow dropped them by message id
    outcomes = await handle.query("outcomes")
    assert [o["status"] for o in outcomes] == ["applied", "applied"]


async def test_a_cancel_moves_the_exam_to_cancelled_and_completes_the_workflow(radflow: Radflow) -> None:
    accession = f"ACC{uuid.uuid4().hex[:8]}"
    handle = await radflow.submit(f"exam-{accession}", place_order(accession, f"test:{accession}:1"))

    await radflow.submit(
        f"exam-{accession}", cancel_order(accession, f"test:{accession}:2", reason="patient declined")
    )

    assert await finished(handle) == "cancelled"
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    assert await query_state(handle) == "cancelled"
    cancelled = radflow.store.events_of(exam_id(accession))[-1]
    assert type(cancelled).__name__ == "ExamCancelled"
    assert cast(Any, cancelled).reason == "patient declined"


async def test_a_cancel_of_an_unknown_exam_is_recorded_as_refused_and_the_workflow_carries_on(
    radflow: Radflow,
) -> None:
    accession = f"ACC{uuid.uuid4().hex[:8]}"
    # the log accepts the cancel because it knows of the order, but the order never reached
    # the workflow: the cancel arrives first, sent directly rather than through the relay
    order_row = record(radflow.log, orm(accession, "NW", f"{accession}-1"))
    cancel_row = record(radflow.log, orm(accession, "CA", f"{accession}-2"))
    assert (order_row.status, cancel_row.status) == ("accepted", "accepted")

    handle = await radflow.submit(f"exam-{accession}", cancel_order(accession, f"hl7:{cancel_row.id}"))

    row = await eventually(lambda: applied(radflow.log, cancel_row.id))
    assert row["applied_status"] == "refused"
    assert row["applied_reason"] == f"exam {accession}: no such order"
    assert radflow.store.get_or_none(exam_id(accession)) is None
    assert await query_state(handle) is None
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING

    await handle.signal("submit", place_order(accession, f"hl7:{order_row.id}"))
    assert await eventually(lambda: query_state(handle)) == "ordered"
    outcomes = await handle.query("outcomes")
    assert [o["status"] for o in outcomes] == ["refused", "applied"]


async def test_the_relay_moves_accepted_log_rows_to_their_workflows(radflow: Radflow) -> None:
    accession, patient = f"ACC{uuid.uuid4().hex[:8]}", f"P{uuid.uuid4().hex[:8]}"
    order = record(radflow.log, orm(accession, "NW", f"{accession}-1", patient_id=patient))
    duplicate = record(radflow.log, orm(accession, "NW", f"{accession}-1", patient_id=patient))
    update = record(radflow.log, adt_a08(patient, "ROE^JANE", f"{accession}-2"))
    cancel = record(radflow.log, orm(accession, "CA", f"{accession}-3", patient_id=patient))
    assert duplicate.status == "duplicate"
    relay = Relay(radflow.log, radflow.client, radflow.task_queue)

    moved = await relay.relay_once(limit=10_000)

    assert moved == 3  # the duplicate stays behind: its original carries the command
    assert radflow.log.unrelayed() == []
    for row_id in (order.id, update.id, cancel.id):
        assert radflow.log.get(row_id)["relayed_at"]  # type: ignore[index]
    exam = radflow.client.get_workflow_handle(f"exam-{accession}")
    assert await finished(exam) == "cancelled"
    assert event_names(radflow.store, accession) == ["ExamOrdered", "ExamCancelled"]
    patient_workflow = radflow.client.get_workflow_handle(f"patient-HOSP|{patient}")
    assert await eventually(lambda: query_state(patient_workflow)) == "registered"
    registered: Patient = radflow.store.repository.get(patient_id(f"HOSP|{patient}"))
    assert registered.demographics["name"] == "ROE^JANE"

    rows = [await eventually(lambda r=r: applied(radflow.log, r)) for r in (order.id, update.id, cancel.id)]  # type: ignore[misc]
    assert [r["applied_status"] for r in rows] == ["applied"] * 3
    assert await relay.relay_once() == 0
