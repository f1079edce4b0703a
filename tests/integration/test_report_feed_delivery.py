"""Reports to downstream systems on the session's Temporal dev server: an exam and its Report
driven by their own methods and stored in the event store, the report feed projecting the
issued revisions into the outbound queue, and the dispatcher, the lane workflow and the
deliver_hl7 activity delivering each ORU^R01 to a python-hl7 peer that answers AA. Then the
exam's deliveries as GET /api/exams/{accession}/deliveries shows them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import hl7
import httpx
import pytest
from fastapi import FastAPI
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.deliver_hl7 import DeliveryActivities
from adapters.event_store import EventStore
from adapters.outbound_config import Destination, Destinations
from adapters.outbound_log import OutboundLog
from adapters.settings import Settings
from adapters.sql import Database
from api.exam_deliveries import exam_deliveries_router
from domain.commands import PatientDemographics
from domain.exam import Exam
from domain.report import Report, current_text
from interfaces.hl7.outbound_dispatcher import OutboundDispatcher
from projections.report_feed import ReportFeed
from projections.runner import ProjectionRunner
from tests.conftest import authorise
from tests.hl7_peer import PeerServer
from tests.unit.exam_builders import place_order, provenance
from tests.unit.test_report_feed import at
from workflows.outbound import OutboundLaneWorkflow

pytestmark = pytest.mark.temporal


@dataclass
class Delivery:
    log: OutboundLog
    feed: ProjectionRunner
    destination: Destination

    def rows(self, accession: str) -> list[dict[str, Any]]:
        return self.log.for_accession(accession)

    async def wait_delivered(self, accession: str, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.rows(accession)
            if len(rows) >= count and all(r["status"] == "delivered" for r in rows):
                return rows
            if time.monotonic() > deadline:
                states = [(r["status"], r["last_error"]) for r in rows]
                raise TimeoutError(f"{accession}: {states} after {timeout}s, wanted {count} delivered")
            await asyncio.sleep(0.05)


@pytest.fixture
async def delivery(
    temporal_env: WorkflowEnvironment, settings: Settings, store: EventStore, uid: str
) -> AsyncIterator[Any]:
    """A factory: delivery(port) runs the report feed, the worker and the dispatcher for one
    destination subscribed to reports of this test's modality only (the PostgreSQL store is
    shared with the session's other tests)."""
    db = Database.for_file(settings, settings.messages_sqlite_path)
    log = OutboundLog(db)
    log.create_schema()
    stack: list[Any] = []

    async def start(port: int) -> Delivery:
        destination = Destination(
            name=f"EHR_{uid}",
            host="127.0.0.1",
            port=port,
            events=("report",),
            modality=(f"M{uid}",),
            max_attempts=3,
            initial_backoff_s=0.1,
            max_backoff_s=0.2,
            ack_timeout_s=2.0,
        )
        destinations = Destinations(items=(destination,))
        feed = ProjectionRunner(store, db, ReportFeed(destinations))
        feed.create_schema()
        task_queue = f"reports-{uuid.uuid4().hex[:8]}"
        activities = DeliveryActivities(log, destinations)
        worker = Worker(
            temporal_env.client,
            task_queue=task_queue,
            workflows=[OutboundLaneWorkflow],
            activities=[activities.deliver_hl7, activities.dead_letter_hl7],
        )
        await worker.__aenter__()
        dispatcher = OutboundDispatcher(log, destinations, temporal_env.client, task_queue)
        task = asyncio.create_task(dispatcher.run_forever(poll_s=0.05))
        stack.append((worker, task))
        return Delivery(log, feed, destination)

    try:
        yield start
    finally:
        for worker, task in stack:
            task.cancel()
            await worker.__aexit__(None, None, None)
        db.close()


def completed_exam(store: EventStore, accession: str, patient: str, modality: str) -> Exam:
    order = place_order(accession)
    order = type(order)(
        **{
            **vars(order),
            "modality": modality,
            "patient": PatientDemographics(id=patient, issuer="HOSP", name="DOE^JANE", sex="F"),
            "placer_order_number": f"PL-{accession}",
            "filler_order_number": f"FI-{accession}",
        }
    )
    exam = Exam.place(order)
    store.save(exam)
    exam.schedule("2024-03-16T09:00:00", provenance())
    exam.start(provenance())
    exam.complete(provenance())
    store.save(exam)
    return exam


def sign(store: EventStore, exam: Exam, report: Report, kind: str, minute: int, text: str) -> None:
    """What the apply_command activity does for IssueReport: the Report issues the revision and
    the exam records it, both saved in one transaction."""
    by = at(minute)
    revision = report.issue(
        kind,
        "dr.house",
        {"findings": f"{text} | a^b & c\n\nsecond line", "impression": text},
        exam={
            **exam.order,
            "accession": exam.accession,
            "state": exam.state.value,
            "completed_at": exam.completed_at,
        },
        exam_state=exam.state.value,
        minutes=30,
        provenance=by,
    )
    exam.report(
        by,
        text=current_text(report.revisions),
        result_status=revision["result_status"],
        author="dr.house",
        reported_at=revision["signed_at"],
        source="radflow",
    )
    store.save(report, exam)


def ours(peer: PeerServer, accession: str) -> list[hl7.Message]:
    return [m for m in list(peer.received) if str(m.segment("OBR")[18]) == accession]


async def test_preliminary_final_and_addendum_reach_the_peer_in_order_and_acked(
    delivery: Any, store: EventStore, uid: str
) -> None:
    accession = f"A{uid}"
    with PeerServer() as peer:
        running = await delivery(peer.port)
        exam = completed_exam(store, accession, f"P{uid}", f"M{uid}")
        report = Report.open(accession, at(0))
        report.claim("dr.house", 30, exam.state.value, at(1))
        store.save(report)
        for minute, kind in enumerate(("preliminary", "final", "addendum"), start=2):
            sign(store, exam, report, kind, minute, f"{kind} text")
            running.feed.catch_up()
        rows = await running.wait_delivered(accession, 3)
        messages = ours(peer, accession)
        assert [str(m.segment("OBR")[25]) for m in messages] == ["P", "F", "C"]
        assert [str(m["MSH.F10"]) for m in messages] == [r["control_id"] for r in rows]
        for row in rows:
            assert row["attempts"] == 1 and row["message_type"] == "ORU^R01"
            ack = hl7.parse(row["last_ack"].replace("\n", "\r"))
            assert str(ack.segment("MSA")[1]) == "AA" and str(ack.segment("MSA")[2]) == row["control_id"]
        final = messages[1]
        assert (
            str(final.segment("OBR")[2]) == f"PL-{accession}"
            and str(final.segment("OBR")[3]) == f"FI-{accession}"
        )
        findings = [final.unescape(str(o[5])) for o in final.segments("OBX") if str(o[3][0][0]) == "59776-5"]
        assert findings == ["final text | a^b & c", "", "second line"]
        addendum = messages[2]
        headers = [
            addendum.unescape(str(o[5])) for o in addendum.segments("OBX") if str(o[3][0][0]) == "55107-7"
        ]
        assert headers[0].startswith("ADDENDUM 1 (dr.house, ")

        running.feed.rebuild()  # a replay of the whole store enqueues nothing again
        assert len(running.rows(accession)) == 3

        app = FastAPI()
        app.include_router(exam_deliveries_router(running.log))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t", headers=authorise(app)
        ) as client:
            body = (await client.get(f"/api/exams/{accession}/deliveries")).json()
        assert [(d["type"], d["result_status"], d["status"]) for d in body["deliveries"]] == [
            ("ORU^R01", "P", "delivered"),
            ("ORU^R01", "F", "delivered"),
            ("ORU^R01", "C", "delivered"),
        ]
        (summary,) = body["destinations"]
        assert summary["destination"] == f"EHR_{uid}" and summary["counts"] == {"delivered": 3}
        assert summary["latest"]["ORU^R01"]["control_id"] == rows[-1]["control_id"]


async def test_a_patients_reports_keep_their_order_while_another_patient_is_served(
    delivery: Any, store: EventStore, uid: str
) -> None:
    """Two exams of one patient share a lane: their reports arrive in signing order; a second
    patient's report travels in a lane of its own."""
    with PeerServer() as peer:
        running = await delivery(peer.port)
        signed: list[str] = []
        for n, patient in enumerate((f"P{uid}", f"P{uid}", f"Q{uid}")):
            accession = f"A{uid}{n}"
            exam = completed_exam(store, accession, patient, f"M{uid}")
            report = Report.open(accession, at(0))
            store.save(report)
            sign(store, exam, report, "final", 2 + n, f"exam {n}")
            signed.append(accession)
        running.feed.catch_up()
        for accession in signed:
            await running.wait_delivered(accession, 1)
        arrived = [str(m.segment("OBR")[18]) for m in list(peer.received)]
        first_patient = [a for a in arrived if a in signed[:2]]
        assert first_patient == signed[:2]
        lanes = {running.rows(a)[0]["lane"] for a in signed}
        assert lanes == {f"HOSP|P{uid}", f"HOSP|Q{uid}"}
