#!/usr/bin/env python3
"""HL7 ingest benchmark: MLLP ACK throughput/latency and order -> worklist latency.

    .venv/bin/python bench/hl7_ingest.py            # or: make bench
    .venv/bin/python bench/hl7_ingest.py --n 500 --duration 10   # quick run

It starts its own embedded stack (`radflow up`: Temporal dev server, worker, listen, api) with a
fresh temporary RADFLOW_DATA_DIR on free ports, waits for /healthz, measures, prints a table and
writes the same figures as JSON to bench/results/hl7_ingest-<timestamp>.json, then stops the
stack with SIGTERM (also on error or Ctrl-C).

Phase 1 (throughput): N ORM^O01 NW orders (unique accession and MSH-10) over ONE MLLP
connection (send, await ACK, next), then N more over --conns (4) concurrent connections. ACKs/s
and ACK latency p50/p95/p99 for each. The pipeline behind the ACK (relay -> Temporal -> worker ->
worklist) runs as it does in production; the bench waits until it has drained (every order
visible in the worklist) before the next measurement, and reports how fast it drained.

Phase 2 (order -> visible in the worklist): orders at a steady --rate (20/s) for --duration
(30 s) over one connection; per order, the time from sending it until it is listed by the API.
One thread polls `GET /api/exams?patient_id=<this run's phase-2 patient>` (every --poll-ms,
50 ms, a window at the end of the list, so ~20 requests/s whatever the backlog), which reads
the same worklist row as GET /api/exams/{accession}; every accession is then checked once with
GET /api/exams/{accession}.

Client side: stdlib + httpx only; MLLP framed by hand (<VT>msg<FS><CR>), TCP_NODELAY on.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from stack import Stack, cpu_delta, machine_info, percentile, pick_ports, snapshot, summary_ms

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
EXAMPLE = ROOT / "examples" / "orm_o01_new_order.hl7"
VT, FS_CR = b"\x0b", b"\x1c\x0d"

TARGET_ACK_P99_MS = 20.0
TARGET_ACKS_PER_S = 500.0
TARGET_WORKLIST_P95_S = 2.0


# --------------------------------------------------------------------------------------------
# HL7 messages and the MLLP client


class OrderFactory:
    """ORM^O01 NW orders made from examples/orm_o01_new_order.hl7, with per-order MSH-10,
    accession (OBR-18), placer/filler numbers, requested procedure id and patient id."""

    def __init__(self, run: str) -> None:
        text = EXAMPLE.read_bytes().decode()
        lines = text.replace("\r\n", "\r").replace("\n", "\r").split("\r")
        self.segments = [line.split("|") for line in lines if line.strip()]
        self.run = run

    def build(self, control_id: str, accession: str, patient: str) -> bytes:
        now = datetime.now().strftime("%Y%m%d%H%M%S")
        out = []
        for seg in self.segments:
            f = list(seg)
            kind = f[0]
            if kind == "MSH":  # f[n-1] is MSH-n
                f[2], f[6], f[9] = "BENCH", now, control_id
            elif kind == "PID":
                f[3] = f"{patient}^^^BENCHHOSP^MR"
            elif kind == "ORC":
                f[2], f[3] = f"PL{accession}^BENCH", f"FL{accession}^RADFLOW"
            elif kind == "OBR":
                f[2], f[3] = f"PL{accession}^BENCH", f"FL{accession}^RADFLOW"
                f[18], f[19] = accession, f"RP{accession}"
            out.append("|".join(f))
        return ("\r".join(out) + "\r").encode()

    def batch(self, prefix: str, n: int, patient: Callable[[int], str]) -> list[tuple[str, str, bytes]]:
        """[(control id, accession, message)]"""
        orders = []
        for i in range(n):
            cid = f"{self.run}{prefix}{i:06d}"
            acc = f"B{self.run}{prefix}{i:06d}"
            orders.append((cid, acc, self.build(cid, acc, patient(i))))
        return orders


class Mllp:
    def __init__(self, port: int, timeout: float = 60.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def close(self) -> None:
        self.sock.close()

    def send(self, payload: bytes) -> None:
        self.sock.sendall(VT + payload + FS_CR)

    def read(self) -> bytes:
        while True:
            end = self.buf.find(FS_CR)
            if end >= 0:
                start = self.buf.find(VT, 0, end)
                message = bytes(self.buf[start + 1 : end])
                del self.buf[: end + 2]
                return message
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("MLLP peer closed the connection")
            self.buf += chunk


def ack_code(ack: bytes, control_id: str) -> str:
    """MSA-1, or 'BAD' when the ACK does not answer this control id."""
    for seg in ack.split(b"\r"):
        if seg.startswith(b"MSA"):
            f = seg.decode(errors="replace").split(seg[3:4].decode() or "|")
            code = f[1] if len(f) > 1 else "??"
            return (
                code
                if len(f) > 2 and f[2] == control_id
                else f"{code}(control id {f[2] if len(f) > 2 else '?'})"
            )
    return "NO-MSA"


# --------------------------------------------------------------------------------------------
# measurements


def send_sequential(port: int, orders: Sequence[tuple[str, str, bytes]]) -> tuple[list[float], Counter[str]]:
    conn = Mllp(port)
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    clock = time.perf_counter
    try:
        for cid, _, payload in orders:
            t = clock()
            conn.send(payload)
            ack = conn.read()
            latencies.append(clock() - t)
            codes[ack_code(ack, cid)] += 1
    finally:
        conn.close()
    return latencies, codes


def phase1_run(port: int, orders: list[tuple[str, str, bytes]], conns: int) -> dict[str, Any]:
    slices = [orders[i::conns] for i in range(conns)]
    results: list[tuple[list[float], Counter[str]] | BaseException] = [ValueError("not run")] * conns
    gate = threading.Barrier(conns + 1)

    def worker(k: int) -> None:
        try:
            gate.wait()
            results[k] = send_sequential(port, slices[k])
        except BaseException as error:  # reported below
            results[k] = error

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(conns)]
    for t in threads:
        t.start()
    gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    for r in results:
        if isinstance(r, BaseException):
            raise RuntimeError(f"an MLLP connection failed: {r!r}") from r
        latencies += r[0]
        codes += r[1]
    return {
        "connections": conns,
        "messages": len(orders),
        "wall_s": round(wall, 3),
        "acks_per_s": round(codes.get("AA", 0) / wall, 1),
        "ack_codes": dict(codes),
        "ack_latency": summary_ms(latencies),
    }


class Api:
    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=10, headers=headers)

    def close(self) -> None:
        self.http.close()

    def worklist_total(self, **params: Any) -> int:
        r = self.http.get("/api/exams", params={"limit": 1, **params})
        r.raise_for_status()
        return int(r.json()["total"])

    def health(self) -> dict[str, Any]:
        return self.http.get("/healthz").json()


def wait_drained(api: Api, expected: int, since: float, timeout: float) -> dict[str, Any]:
    """Wait until the worklist holds `expected` exams; `since` is when the orders started."""
    deadline = time.perf_counter() + timeout
    total = -1
    while time.perf_counter() < deadline:
        total = api.worklist_total()
        if total >= expected:
            took = time.perf_counter() - since
            return {
                "drained": True,
                "visible": total,
                "expected": expected,
                "since_first_send_s": round(took, 2),
            }
        time.sleep(0.25)
    return {"drained": False, "visible": total, "expected": expected, "timeout_s": timeout}


def phase2_run(
    port: int,
    api_url: str,
    headers: dict[str, str],
    orders: list[tuple[str, str, bytes]],
    patient: str,
    rate: float,
    poll_s: float,
    settle_s: float,
) -> dict[str, Any]:
    clock = time.perf_counter
    sent_at: dict[str, float] = {}
    seen_at: dict[str, float] = {}
    ack_latencies: list[float] = []
    codes: Counter[str] = Counter()
    late = 0
    sender_done = threading.Event()
    sender_error: list[BaseException] = []
    polls = [0]
    poll_errors: Counter[str] = Counter()

    def sender() -> None:
        nonlocal late
        conn = Mllp(port)
        try:
            t0 = clock()
            for i, (cid, acc, payload) in enumerate(orders):
                due = t0 + i / rate
                wait = due - clock()
                if wait > 0:
                    time.sleep(wait)
                elif wait < -0.05:
                    late += 1
                t = clock()
                sent_at[acc] = t
                conn.send(payload)
                ack = conn.read()
                ack_latencies.append(clock() - t)
                codes[ack_code(ack, cid)] += 1
        except BaseException as error:
            sender_error.append(error)
        finally:
            conn.close()
            sender_done.set()

    def poller() -> None:
        with httpx.Client(base_url=api_url, timeout=10, headers=headers) as http:
            deadline = None
            while True:
                started = clock()
                # rows are ordered by the time their event was recorded: what became visible
                # since the last poll is near the end; a window of slack covers reordering
                offset = max(0, len(seen_at) - 100)
                try:
                    while True:
                        r = http.get(
                            "/api/exams",
                            params={"patient_id": patient, "limit": 500, "offset": offset},
                        )
                        polls[0] += 1
                        now = clock()
                        r.raise_for_status()
                        rows = r.json()["exams"]
                        for exam in rows:
                            seen_at.setdefault(exam["accession"], now)
                        if len(rows) < 500:
                            break
                        offset += len(rows)
                except (httpx.HTTPError, ValueError, KeyError) as error:
                    poll_errors[type(error).__name__] += 1
                if sender_done.is_set():
                    if deadline is None:
                        deadline = clock() + settle_s
                    if len(seen_at) >= len(sent_at) or clock() > deadline:
                        return
                pause = poll_s - (clock() - started)
                if pause > 0:
                    time.sleep(pause)

    threads = [threading.Thread(target=sender, daemon=True), threading.Thread(target=poller, daemon=True)]
    t_start = clock()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = clock() - t_start
    if sender_error:
        raise RuntimeError(f"phase 2 sender failed: {sender_error[0]!r}") from sender_error[0]
    visible = [seen_at[a] - sent_at[a] for a in sent_at if a in seen_at]
    send_window = max(sent_at.values()) - min(sent_at.values()) if sent_at else 0.0

    # every accession once through GET /api/exams/{accession}
    direct: Counter[int] = Counter()
    with httpx.Client(base_url=api_url, timeout=10, headers=headers) as http:
        for acc in sent_at:
            direct[http.get(f"/api/exams/{acc}").status_code] += 1

    lat_s = visible
    return {
        "rate_target_per_s": rate,
        "sent": len(sent_at),
        "achieved_send_rate_per_s": round((len(sent_at) - 1) / send_window, 2) if send_window else math.nan,
        "late_sends": late,
        "ack_codes": dict(codes),
        "ack_latency": summary_ms(ack_latencies),
        "visible": len(visible),
        "visible_latency": {
            "p50_s": round(percentile(lat_s, 50), 3),
            "p95_s": round(percentile(lat_s, 95), 3),
            "p99_s": round(percentile(lat_s, 99), 3),
            "max_s": round(max(lat_s), 3) if lat_s else math.nan,
        },
        "get_by_accession_status": {str(k): v for k, v in direct.items()},
        "polls": polls[0],
        "poll_interval_s": poll_s,
        "poll_errors": dict(poll_errors),
        "wall_s": round(wall, 2),
    }


def message_log_counts(data_dir: Path) -> dict[str, Any]:
    path = data_dir / "messages.sqlite"
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
            rows = db.execute(
                "SELECT status, COUNT(*), SUM(relayed_at IS NOT NULL) FROM hl7_messages GROUP BY status"
            ).fetchall()
        return {status: {"count": n, "relayed": relayed} for status, n, relayed in rows}
    except sqlite3.Error as error:
        return {"error": str(error)}


# --------------------------------------------------------------------------------------------
# report


def fmt_ms(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


def build_table(result: dict[str, Any]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []

    def row(metric: str, measured: str, target: str = "", ok: bool | None = None) -> None:
        rows.append(
            {
                "metric": metric,
                "measured": measured,
                "target": target,
                "status": "" if ok is None else ("ok" if ok else "MISSED"),
            }
        )

    p1 = result.get("phase1")
    if p1:
        for key, label in (
            ("one_connection", "1 conn"),
            ("concurrent", f"{p1['concurrent']['connections']} conns"),
        ):
            r = p1[key]
            lat = r["ack_latency"]
            row(
                f"phase 1, {label}: ACKed msgs/s",
                f"{r['acks_per_s']:.0f} ({r['ack_codes'].get('AA', 0)}/{r['messages']} AA)",
                f">= {TARGET_ACKS_PER_S:.0f}/s",
                r["acks_per_s"] >= TARGET_ACKS_PER_S,
            )
            row(
                f"phase 1, {label}: ACK latency p50/p95/p99",
                f"{fmt_ms(lat['p50_ms'])} / {fmt_ms(lat['p95_ms'])} / {fmt_ms(lat['p99_ms'])} ms",
                f"p99 < {TARGET_ACK_P99_MS:.0f} ms",
                lat["p99_ms"] < TARGET_ACK_P99_MS,
            )
            d = r["drain"]
            if d.get("drained"):
                row(
                    f"phase 1, {label}: all {d['expected']} in worklist after",
                    f"{d['since_first_send_s']:.1f} s ({r['messages'] / d['since_first_send_s']:.0f} orders/s end to end)",
                )
            else:
                row(
                    f"phase 1, {label}: worklist after {d['timeout_s']:.0f} s",
                    f"{d['visible']}/{d['expected']} (not drained)",
                )
    p2 = result.get("phase2")
    if p2:
        v = p2["visible_latency"]
        rate = p2["rate_target_per_s"]
        row(
            f"phase 2, {rate:g}/s: order -> worklist p50/p95",
            f"{v['p50_s'] * 1000:.0f} / {v['p95_s'] * 1000:.0f} ms" if p2["visible"] else "n/a",
            f"p95 < {TARGET_WORKLIST_P95_S:g} s",
            bool(p2["visible"]) and v["p95_s"] < TARGET_WORKLIST_P95_S,
        )
        row(
            f"phase 2, {rate:g}/s: order -> worklist p99/max",
            f"{v['p99_s'] * 1000:.0f} / {v['max_s'] * 1000:.0f} ms" if p2["visible"] else "n/a",
        )
        row(
            f"phase 2, {rate:g}/s: visible in worklist",
            f"{p2['visible']}/{p2['sent']}",
            f"{p2['sent']}/{p2['sent']}",
            p2["visible"] == p2["sent"],
        )
        lat = p2["ack_latency"]
        row(
            f"phase 2, {rate:g}/s: ACK latency p50/p99",
            f"{fmt_ms(lat['p50_ms'])} / {fmt_ms(lat['p99_ms'])} ms",
            f"p99 < {TARGET_ACK_P99_MS:.0f} ms",
            lat["p99_ms"] < TARGET_ACK_P99_MS,
        )
        row(
            f"phase 2, {rate:g}/s: achieved send rate",
            f"{p2['achieved_send_rate_per_s']:.1f}/s ({p2['late_sends']} late)",
        )
    for key, label in (
        ("phase1_one_connection_sending", "phase 1, 1 conn"),
        ("phase1_concurrent_sending", "phase 1, concurrent"),
        ("phase2", "phase 2"),
    ):
        cpu = result.get("cpu", {}).get(key)
        if cpu:
            row(
                f"{label}: CPU cores busy",
                ", ".join(f"{n} {v['cores']:.2f}" for n, v in cpu.items() if n != "up"),
            )
    m = result["machine"]
    row("machine", f"{m['cores']} cores ({m['cores_usable']} usable), {m['cpu_model'] or '?'}")
    return rows


def render_table(rows: list[dict[str, str]]) -> str:
    headers = {"metric": "metric", "measured": "measured", "target": "target", "status": ""}
    widths = {k: max(len(headers[k]), *(len(r[k]) for r in rows)) for k in headers}

    def line(r: dict[str, str]) -> str:
        return " | ".join(r[k].ljust(widths[k]) for k in headers).rstrip()

    sep = "-+-".join("-" * widths[k] for k in headers)
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def render_cpu(title: str, cpu: dict[str, dict[str, float]]) -> str:
    parts = ", ".join(f"{name} {v['cores']:.2f}" for name, v in cpu.items() if name != "up")
    return f"  CPU (cores busy) during {title}: {parts}"


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="orders per phase-1 run (default 2000)")
    ap.add_argument("--conns", type=int, default=4, help="connections in the concurrent phase-1 run (4)")
    ap.add_argument("--rate", type=float, default=20.0, help="phase-2 orders per second (20)")
    ap.add_argument("--duration", type=float, default=30.0, help="phase-2 seconds of sending (30)")
    ap.add_argument("--poll-ms", type=float, default=50.0, help="phase-2 worklist poll interval (50 ms)")
    ap.add_argument("--settle", type=float, default=60.0, help="phase-2: seconds to wait for stragglers (60)")
    ap.add_argument(
        "--drain-timeout", type=float, default=300.0, help="max seconds to wait for a backlog to drain (300)"
    )
    ap.add_argument("--phase", choices=("1", "2", "all"), default="all")
    ap.add_argument("--log-level", help="RADFLOW_LOG_LEVEL for the stack (default: radflow's own, INFO)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary data folder (logs, SQLite files)")
    ap.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    args = ap.parse_args(argv)

    if not (Path(sys.executable).parent / "temporal").exists() and not shutil.which("temporal"):
        print(
            "bench: run with the project's interpreter: .venv/bin/python bench/hl7_ingest.py", file=sys.stderr
        )
        return 2

    def on_term(signum: int, _: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)

    run = uuid.uuid4().hex[:6].upper()
    data_dir = Path(tempfile.mkdtemp(prefix="radflow-bench-"))
    stack = Stack(data_dir=data_dir, ports=pick_ports(), log_path=data_dir / "radflow-up.log")
    factory = OrderFactory(run)
    started_at = datetime.now(UTC)
    result: dict[str, Any] = {
        "bench": "hl7_ingest",
        "started_at": started_at.isoformat(timespec="seconds"),
        "run_id": run,
        "machine": machine_info(),
        "config": {k: v for k, v in vars(args).items() if k not in ("keep", "no_json")},
        "targets": {
            "ack_p99_ms": TARGET_ACK_P99_MS,
            "acks_per_s": TARGET_ACKS_PER_S,
            "worklist_p95_s": TARGET_WORKLIST_P95_S,
        },
        "stack": {"ports": stack.ports, "data_dir": str(data_dir)},
        "cpu": {},
    }
    ok = False
    try:
        print(f"bench: starting radflow up (data {data_dir}, ports {stack.ports})", flush=True)
        stack.start(args.log_level)
        result["stack"]["healthy_after_s"] = round(stack.wait_healthy(120), 2)
        result["stack"]["parts"] = stack.parts()
        print(
            f"bench: healthy after {result['stack']['healthy_after_s']} s; parts {stack.parts()}", flush=True
        )
        api = Api(stack.base_url, stack.sign_in())
        port = stack.ports["mllp"]
        expected_total = 0

        if args.phase in ("1", "all"):
            result["phase1"] = {}
            mrn = lambda i: f"BP1{run}{i % 500:04d}"  # noqa: E731 - 500 patients
            for key, prefix, conns in (("one_connection", "S", 1), ("concurrent", "C", args.conns)):
                orders = factory.batch(prefix, args.n, mrn)
                print(f"bench: phase 1, {conns} connection(s): {args.n} orders ...", flush=True)
                cpu0 = snapshot(stack)
                t0 = cpu0["t"]
                r = phase1_run(port, orders, conns)
                cpu_ack = cpu_delta(cpu0, snapshot(stack))
                print(
                    f"  {r['acks_per_s']:.0f} ACKs/s, ACK p50/p95/p99 {r['ack_latency']['p50_ms']:.2f}/"
                    f"{r['ack_latency']['p95_ms']:.2f}/{r['ack_latency']['p99_ms']:.2f} ms, codes {r['ack_codes']}",
                    flush=True,
                )
                print(render_cpu("sending", cpu_ack), flush=True)
                expected_total += args.n
                t_drain = time.perf_counter()
                r["drain"] = wait_drained(api, expected_total, t0, args.drain_timeout)
                cpu_all = cpu_delta(cpu0, snapshot(stack))
                r["drain"]["after_last_ack_s"] = round(time.perf_counter() - t_drain, 2)
                print(f"  worklist: {r['drain']}", flush=True)
                print(render_cpu("sending + drain", cpu_all), flush=True)
                result["cpu"][f"phase1_{key}_sending"] = cpu_ack
                result["cpu"][f"phase1_{key}_until_drained"] = cpu_all
                result["phase1"][key] = r
                if not r["drain"]["drained"]:
                    expected_total = r["drain"]["visible"]

        if args.phase in ("2", "all"):
            n2 = max(1, int(round(args.rate * args.duration)))
            patient = f"BP2{run}"
            orders = factory.batch("R", n2, lambda i: patient)
            print(
                f"bench: phase 2: {n2} orders at {args.rate:g}/s, polling the worklist every {args.poll_ms:g} ms ...",
                flush=True,
            )
            cpu0 = snapshot(stack)
            r2 = phase2_run(
                port,
                stack.base_url,
                stack.headers,
                orders,
                patient,
                args.rate,
                args.poll_ms / 1000,
                args.settle,
            )
            result["cpu"]["phase2"] = cpu_delta(cpu0, snapshot(stack))
            print(f"  {r2}", flush=True)
            print(render_cpu("phase 2", result["cpu"]["phase2"]), flush=True)
            result["phase2"] = r2

        result["machine"]["loadavg_at_end"] = os.getloadavg()
        result["health_at_end"] = api.health()
        api.close()
        result["message_log"] = message_log_counts(data_dir)
        ok = True
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        result["error"] = "interrupted"
    except Exception as error:
        print(f"bench: failed: {error!r}", file=sys.stderr)
        result["error"] = repr(error)
    finally:
        print("bench: stopping radflow up (SIGTERM) ...", flush=True)
        t = time.perf_counter()
        stack.stop()
        result["stack"]["stopped_in_s"] = round(time.perf_counter() - t, 2)
        result["stack"]["exit_code"] = stack.process.returncode if stack.process else None
        result["stack"]["restarts_logged"] = _count_restarts(stack.log_path)

    result["table"] = build_table(result)
    print()
    print(f"radflow HL7 ingest benchmark, {result['started_at']}, run {run}")
    print(render_table(result["table"]))
    print(
        f"message log: {result.get('message_log')}; stack stopped in {result['stack']['stopped_in_s']} s "
        f"(exit {result['stack']['exit_code']}, part restarts {result['stack']['restarts_logged']})"
    )
    if not args.no_json:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS_DIR / f"hl7_ingest-{started_at.strftime('%Y%m%dT%H%M%SZ')}.json"
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"results: {out.relative_to(ROOT)}")
    if ok and not args.keep:
        shutil.rmtree(data_dir, ignore_errors=True)
    else:
        print(f"data and logs kept in {data_dir}")
    return 0 if ok else 1


def _count_restarts(log_path: Path) -> int:
    try:
        return log_path.read_text(errors="replace").count("part exited, restarting")
    except OSError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
