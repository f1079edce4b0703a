"""Reading and reporting through the exam workflow's `read` update on the session's Temporal dev
server: claims, drafts and signatures answered synchronously, refusals that change nothing,
the exam reported at final signature, critical results escalating on real timers and a
turnaround target breached."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import FailureError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.apply_command import CommandActivities
from adapters.event_store import EventStore, open_event_store
from adapters.reporting_config import ReportingRules
from adapters.settings import Settings
from domain.commands import CompleteProcedure, StartProcedure
from domain.exam import exam_id
from domain.report import report_id
from tests.integration.builders import cancel_order, place_order, provenance
from tests.integration.test_exam_workflow import eventually
from workflows.exam import ExamWorkflow

pytestmark = pytest.mark.temporal
SECOND = 1 / 60  # a minute of configuration, in minutes


@dataclass
class Reading:
    client: Client
    task_queue: str
    store: EventStore

    async def submit(self, command: dict[str, Any]) -> None:
        await self.client.start_workflow(
            "ExamWorkflow",
            None,
            id=f"exam-{command['accession']}",
            task_queue=self.task_queue,
            start_signal="submit",
            start_signal_args=[command],
        )

    async def act(self, kind: str, accession: str, user: str, **fields: Any) -> dict[str, Any]:
        request = uuid.uuid4().hex
        command = {
            "kind": kind,
            "accession": accession,
            **fields,
            "provenance": {
                "actor": user,
                "source": {
                    "kind": "api",
                    "application": "test",
                    "facility": "",
                    "control_id": request,
                    "message_id": f"api:{request}",
                },
                "occurred_at": datetime.now(UTC).isoformat(),
            },
        }
        handle = self.client.get_workflow_handle(f"exam-{accession}")
        return dict(await handle.execute_update("read", command, id=request))

    def events(self, accession: str) -> list[str]:
        exam = [type(e).__name__ for e in self.store.events_of(exam_id(accession))]
        report = [type(e).__name__ for e in self.store.events_of(report_id(accession))]
        return exam + report

    async def completed_exam(self, accession: str) -> None:
        await self.submit(place_order(accession, f"m-{accession}-1"))
        await self.submit(
            StartProcedure(
                provenance=provenance(f"m-{accession}-2"), accession=accession, mpps_uid=f"1.2.{accession}"
            ).as_dict()
        )
        await self.submit(
            CompleteProcedure(
                provenance=provenance(f"m-{accession}-3"), accession=accession, mpps_uid=f"1.2.{accession}"
            ).as_dict()
        )
        handle = self.client.get_workflow_handle(f"exam-{accession}")
        await eventually(lambda: _state_is(handle, "completed"))


async def _state_is(handle: Any, state: str) -> bool:
    return bool(await handle.query("state") == state)


def reading_fixture(rules: ReportingRules) -> Any:
    @pytest.fixture
    async def reading(temporal_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Reading]:
        store = open_event_store(Settings(data_dir=tmp_path, database_url=""))
        task_queue = f"reading-{uuid.uuid4().hex[:8]}"
        activities = CommandActivities(store, None, reporting=rules)
        try:
            with ThreadPoolExecutor(max_workers=4) as executor:
                async with Worker(
                    temporal_env.client,
                    task_queue=task_queue,
                    workflows=[ExamWorkflow],
                    activities=[activities.apply_command],
                    activity_executor=executor,
                ):
                    yield Reading(temporal_env.client, task_queue, store)
        finally:
            store.close()

    return reading


reading = reading_fixture(ReportingRules())
fast_reading = reading_fixture(
    ReportingRules(
        critical_ack_minutes=1.5 * SECOND,
        turnaround_minutes={"STAT": 2 * SECOND, "ROUTINE": 600},
    )
)

FINDINGS = {"findings": "No acute intracranial abnormality.", "impression": "Normal CT head."}


async def refused(call: Any, match: str) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as failed:
        await call
    cause = failed.value.cause
    reason = cause.message if isinstance(cause, FailureError) else str(failed.value)
    assert match in reason, reason
    return reason


async def test_claim_draft_sign_and_every_refusal_changes_nothing(reading: Reading) -> None:
    acc = f"R{uuid.uuid4().hex[:8]}"
    await reading.completed_exam(acc)
    claimed = await reading.act("claim_reading", acc, "dr.alice", radiologist="dr.alice")
    assert claimed["reading"]["claimed_by"] == "dr.alice"
    before = reading.events(acc)
    await refused(reading.act("claim_reading", acc, "dr.bob", radiologist="dr.bob"), "claimed by dr.alice")
    await refused(
        reading.act("save_report_draft", acc, "dr.bob", author="dr.bob", sections=FINDINGS),
        "claimed by dr.alice",
    )
    assert reading.events(acc) == before

    draft = await reading.act(
        "save_report_draft", acc, "dr.alice", author="dr.alice", sections={"findings": "No bleed."}
    )
    assert draft["reading"]["status"] == "draft"
    signed = await reading.act(
        "issue_report", acc, "dr.alice", author="dr.alice", report_kind="final", sections=FINDINGS
    )
    assert signed["state"] == "reported" and signed["reading"]["status"] == "final"
    report_events = [type(e).__name__ for e in reading.store.events_of(report_id(acc))]
    assert report_events == ["ReportOpened", "ReadingClaimed", "ReportDraftSaved", "ReportIssued"]
    assert "ExamReported" in reading.events(acc)

    before = reading.events(acc)
    await refused(
        reading.act(
            "issue_report", acc, "dr.alice", author="dr.alice", report_kind="final", sections=FINDINGS
        ),
        "already signed",
    )
    await refused(
        reading.act(
            "issue_report", acc, "dr.alice", author="dr.alice", report_kind="preliminary", sections=FINDINGS
        ),
        "write an addendum or a correction",
    )
    assert reading.events(acc) == before

    amended = await reading.act(
        "issue_report",
        acc,
        "dr.bob",
        author="dr.bob",
        report_kind="addendum",
        sections={"addendum": "Sinus disease."},
    )
    assert amended["reading"]["revisions"] == 2
    exam_events = [type(e).__name__ for e in reading.store.events_of(exam_id(acc))]
    assert exam_events.count("ExamReported") == 2  # final, then the addendum (C)


async def test_a_repeated_request_is_applied_once(reading: Reading) -> None:
    acc = f"R{uuid.uuid4().hex[:8]}"
    await reading.completed_exam(acc)
    command = {
        "kind": "issue_report",
        "accession": acc,
        "author": "dr.alice",
        "report_kind": "final",
        "sections": FINDINGS,
        "critical": False,
        "provenance": {
            "actor": "dr.alice",
            "source": {
                "kind": "api",
                "application": "test",
                "facility": "",
                "control_id": "r1",
                "message_id": f"api:{acc}:r1",
            },
            "occurred_at": datetime.now(UTC).isoformat(),
        },
    }
    handle = reading.client.get_workflow_handle(f"exam-{acc}")
    first = await handle.execute_update("read", command, id=f"{acc}-r1")
    again = await handle.execute_update("read", command, id=f"{acc}-r1-retry")  # a new update, same command
    assert first["state"] == again["state"] == "reported"
    assert reading.events(acc).count("ReportIssued") == 1


async def test_a_cancelled_exam_cannot_be_reported(reading: Reading) -> None:
    acc = f"R{uuid.uuid4().hex[:8]}"
    await reading.submit(place_order(acc, f"m-{acc}-1"))
    await reading.submit(cancel_order(acc, f"m-{acc}-2"))
    handle = reading.client.get_workflow_handle(f"exam-{acc}")
    assert await handle.result() == "cancelled"
    with pytest.raises(Exception, match="(?i)completed|not found"):
        await reading.act(
            "issue_report", acc, "dr.alice", author="dr.alice", report_kind="final", sections=FINDINGS
        )
    assert "ReportIssued" not in reading.events(acc)


async def test_an_exam_in_progress_is_refused_by_the_validator(reading: Reading) -> None:
    acc = f"R{uuid.uuid4().hex[:8]}"
    await reading.submit(place_order(acc, f"m-{acc}-1"))
    await reading.submit(
        StartProcedure(provenance=provenance(f"m-{acc}-2"), accession=acc, mpps_uid="1.2.3").as_dict()
    )
    handle = reading.client.get_workflow_handle(f"exam-{acc}")
    await eventually(lambda: _state_is(handle, "in_progress"))
    await refused(reading.act("claim_reading", acc, "dr.alice", radiologist="dr.alice"), "while in_progress")
    history = [e async for e in handle.fetch_history_events()]
    assert not any(e.HasField("workflow_execution_update_accepted_event_attributes") for e in history)


async def signed_critical(reading: Reading) -> str:
    """A completed exam whose final report was signed as a critical result; its accession."""
    acc = f"R{uuid.uuid4().hex[:8]}"
    await reading.completed_exam(acc)
    await reading.act(
        "issue_report",
        acc,
        "dr.alice",
        author="dr.alice",
        report_kind="final",
        sections=FINDINGS,
        critical=True,
    )
    return acc


async def test_critical_result_escalates_on_timers_and_turnaround_is_breached(fast_reading: Reading) -> None:
    # an unanswered critical result goes to the second contact, then the department
    acc = await signed_critical(fast_reading)

    def report_events() -> list[str]:
        return [type(e).__name__ for e in fast_reading.store.events_of(report_id(acc))]

    async def exhausted() -> bool:
        return "CriticalResultUnacknowledged" in report_events()

    await eventually(exhausted, timeout=20)
    assert report_events().count("CriticalResultEscalated") == 2
    escalated: list[Any] = [
        e
        for e in fast_reading.store.events_of(report_id(acc))
        if type(e).__name__ == "CriticalResultEscalated"
    ]
    assert [e.contact["role"] for e in escalated] == ["second_contact", "department"]
    ack = await fast_reading.act(
        "acknowledge_critical_result", acc, "ED desk", by="ED desk", note="called back"
    )
    assert ack["reading"]["critical"] == "acknowledged"

    # a STAT exam not signed within its target: the breach is an event, once
    late = f"R{uuid.uuid4().hex[:8]}"
    await fast_reading.completed_exam(late)

    async def breached() -> bool:
        return "ReportTurnaroundBreached" in fast_reading.events(late)

    await eventually(breached, timeout=20)
    await fast_reading.act(
        "issue_report", late, "dr.alice", author="dr.alice", report_kind="final", sections=FINDINGS
    )
    assert fast_reading.events(late).count("ReportTurnaroundBreached") == 1


async def test_acknowledged_in_time_stops_the_chain(fast_reading: Reading) -> None:
    acc = await signed_critical(fast_reading)
    await fast_reading.act("acknowledge_critical_result", acc, "Dr Ref", by="Dr Ref")
    await asyncio.sleep(2.5)  # past the first contact's deadline
    names = [type(e).__name__ for e in fast_reading.store.events_of(report_id(acc))]
    assert "CriticalResultEscalated" not in names and names.count("CriticalResultAcknowledged") == 1
