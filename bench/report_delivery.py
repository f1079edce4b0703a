#!/usr/bin/env python3
"""Report delivery benchmark: time from a radiologist's final signature to the ORU^R01's ACK
from a downstream system, with many signatures at once, through the whole stack.

    .venv/bin/python bench/report_delivery.py                 # or: make bench-reporting
    .venv/bin/python bench/report_delivery.py --signings 50 --rounds 3

It starts its own embedded stack (`radflow up`: Temporal dev server, worker, listen, api) on a
fresh temporary RADFLOW_DATA_DIR and free ports, with a destinations.yaml that sends `report`
to a local python-hl7 MLLP peer (asyncio `start_hl7_server`, in this process, answering AA).

Each round: --signings exams are ordered over MLLP (ORM^O01) and completed over DICOM (MPPS
N-CREATE / N-SET COMPLETED), untimed; then all of them are signed at once, one concurrent
`POST /api/exams/{accession}/report/final` each. Per signature (same clock, this process):
- HTTP: the request sent -> its 200 (the Temporal update on the exam workflow answered);
- ORU received: the request sent -> the peer has read the ORU^R01 (OBR-25 F) for the accession;
- ACK: the request sent -> the peer has written its ACK (the figure the issue asks for).
The path behind it: update -> apply_command (Report + Exam events) -> report feed projection
(outbound row) -> dispatcher (woken by the feed; polls every 0.2 s besides) -> lane workflow -> deliver_hl7 -> MLLP.

A warm-up round (--warmup signings, not counted) runs first. Prints a table, writes the figures
as JSON to bench/results/report_delivery-<timestamp>.json, and stops the stack (also on error).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from stack import Stack, cpu_delta, machine_info, pick_ports, snapshot, summary_ms

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import hl7  # noqa: E402
from hl7.mllp import start_hl7_server  # noqa: E402

from tests.e2e.mllp import exchange, order, parse_ack  # noqa: E402
from tests.integration.mpps_builders import ended, in_progress, mpps_scu  # noqa: E402

RESULTS_DIR = ROOT / "bench" / "results"
SECTIONS = {
    "indication": "Head trauma.",
    "technique": "Axial CT of the head without contrast.",
    "comparison": "None.",
    "findings": "No acute intracranial haemorrhage.\nVentricles and sulci normal.\n\nNo fracture.",
    "impression": "Normal CT head.",
}


class Peer:
    """A downstream system: python-hl7's asyncio MLLP server in a thread, answering AA, noting
    when each report (accession, OBR-25) arrived and when its ACK was written."""

    def __init__(self) -> None:
        self.received: dict[tuple[str, str], float] = {}
        self.acked: dict[tuple[str, str], float] = {}
        self.messages = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bench-peer", daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> None:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> asyncio.Server:
        return await start_hl7_server(self._client, "127.0.0.1", 0, encoding="utf-8")

    async def _client(self, reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        try:
            while not reader.at_eof():
                message = await reader.readmessage()
                got = time.perf_counter()
                key = ("", "")
                try:
                    obr = message.segment("OBR")
                    key = (str(obr[18]), str(obr[25]))
                except KeyError:
                    pass
                self.messages += 1
                self.received.setdefault(key, got)
                writer.writemessage(message.create_ack("AA"))
                await writer.drain()
                self.acked.setdefault(key, time.perf_counter())
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def exam_state(http: httpx.Client, accession: str) -> str:
    response = http.get(f"/api/exams/{accession}")
    return str(response.json().get("state", "")) if response.status_code == 200 else ""


def wait_state(http: httpx.Client, accession: str, state: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while exam_state(http, accession) != state:
        if time.monotonic() > deadline:
            raise TimeoutError(f"exam {accession} not {state} after {timeout:.0f} s")
        time.sleep(0.05)


def completed_exam(stack: Stack, accession: str) -> None:
    """Ordered over MLLP, performed over DICOM MPPS, as in the end-to-end tests."""
    patient = f"M{accession}"
    ack = parse_ack(
        exchange(stack.ports["mllp"], order(accession, f"O-{accession}", patient_id=patient).encode())
    )
    if ack.code != "AA":
        raise RuntimeError(f"order {accession} answered {ack.code}")
    with httpx.Client(base_url=stack.base_url, timeout=10, headers=stack.sign_in()) as http:
        wait_state(http, accession, "ordered")
        step = f"2.25.{uuid.uuid4().int}"
        with mpps_scu(stack.ports["dicom"], calling_ae="CT01") as scu:
            if scu.create(in_progress(accession, patient_id=patient), step).status != 0x0000:
                raise RuntimeError(f"MPPS N-CREATE for {accession} refused")
            wait_state(http, accession, "in_progress")
            if scu.set(ended("COMPLETED", []), step).status != 0x0000:
                raise RuntimeError(f"MPPS N-SET for {accession} refused")
        wait_state(http, accession, "completed")


async def sign_all(
    base_url: str, headers: dict[str, str], accessions: list[str]
) -> dict[str, dict[str, Any]]:
    """Every accession signed at once; per accession: when sent, when answered, the status."""
    out: dict[str, dict[str, Any]] = {}
    limits = httpx.Limits(max_connections=len(accessions) + 5, max_keepalive_connections=len(accessions) + 5)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits, headers=headers) as http:
        start = asyncio.Event()

        async def sign(accession: str) -> None:
            await start.wait()
            sent = time.perf_counter()
            response = await http.post(
                f"/api/exams/{accession}/report/final", json={"user": "dr.bench", "sections": SECTIONS}
            )
            out[accession] = {
                "sent": sent,
                "answered": time.perf_counter(),
                "status": response.status_code,
                "detail": "" if response.status_code == 200 else response.text[:200],
            }

        tasks = [asyncio.create_task(sign(a)) for a in accessions]
        await asyncio.sleep(0)  # every task waits on the event: they start together
        start.set()
        await asyncio.gather(*tasks)
    return out


def one_round(stack: Stack, peer: Peer, run: str, label: str, n: int, timeout: float) -> dict[str, Any]:
    accessions = [f"BR{run}{label}{i:03d}" for i in range(n)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(10, n)) as pool:
        list(pool.map(lambda a: completed_exam(stack, a), accessions))
    prepared_s = time.perf_counter() - t0
    cpu0 = snapshot(stack)
    signed = asyncio.run(sign_all(stack.base_url, stack.headers, accessions))
    refused = {a: s for a, s in signed.items() if s["status"] != 200}
    wanted = [a for a in accessions if a not in refused]
    deadline = time.monotonic() + timeout
    while any((a, "F") not in peer.acked for a in wanted):
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    cpu = cpu_delta(cpu0, snapshot(stack))
    acked = [a for a in wanted if (a, "F") in peer.acked]
    samples = {
        "http": [signed[a]["answered"] - signed[a]["sent"] for a in wanted],
        "oru_received": [peer.received[(a, "F")] - signed[a]["sent"] for a in acked],
        "ack": [peer.acked[(a, "F")] - signed[a]["sent"] for a in acked],
    }
    return {
        "round": label,
        "signings": n,
        "prepared_s": round(prepared_s, 2),
        "refused": {a: f"{s['status']} {s['detail']}" for a, s in refused.items()},
        "missing": [a for a in wanted if a not in acked],
        **{key: summary_ms(values) for key, values in samples.items()},
        "cpu": cpu,
        "samples_ms": {key: [round(v * 1000, 2) for v in values] for key, values in samples.items()},
    }


def print_table(rounds: list[dict[str, Any]]) -> None:
    print()
    print("final signature -> ORU^R01 ACK from a python-hl7 peer, signatures sent concurrently (ms)")
    head = (
        f"{'ROUND':<8} {'SIGNED':>6} {'ACKED':>6} {'HTTP p50':>9} {'HTTP p95':>9} "
        f"{'ORU p50':>9} {'ORU p95':>9} {'ACK p50':>9} {'ACK p95':>9} {'ACK max':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rounds:
        print(
            f"{r['round']:<8} {r['signings']:>6} {r['ack']['count']:>6} {r['http']['p50_ms']:>9.0f} "
            f"{r['http']['p95_ms']:>9.0f} {r['oru_received']['p50_ms']:>9.0f} {r['oru_received']['p95_ms']:>9.0f} "
            f"{r['ack']['p50_ms']:>9.0f} {r['ack']['p95_ms']:>9.0f} {r['ack']['max_ms']:>9.0f}"
        )
    print(
        "HTTP: request sent -> 200; ORU: sent -> peer read the ORU (OBR-25 F); ACK: sent -> peer wrote its ACK"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--signings", type=int, default=50, help="concurrent final signatures per round (50)")
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds (3)")
    ap.add_argument(
        "--warmup", type=int, default=5, help="signings in the unmeasured first round (5; 0: none)"
    )
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for a round's ACKs (180)")
    ap.add_argument("--log-level", help="RADFLOW_LOG_LEVEL for the stack (default: radflow's own)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary data folder (logs, SQLite files)")
    ap.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    args = ap.parse_args(argv)

    if not (Path(sys.executable).parent / "temporal").exists() and not shutil.which("temporal"):
        print(
            "bench: run with the project's interpreter: .venv/bin/python bench/report_delivery.py",
            file=sys.stderr,
        )
        return 2

    def on_term(signum: int, _: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    run = uuid.uuid4().hex[:5].upper()
    data_dir = Path(tempfile.mkdtemp(prefix="radflow-bench-reports-"))
    config = data_dir / "config"
    config.mkdir()
    peer = Peer()
    peer.start()
    (config / "destinations.yaml").write_text(
        "destinations:\n"
        "  - name: EHR\n"
        "    facility: HOSP\n"
        "    host: 127.0.0.1\n"
        f"    port: {peer.port}\n"
        "    events: [report]\n"
        "    backoff: {initial_s: 0.2, max_s: 2}\n"
        "    ack_timeout_s: 10\n"
    )
    stack = Stack(data_dir=data_dir, ports=pick_ports(), log_path=data_dir / "radflow-up.log")
    started_at = datetime.now(UTC)
    result: dict[str, Any] = {
        "bench": "report_delivery",
        "started_at": started_at.isoformat(timespec="seconds"),
        "run_id": run,
        "machine": machine_info(),
        "config": {k: v for k, v in vars(args).items() if k not in ("keep", "no_json")},
        "stack": {"ports": stack.ports, "data_dir": str(data_dir)},
        "rounds": [],
    }
    ok = False
    try:
        print(f"bench: starting radflow up (data {data_dir}, peer on {peer.port})", flush=True)
        stack.start(args.log_level, {"RADFLOW_HL7_CONFIG_DIR": str(config)})
        result["stack"]["healthy_after_s"] = round(stack.wait_healthy(120), 2)
        print(f"bench: healthy after {result['stack']['healthy_after_s']} s", flush=True)
        if args.warmup:
            print(f"bench: warm-up, {args.warmup} signings", flush=True)
            result["warmup"] = one_round(stack, peer, run, "W", args.warmup, args.timeout)
        for n in range(1, args.rounds + 1):
            print(
                f"bench: round {n}: preparing {args.signings} completed exams, then signing them at once",
                flush=True,
            )
            measured = one_round(stack, peer, run, f"R{n}", args.signings, args.timeout)
            result["rounds"].append(measured)
            print(
                f"  prepared in {measured['prepared_s']} s; ACK p50/p95 {measured['ack']['p50_ms']:.0f}/"
                f"{measured['ack']['p95_ms']:.0f} ms; refused {len(measured['refused'])}, "
                f"missing {len(measured['missing'])}",
                flush=True,
            )
        rounds = result["rounds"]
        if rounds:
            every = {
                "round": "all",
                "signings": sum(r["signings"] for r in rounds),
                "http": _pooled(rounds, "http"),
                "oru_received": _pooled(rounds, "oru_received"),
                "ack": _pooled(rounds, "ack"),
            }
            result["all"] = every
            print_table([*rounds, every])
        ok = all(not r["refused"] and not r["missing"] for r in rounds)
        result["peer_messages"] = peer.messages
    except KeyboardInterrupt as stop:
        print(f"bench: interrupted ({stop})", file=sys.stderr)
    finally:
        stack.stop()
        peer.stop()
        if not args.no_json:
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            out = RESULTS_DIR / f"report_delivery-{started_at.strftime('%Y%m%dT%H%M%SZ')}.json"
            out.write_text(json.dumps(result, indent=2, default=str) + "\n")
            print(f"bench: figures written to {out}")
        if args.keep:
            print(f"bench: data kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    return 0 if ok else 1


def _pooled(rounds: list[dict[str, Any]], key: str) -> dict[str, float]:
    """Percentiles over every signature of every round (not an average of per-round ones)."""
    return summary_ms([v / 1000 for r in rounds for v in r["samples_ms"][key]])


if __name__ == "__main__":
    sys.exit(main())
