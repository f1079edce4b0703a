"""Outbound delivery on the session's Temporal dev server: the dispatcher, the lane workflow and
the deliver_hl7 activity, in-process on their own task queue, against a python-hl7 peer that
answers AA, AE, AR or nothing at all."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import hl7
import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.deliver_hl7 import DeliveryActivities
from adapters.outbound_config import Destination, Destinations, TlsOptions
from adapters.outbound_log import OutboundLog, QueuedMessage
from adapters.settings import Settings
from adapters.sql import Database
from adapters.tls import server_context
from interfaces.hl7.outbound_dispatcher import OutboundDispatcher
from projections.hl7_text import control_id
from projections.order_status_feed import OrderStatus, order_status_message
from tests.conftest import free_port
from tests.hl7_peer import PeerServer, always
from tests.tls_certs import make_pki
from workflows.outbound import OutboundLaneWorkflow

pytestmark = pytest.mark.temporal


@dataclass
class Outbound:
    log: OutboundLog
    destination: Destination
    uid: str
    _count: int = 0

    def enqueue(self, patient: str, accession: str = "") -> int:
        """One status message for `patient` (its lane), as the order status feed would queue it."""
        self._count += 1
        accession = accession or f"{self.uid}-{self._count}"
        key = f"{accession}:{self._count}"
        msh10 = control_id(self.destination.name, key)
        order = {"patient": {"id": patient, "issuer": "HOSP", "name": "DOE^JO"}, "modality": "CT"}
        status = OrderStatus(accession, order, "SC", "", "O", "2024-03-15T10:30:00+00:00")
        with self.log.db.transaction() as cur:
            self.log.enqueue(
                cur,
                QueuedMessage(
                    destination=self.destination.name,
                    event_key=key,
                    lane=f"HOSP|{patient}",
                    message_type="ORM^O01",
                    control_id=msh10,
                    accession=accession,
                    patient_id=patient,
                    event_type="ExamScheduled",
                    order_status="SC",
                    message=order_status_message(status, self.destination, msh10),
                ),
            )
        rows = self.log.db.query("SELECT id FROM outbound_messages WHERE control_id = ?", (msh10,))
        return int(rows[0]["id"])

    def row(self, row_id: int) -> dict[str, Any]:
        found = self.log.get(row_id)
        assert found is not None
        return found

    async def wait_status(self, row_id: int, status: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (row := self.row(row_id))["status"] != status:
            if time.monotonic() > deadline:
                raise TimeoutError(f"row {row_id} is {row['status']} ({row['last_error']}), not {status}")
            await asyncio.sleep(0.05)
        return row


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:8].upper()


def _destination(uid: str, port: int, **options: Any) -> Destination:
    values: dict[str, Any] = {
        "name": f"PEER_{uid}",
        "host": "127.0.0.1",
        "port": port,
        "max_attempts": 3,
        "initial_backoff_s": 0.1,
        "max_backoff_s": 0.2,
        "ack_timeout_s": 0.5,
    }
    values.update(options)
    return Destination(**values)


@pytest.fixture
async def running(
    temporal_env: WorkflowEnvironment, settings: Settings, uid: str
) -> AsyncIterator[Callable[..., Any]]:
    """A factory: running(destination) starts worker and dispatcher for that destination, over
    the outbound log on SQLite or on the session's PostgreSQL database."""
    db = Database.for_file(settings, settings.messages_sqlite_path)
    log = OutboundLog(db)
    log.create_schema()
    stack: list[Any] = []

    async def start(destination: Destination) -> Outbound:
        destinations = Destinations(items=(destination,))
        task_queue = f"outbound-{uuid.uuid4().hex[:8]}"
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
        return Outbound(log, destination, uid)

    try:
        yield start
    finally:
        for worker, task in stack:
            task.cancel()
            await worker.__aexit__(None, None, None)
        db.close()


async def test_delivers_with_aa_and_keeps_the_ack(running: Callable[..., Any], uid: str) -> None:
    with PeerServer() as peer:
        outbound = await running(_destination(uid, peer.port))
        row_id = outbound.enqueue(f"P{uid}")
        row = await outbound.wait_status(row_id, "delivered")
        assert row["attempts"] == 1 and "MSA|AA|" + row["control_id"] in row["last_ack"]
        message = peer.received[0]
        assert str(message["MSH.F10"]) == row["control_id"]
        assert str(message.segment("ORC")[1]) == "SC"


async def test_delivers_a_lane_in_order(running: Callable[..., Any], uid: str) -> None:
    with PeerServer() as peer:
        outbound = await running(_destination(uid, peer.port))
        ids = [outbound.enqueue(f"P{uid}") for _ in range(5)]
        for row_id in ids:
            await outbound.wait_status(row_id, "delivered")
        assert peer.control_ids() == [outbound.row(i)["control_id"] for i in ids]


async def test_ae_is_retried_with_backoff_until_aa(running: Callable[..., Any], uid: str) -> None:
    answers = iter(["AE", "AE", "AA"])
    with PeerServer(lambda _m: next(answers)) as peer:
        outbound = await running(_destination(uid, peer.port))
        row = await outbound.wait_status(outbound.enqueue(f"P{uid}"), "delivered")
        assert row["attempts"] == 3
        assert len(set(peer.control_ids())) == 1 and len(peer.control_ids()) == 3


async def test_ar_dead_letters_at_once_and_the_lane_moves_on(running: Callable[..., Any], uid: str) -> None:
    poison = ""

    def answer(message: hl7.Message) -> str:
        return "AR" if str(message["MSH.F10"]) == poison else "AA"

    with PeerServer(answer) as peer:
        outbound = await running(_destination(uid, peer.port))
        first = outbound.enqueue(f"P{uid}")
        poison = outbound.row(first)["control_id"]
        behind = outbound.enqueue(f"P{uid}")  # same patient, same lane, queued behind the poison
        other = outbound.enqueue(f"Q{uid}")  # another patient's lane
        dead = await outbound.wait_status(first, "dead")
        assert dead["attempts"] == 1 and "answered AR" in dead["last_error"] and "MSA|AR" in dead["last_ack"]
        await outbound.wait_status(behind, "delivered")
        await outbound.wait_status(other, "delivered")
        assert peer.control_ids().count(poison) == 1


async def test_silence_exhausts_the_attempts_then_a_retry_with_reason_delivers(
    running: Callable[..., Any], uid: str
) -> None:
    silent = True
    with PeerServer(lambda _m: None if silent else "AA") as peer:
        outbound = await running(_destination(uid, peer.port, max_attempts=2, ack_timeout_s=0.3))
        row_id = outbound.enqueue(f"P{uid}")
        dead = await outbound.wait_status(row_id, "dead")
        assert dead["attempts"] == 2 and "no ACK" in dead["last_error"]
        silent = False
        outbound.log.retry(row_id, reason="peer fixed", user="ops")
        delivered = await outbound.wait_status(row_id, "delivered")
        assert delivered["attempts"] == 3
        assert [a["action"] for a in outbound.log.actions(row_id)] == ["retry"]
        assert len(peer.control_ids()) == 3


async def test_refused_connections_are_retried_and_dead_lettered(
    running: Callable[..., Any], uid: str
) -> None:
    outbound = await running(_destination(uid, free_port(), max_attempts=2))
    dead = await outbound.wait_status(outbound.enqueue(f"P{uid}"), "dead")
    assert dead["attempts"] == 2 and "failed" in dead["last_error"]


async def test_ae_with_dead_letter_policy_is_final(running: Callable[..., Any], uid: str) -> None:
    with PeerServer(always("AE")) as peer:
        outbound = await running(_destination(uid, peer.port, on_ae="dead_letter"))
        dead = await outbound.wait_status(outbound.enqueue(f"P{uid}"), "dead")
        assert dead["attempts"] == 1 and len(peer.control_ids()) == 1


async def test_discarded_message_is_never_sent(running: Callable[..., Any], uid: str) -> None:
    with PeerServer(always("AR")) as peer:
        outbound = await running(_destination(uid, peer.port))
        row_id = outbound.enqueue(f"P{uid}")
        await outbound.wait_status(row_id, "dead")
        discarded = outbound.log.discard(row_id, reason="wrong order", user="ops")
        assert discarded["status"] == "discarded"
        with pytest.raises(ValueError, match="retry applies only to dead"):
            outbound.log.retry(row_id, reason="again", user="ops")
        assert len(peer.control_ids()) == 1


async def test_delivers_over_tls_and_dead_letters_when_the_peer_is_not_trusted(
    running: Callable[..., Any], uid: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    with PeerServer(ssl_context=server_context(pki.server_cert, pki.server_key)) as peer:
        trusted = await running(_destination(uid, peer.port, tls=TlsOptions(ca=str(pki.ca))))
        delivered = await trusted.wait_status(trusted.enqueue(f"P{uid}"), "delivered")
        assert peer.control_ids() == [delivered["control_id"]]
        untrusted = await running(
            _destination(f"{uid}X", peer.port, tls=TlsOptions(ca=str(pki.rogue_ca)), max_attempts=2)
        )
        dead = await untrusted.wait_status(untrusted.enqueue(f"P{uid}"), "dead")
        assert "CERTIFICATE_VERIFY_FAILED" in dead["last_error"]
        assert len(peer.control_ids()) == 1
