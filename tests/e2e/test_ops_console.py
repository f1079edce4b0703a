"""The operations console end to end on the real Temporal dev server: a worker (workflows,
apply_command, projections) runs in this process on its own namespace and task queue, and the
ops and metrics routers answer over ASGI as an operations user. Thresholds are seconds long.

Each action is driven to its effect: retry now on an activity that keeps failing (a study link
for a study not stored yet), re-deliver a message the relay never sent, cancel, a forced
transition with its event and reason, rebuilding a workflow from the event store; the journal
keeps every one; a blank reason is a 400."""

from __future__ import annotations

import argparse
import asyncio
import io
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import redirect_stdout
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client, WorkflowExecutionStatus

from adapters.event_store import EventStore, open_event_store
from adapters.message_log import MessageLog
from adapters.ops_actions import OpsActions
from adapters.ops_config import load_ops_rules
from adapters.outbound_log import OutboundLog, QueuedMessage
from adapters.reporting_config import load_reporting_rules
from adapters.settings import Settings
from adapters.sql import Database
from api import ops_cli
from api.authz import Principal
from api.metrics import RadflowCollector, metrics_router
from api.ops import OPERATIONS, OpsContext, ops_pages_router, ops_router
from api.worker_process import run_worker
from domain.commands import LinkStudy, StartProcedure, StoreInstances
from domain.exam import exam_id
from domain.provenance import Provenance, Source
from domain.study import study_id
from interfaces.hl7.relay import Relay
from tests.conftest import fresh_namespace
from tests.integration.builders import orm, record

pytestmark = pytest.mark.temporal

OPS_YAML = """stuck_after:
  ordered: 1h
  scheduled: off
  in_progress: 1s
  completed: 1h
"""
OPERATOR = Principal(username="ops.jane", roles=frozenset({"operations"}), via="token")


@dataclass
class Console:
    settings: Settings
    client: Client
    store: EventStore
    messages: MessageLog
    projections_db: Database
    http: httpx.AsyncClient
    relay: Relay

    async def order(self, accession: str, control: str = "NW") -> int:
        """An ORM recorded by the listener and relayed to the exam, as in production."""
        row = await asyncio.to_thread(
            record, self.messages, orm(accession, control, f"{accession}-{control}")
        )
        assert row.status == "accepted", row
        await self.relay.relay_once()
        return row.id

    async def signal(
        self, workflow_id: str, command: dict[str, Any], workflow_type: str = "ExamWorkflow"
    ) -> None:
        await self.client.start_workflow(
            workflow_type,
            None,
            id=workflow_id,
            task_queue=self.settings.task_queue,
            start_signal="submit",
            start_signal_args=[command],
        )

    async def until(self, check: Callable[[], Any], timeout: float = 20.0) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            result = await asyncio.to_thread(check)
            if result:
                return result
            assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
            await asyncio.sleep(0.1)

    def state(self, accession: str) -> str | None:
        rows = self.projections_db.query("SELECT state FROM worklist WHERE accession = ?", (accession,))
        return rows[0]["state"] if rows else None

    def journal(self, accession: str) -> list[dict[str, Any]]:
        return OpsActions(self.messages.db).recent(accession=accession)


def provenance(message_id: str) -> Provenance:
    return Provenance(
        actor="CT01",
        source=Source(kind="dicom", application="CT01", control_id=message_id, message_id=message_id),
        occurred_at=datetime.now(UTC).isoformat(),
    )


@pytest.fixture(scope="module")
async def console(tmp_path_factory: pytest.TempPathFactory, temporal_address: str) -> AsyncIterator[Console]:
    root = tmp_path_factory.mktemp("ops")
    config = root / "config"
    config.mkdir()
    (config / "ops.yaml").write_text(OPS_YAML)
    settings = Settings(
        data_dir=root / "var",
        temporal_address=temporal_address,
        temporal_namespace=fresh_namespace(temporal_address),
        task_queue=f"ops-{uuid.uuid4().hex[:8]}",
        hl7_config_dir=config,
    )
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop))
    store = open_event_store(settings)
    messages_db = Database.for_file(settings, settings.messages_sqlite_path)
    messages = MessageLog(messages_db)
    messages.create_schema()
    OpsActions(messages_db).create_schema()
    projections_db = Database.for_file(settings, settings.projections_sqlite_path)
    client = await Client.connect(temporal_address, namespace=settings.temporal_namespace)

    async def connect() -> Client:
        return client

    ctx = OpsContext(
        store=store,
        projections_db=projections_db,
        messages_db=messages_db,
        connect=connect,
        task_queue=settings.task_queue,
        rules=lambda: load_ops_rules(config),
        reporting=lambda: load_reporting_rules(config),
    )
    app = FastAPI()
    app.include_router(ops_router(ctx))
    app.include_router(ops_pages_router(ctx))
    app.include_router(
        metrics_router(RadflowCollector(messages_db, projections_db, store.max_notification_id))
    )
    app.dependency_overrides[OPERATIONS] = lambda: OPERATOR
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://radflow", timeout=30) as http:
        yield Console(
            settings,
            client,
            store,
            messages,
            projections_db,
            http,
            Relay([messages], client, settings.task_queue),
        )
    stop.set()
    await asyncio.wait_for(worker, 30)


def accession() -> str:
    return f"OPS{uuid.uuid4().hex[:8].upper()}"


async def start(console: Console, acc: str) -> None:
    command = StartProcedure(
        provenance=provenance(f"t-start:{acc}"), accession=acc, mpps_uid=f"1.2.9.{uuid.uuid4().int % 10**9}"
    )
    await console.signal(f"exam-{acc}", command.as_dict())
    await console.until(lambda: console.state(acc) == "in_progress")


async def test_lists_an_exam_past_its_states_threshold_with_the_reason(console: Console) -> None:
    stuck, fresh = accession(), accession()
    await console.order(stuck)
    await console.order(fresh)
    await start(console, stuck)
    await console.until(lambda: console.state(fresh) == "ordered")

    async def listed() -> dict[str, Any] | None:
        answer = (await console.http.get("/api/ops/stuck")).json()
        return next((e for e in answer["exams"] if e["accession"] == stuck), None)

    deadline = asyncio.get_running_loop().time() + 10
    while (entry := await listed()) is None:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.2)
    assert entry["state"] == "in_progress"
    assert entry["reason"].startswith("in_progress for ") and entry["reason"].endswith(", threshold 1 s")
    answer = (await console.http.get("/api/ops/stuck")).json()
    assert fresh not in {e["accession"] for e in answer["exams"]}  # ordered: threshold 1 h
    assert answer["temporal_error"] is None


async def test_every_action_needs_a_reason_and_refuses_without_one(console: Console) -> None:
    acc = accession()
    await console.order(acc)
    for path, body in [
        ("cancel", {"reason": "   "}),
        ("cancel", {}),
        ("force", {"target": "completed"}),
        ("retry", {"reason": ""}),
        ("rebuild-workflow", {}),
        ("redeliver", {"message_id": 1}),
    ]:
        answer = await console.http.post(f"/api/ops/exams/{acc}/{path}", json=body)
        assert answer.status_code == 400, (path, answer.text)
        assert "reason is required" in answer.json()["detail"]
    assert (await console.http.post("/api/ops/dead-letters/1/retry", json={"reason": " "})).status_code == 400
    assert console.journal(acc) == []
    assert await console.until(lambda: console.state(acc) == "ordered")


async def test_cancels_an_order_through_its_workflow_and_journals_who_and_why(console: Console) -> None:
    acc = accession()
    await console.order(acc)
    await console.until(lambda: console.state(acc) == "ordered")
    answer = await console.http.post(
        f"/api/ops/exams/{acc}/cancel", json={"reason": "duplicate of another order"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "cancelled"
    events = console.store.events_of(exam_id(acc))
    cancelled = events[-1]
    assert type(cancelled).__name__ == "ExamCancelled"
    assert cancelled.reason == "duplicate of another order"  # type: ignore[attr-defined]
    assert cancelled.provenance["actor"] == "ops.jane"  # type: ignore[attr-defined]
    (entry,) = console.journal(acc)
    assert (entry["username"], entry["action"], entry["reason"], entry["outcome"]) == (
        "ops.jane",
        "cancel",
        "duplicate of another order",
        "ok",
    )
    assert entry["result"]["state"] == "cancelled"


async def test_refuses_to_cancel_a_started_exam_and_journals_the_refusal(console: Console) -> None:
    acc = accession()
    await console.order(acc)
    await start(console, acc)
    answer = await console.http.post(f"/api/ops/exams/{acc}/cancel", json={"reason": "patient left"})
    assert answer.status_code == 409
    assert "cannot cancel while in_progress" in answer.json()["detail"]
    (entry,) = console.journal(acc)
    assert entry["outcome"] == "refused"
    assert console.state(acc) == "in_progress"


async def test_forces_an_exam_the_modality_never_completed_with_an_event_carrying_the_reason(
    console: Console,
) -> None:
    acc = accession()
    await console.order(acc)
    await start(console, acc)
    refused = await console.http.post(
        f"/api/ops/exams/{acc}/force", json={"target": "billed", "reason": "skip"}
    )
    assert refused.status_code == 409
    assert "cannot force in_progress -> billed" in refused.json()["detail"]
    answer = await console.http.post(
        f"/api/ops/exams/{acc}/force",
        json={"target": "completed", "reason": "CT01 crashed before MPPS COMPLETED"},
    )
    assert answer.status_code == 200, answer.text
    assert (answer.json()["from_state"], answer.json()["state"]) == ("in_progress", "completed")
    forced = console.store.events_of(exam_id(acc))[-1]
    assert type(forced).__name__ == "ExamStateForced"
    assert (forced.from_state, forced.to_state) == ("in_progress", "completed")  # type: ignore[attr-defined]
    assert forced.reason == "CT01 crashed before MPPS COMPLETED"  # type: ignore[attr-defined]
    assert forced.provenance["actor"] == "ops.jane"  # type: ignore[attr-defined]
    assert forced.provenance["extra"]["ops_action"] == "force"  # type: ignore[attr-defined]
    await console.until(lambda: console.state(acc) == "completed")
    assert [e["outcome"] for e in console.journal(acc)] == ["ok", "refused"]


async def test_retry_now_runs_a_failing_activity_at_once_after_the_cause_is_fixed(console: Console) -> None:
    acc, study_uid = accession(), f"2.25.{uuid.uuid4().int}"
    await console.order(acc)
    await console.until(lambda: console.state(acc) == "ordered")
    # a link to a study not stored yet fails (and is retried with back-off) until it is stored
    link = LinkStudy(
        provenance=provenance(f"t-link:{acc}"),
        study_instance_uid=study_uid,
        accession=acc,
        reason="same patient",
    )
    await console.signal(f"exam-{acc}", link.as_dict())

    async def failing() -> dict[str, Any] | None:
        answer = (await console.http.get("/api/ops/stuck")).json()
        return next(
            (w for w in answer["workflows"] if w["workflow_id"] == f"exam-{acc}" and w["attempt"] >= 5), None
        )

    deadline = asyncio.get_running_loop().time() + 30
    while (entry := await failing()) is None:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.3)
    assert entry["activity_type"] == "apply_command"
    assert "not stored yet" in entry["reason"] and entry["reason"].startswith(
        "apply_command failing: attempt "
    )
    # the cause goes away: the study's first batch is stored (by its own workflow)
    batch = StoreInstances(
        provenance=provenance(f"t-batch:{study_uid}"),
        study_instance_uid=study_uid,
        study={"patient_id": "P1", "accession_number": ""},
        series=({"series_instance_uid": f"{study_uid}.1", "modality": "CT", "instances": []},),
    )
    await console.signal(f"study-{study_uid}", batch.as_dict(), "StudyWorkflow")
    await console.until(lambda: console.store.get_or_none(study_id(study_uid)) is not None)
    answer = await console.http.post(f"/api/ops/exams/{acc}/retry", json={"reason": "study stored now"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["reset"][0]["attempt"] >= 5 and "not stored yet" in body["reset"][0]["last_failure"]
    assert body["still_failing"] == []
    await console.until(lambda: study_uid in console.store.get_or_none(exam_id(acc)).studies, timeout=5)
    # it ran at once, before the back-off would have run it
    assert datetime.now(UTC) < datetime.fromisoformat(body["reset"][0]["next_attempt_at"])
    assert console.journal(acc)[0]["action"] == "retry"
    assert (
        await console.http.post(f"/api/ops/exams/{acc}/retry", json={"reason": "again"})
    ).status_code == 409


async def test_redelivers_a_message_the_relay_never_sent_and_a_repeat_changes_nothing(
    console: Console,
) -> None:
    acc, other = accession(), accession()
    row = await asyncio.to_thread(
        record, console.messages, orm(acc, "NW", f"{acc}-NW")
    )  # recorded, not relayed
    other_row = await console.order(other)
    answer = await console.http.post(
        f"/api/ops/exams/{acc}/redeliver", json={"message_id": row.id, "reason": "relay lost it"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "ordered"
    await console.until(lambda: console.state(acc) == "ordered")
    versions = len(console.store.events_of(exam_id(acc)))
    again = await console.http.post(
        f"/api/ops/exams/{acc}/redeliver", json={"message_id": row.id, "reason": "twice"}
    )
    assert again.status_code == 200 and again.json()["state"] == "ordered"
    assert len(console.store.events_of(exam_id(acc))) == versions  # dropped as a repeat
    wrong = await console.http.post(
        f"/api/ops/exams/{acc}/redeliver", json={"message_id": other_row, "reason": "x"}
    )
    assert wrong.status_code == 409 and "carries no command for exam" in wrong.json()["detail"]
    assert [e["target"] for e in console.journal(acc)] == [
        f"hl7:{other_row}",
        f"hl7:{row.id}",
        f"hl7:{row.id}",
    ]


async def test_rebuilds_a_workflow_from_the_event_store_and_the_new_run_serves_the_exam(
    console: Console,
) -> None:
    acc = accession()
    await console.order(acc)
    await console.until(lambda: console.state(acc) == "ordered")
    before = await console.client.get_workflow_handle(f"exam-{acc}").describe()
    answer = await console.http.post(
        f"/api/ops/exams/{acc}/rebuild-workflow", json={"reason": "history corrupt"}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["terminated_run"] == before.run_id and body["run_id"] != before.run_id
    assert body["carried"]["state"] == "ordered"
    old = await console.client.get_workflow_handle(f"exam-{acc}", run_id=before.run_id).describe()
    assert old.status == WorkflowExecutionStatus.TERMINATED
    assert await console.client.get_workflow_handle(f"exam-{acc}").query("state") == "ordered"
    await console.order(acc, "CA")  # the placer's cancel reaches the new run
    await console.until(lambda: console.state(acc) == "cancelled")
    (entry,) = console.journal(acc)
    assert (entry["action"], entry["outcome"], entry["reason"]) == (
        "rebuild_workflow",
        "ok",
        "history corrupt",
    )


async def test_lists_each_projections_position_and_lag(console: Console) -> None:
    await console.order(accession())
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        answer = (await console.http.get("/api/ops/projections")).json()["projections"]
        worklist = next((p for p in answer if p["name"] == "worklist"), None)
        if worklist is not None and worklist["lag"] == 0:
            break
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.1)
    assert worklist["position"] == worklist["head"] == console.store.max_notification_id()
    assert {"pacs_index", "reading_worklist", "order_status_feed"} <= {p["name"] for p in answer}


async def test_projection_check_finds_a_corrupted_row_and_a_rebuild_repairs_it(
    console: Console, capsys: pytest.CaptureFixture[str]
) -> None:
    acc = accession()
    await console.order(acc)
    await console.until(lambda: console.state(acc) == "ordered")

    def run(command: Callable[[Settings, argparse.Namespace], int], name: str) -> tuple[int, str]:
        out = io.StringIO()
        with redirect_stdout(out):
            code = command(console.settings, argparse.Namespace(name=name))
        return code, out.getvalue()

    code, out = await asyncio.to_thread(run, ops_cli.check, "all")
    assert code == 0, out
    assert "worklist: equal to a rebuild at position" in out
    await asyncio.to_thread(
        console.projections_db.execute, "UPDATE worklist SET state = 'billed' WHERE accession = ?", (acc,)
    )
    code, out = await asyncio.to_thread(run, ops_cli.check, "worklist")
    assert code == 1
    assert "worklist: DIFFERS from a rebuild" in out
    assert f"'accession': '{acc}'" in out and "only in live" in out and "only in rebuilt" in out
    assert "'state': 'billed'" in out and "'state': 'ordered'" in out
    assert "events" in capsys.readouterr().err  # the progress bar
    code, out = await asyncio.to_thread(run, ops_cli.rebuild, "worklist")
    assert code == 0 and "worklist: rebuilt from" in out
    assert console.state(acc) == "ordered"
    code, out = await asyncio.to_thread(run, ops_cli.check, "worklist")
    assert code == 0, out


async def test_metrics_show_messages_exams_lag_and_actions_in_the_prometheus_format(console: Console) -> None:
    acc, kept = accession(), accession()
    await console.order(acc)
    await console.order(kept)
    await console.until(lambda: console.state(acc) == console.state(kept) == "ordered")
    await console.http.post(f"/api/ops/exams/{acc}/cancel", json={"reason": "metrics traffic"})
    await console.until(lambda: (console.messages.get(1) or {}).get("applied_at"))
    answer = await console.http.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    samples = {f.name: f.samples for f in families.values()}

    def value(family: str, sample: str, **labels: str) -> float:
        return sum(
            s.value
            for s in samples[family]
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
        )

    assert (
        value(
            "radflow_hl7_inbound_messages",
            "radflow_hl7_inbound_messages_total",
            type="ORM^O01",
            status="accepted",
        )
        >= 1
    )
    assert value("radflow_exams", "radflow_exams", state="cancelled") >= 1
    assert value("radflow_exams", "radflow_exams", state="ordered") >= 1
    assert "radflow_projection_lag_events" in families
    assert {s.labels["projection"] for s in samples["radflow_projection_lag_events"]} >= {
        "worklist",
        "pacs_index",
    }
    assert value("radflow_ops_actions", "radflow_ops_actions_total", action="cancel", outcome="ok") >= 1
    assert (
        value("radflow_hl7_inbound_apply_latency_seconds", "radflow_hl7_inbound_apply_latency_seconds_count")
        >= 1
    )
    assert families["radflow_hl7_inbound_apply_latency_seconds"].type == "histogram"
    for name in (
        "radflow_hl7_outbound_ack_latency_seconds",
        "radflow_hl7_dead_letters",
        "radflow_dicom_associations",
    ):
        assert name in families
    far = httpx.ASGITransport(app=console.http._transport.app, client=("10.1.2.3", 40000))  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=far, base_url="http://radflow") as http:
        assert (await http.get("/metrics")).status_code == 403


async def test_dead_letters_are_listed_and_retried_or_discarded_with_a_reason(console: Console) -> None:
    outbound = OutboundLog(console.messages.db)
    outbound.create_schema()
    ids = []
    for n in range(2):
        item = QueuedMessage(
            "NOWHERE",
            f"ev-{uuid.uuid4().hex}",
            "NOWHERE",
            "ORM^O01",
            f"C{n}",
            "ACC-DL",
            "P1",
            "ExamCompleted",
            "CM",
            "MSH|...",
        )
        with console.messages.db.transaction() as cur:
            outbound.enqueue(cur, item)
        row = outbound.search(destination="NOWHERE", limit=1)[0]
        outbound.mark_dead(row["id"], error="connection refused", attempted=True)
        ids.append(row["id"])
    listed = (await console.http.get("/api/ops/stuck")).json()["dead_letters"]
    assert {d["id"] for d in listed} >= set(ids)
    assert any("after 1 attempts: connection refused" in d["reason"] for d in listed)
    retried = await console.http.post(
        f"/api/ops/dead-letters/{ids[0]}/retry", json={"reason": "peer is back"}
    )
    assert retried.status_code == 200 and retried.json()["status"] == "queued"
    discarded = await console.http.post(
        f"/api/ops/dead-letters/{ids[1]}/discard", json={"reason": "sent by hand"}
    )
    assert discarded.status_code == 200 and discarded.json()["status"] == "discarded"
    again = await console.http.post(f"/api/ops/dead-letters/{ids[1]}/retry", json={"reason": "oops"})
    assert again.status_code == 409
    journal = OpsActions(console.messages.db).recent(limit=10)
    assert [(a["action"], a["target"], a["outcome"]) for a in journal[:3]] == [
        ("dead_letter_retry", f"outbound:{ids[1]}", "refused"),
        ("dead_letter_discard", f"outbound:{ids[1]}", "ok"),
        ("dead_letter_retry", f"outbound:{ids[0]}", "ok"),
    ]


async def test_the_console_page_lists_stuck_exams_with_action_forms_that_need_a_reason(
    console: Console,
) -> None:
    acc = accession()
    await console.order(acc)
    await start(console, acc)
    deadline = asyncio.get_running_loop().time() + 10
    while acc not in {e["accession"] for e in (await console.http.get("/api/ops/stuck")).json()["exams"]}:
        assert asyncio.get_running_loop().time() < deadline  # past the 1 s in_progress threshold
        await asyncio.sleep(0.1)
    page = await console.http.get("/ui/ops")
    assert page.status_code == 200, page.text
    html = page.text
    assert acc in html and "in_progress for " in html
    assert 'name="reason" required' in html
    assert '<option value="completed"' in html  # the forced moves allowed from in_progress
    assert "Failing workflows" in html and "Dead letters" in html and "Projections" in html
