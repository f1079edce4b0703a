#!/usr/bin/env python3
"""HL7 interface-engine benchmark: parse + map throughput (no I/O), outbound deliveries/s to a
local peer, and message-browser search latency over a large log. One table, one JSON file.

    .venv/bin/python bench/hl7_mapping.py             # or: make bench-hl7-mapping
    .venv/bin/python bench/hl7_mapping.py --quick     # ~1 min: 1 s per mapping run, 100,000 rows
    .venv/bin/python bench/hl7_mapping.py --seconds 10 --rows 1000000 --skip outbound

(a) parse + map: every message of examples/*.hl7 and of the shared corpus' *.hl7 files (one
message per MSH; batch envelopes dropped; files with no MSH kept whole, as fuzz input) goes
through `interfaces.hl7.intake.interpret(raw, peer, received_at)` — decode, parse, map to
domain commands, ACK builder bound — in a loop for --seconds; msgs/s and per-message µs
p50/p99. References in the same run on the same decoded text: python-hl7 `hl7.parse` and
hl7apy `parser.parse_message` (its defaults: tolerant validation, find_groups=True). Two
message sets: "examples" (clean default-channel ADT/ORM) and "corpus" (real feeds and fuzz).

(b) outbound: bench/hl7_outbound.py's `run_outbound_bench` (queue -> lane workflow ->
deliver_hl7 -> python-hl7 peer answering AA, on a Temporal dev server it starts), and the MLLP
client alone (`interfaces.hl7.mllp_client.send_message`, one connection per message, as the
activity does) to a python-hl7 peer, plain and over TLS (certificates made with `openssl`).

(c) search: bench/hl7_search.py's loaders and `measure` (MessageLog.search, the code behind
GET /api/hl7/messages) over --rows logged messages, on SQLite and PostgreSQL.

Each part that cannot run (module missing, PostgreSQL down, no openssl) prints "not available"
with the reason; the others still run. JSON goes to bench/results/hl7_mapping-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
for folder in (ROOT, BENCH):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import hl7  # noqa: E402
from hl7apy.parser import parse_message  # noqa: E402
from stack import machine_info, percentile  # noqa: E402

from interfaces.hl7.decoding import decode  # noqa: E402
from interfaces.hl7.intake import interpret  # noqa: E402

RESULTS_DIR = BENCH / "results"
EXAMPLES = ROOT / "examples"
CORPUS = Path(os.environ.get("RADFLOW_CORPUS", ROOT.parent / "shared" / "corpus")) / "hl7"
ENVELOPE = (b"FHS", b"BHS", b"BTS", b"FTS")
SEGMENT_END = re.compile(rb"\r\n|\n|\r")
PEER = "127.0.0.1:0"
RECEIVED_AT = "2026-11-29T00:00:00.000000+00:00"


# --- (a) parse + map ------------------------------------------------------------------------


def messages_in(raw: bytes) -> list[bytes]:
    """One message per MSH, as the listener would receive them framed one by one. A file with
    one message goes as it is on disk (its line ends included); one without MSH goes whole."""
    segments = [s for s in SEGMENT_END.split(raw) if s.strip()]
    starts = [i for i, s in enumerate(segments) if s.lstrip(b"\xef\xbb\xbf").startswith(b"MSH")]
    if len(starts) <= 1:
        return [raw]
    found = []
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(segments)
        body = [s for s in segments[start:end] if not s.startswith(ENVELOPE)]
        found.append(b"\r".join(body) + b"\r")
    return found


def message_sets(corpus: Path | None) -> dict[str, list[bytes]]:
    sets = {"examples": [m for f in sorted(EXAMPLES.glob("*.hl7")) for m in messages_in(f.read_bytes())]}
    if corpus is not None and corpus.is_dir():
        sets["corpus"] = [m for f in sorted(corpus.rglob("*.hl7")) for m in messages_in(f.read_bytes())]
    return sets


def as_text(raw: bytes) -> str:
    """What the reference parsers get: decoded like radflow decodes, segments split on CR."""
    text, _ = decode(raw)
    return "\r".join(s for s in re.split(r"\r\n|\n|\r", text) if s.strip())


def time_calls(call: Callable[[Any], object], items: Sequence[Any], seconds: float) -> dict[str, Any]:
    """Whole passes over `items` until `seconds` are up (at least one); per-call latencies."""
    latencies_ns: list[int] = []
    errors = 0
    clock = time.perf_counter_ns
    cpu_started = time.process_time()
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for item in items:
            t0 = clock()
            try:
                call(item)
            except Exception:
                errors += 1
            latencies_ns.append(clock() - t0)
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - started
    cpu = max(time.process_time() - cpu_started, 1e-9)
    micros = [ns / 1000 for ns in latencies_ns]
    return {
        "calls": len(micros),
        "msgs_per_s": round(len(micros) / elapsed, 1),
        "msgs_per_cpu_s": round(len(micros) / cpu, 1),  # less sensitive to other load on the box
        "p50_us": round(percentile(micros, 50), 1),
        "p99_us": round(percentile(micros, 99), 1),
        "failed_per_pass": round(errors / (len(micros) / len(items)), 1) if micros else 0,
    }


def outcomes(messages: Sequence[bytes]) -> dict[str, int]:
    """What interpret made of the set: commands produced, or the refusal code."""
    counts: Counter[str] = Counter()
    for raw in messages:
        inbound = interpret(raw, PEER, RECEIVED_AT)
        if inbound.refusal is not None:
            counts[f"refused {inbound.refusal[0]}"] += 1
        else:
            counts["mapped"] += 1
            counts["commands"] += len(inbound.commands or [])
    return dict(sorted(counts.items()))


def bench_mapping(seconds: float, corpus: Path | None) -> list[dict[str, Any]]:
    import logging

    logging.disable(logging.CRITICAL)  # mapping refusals of fuzz input log; not what we time
    rows = []
    try:
        for name, messages in message_sets(corpus).items():
            texts = [as_text(m) for m in messages]
            size = sum(len(m) for m in messages) / max(1, len(messages))
            print(f"  {name}: {len(messages)} messages, mean {size:.0f} bytes", flush=True)
            base = {
                "set": name,
                "messages": len(messages),
                "mean_bytes": round(size),
                "outcomes": outcomes(messages),
            }
            runs: list[tuple[str, Callable[[Any], object], Sequence[Any]]] = [
                ("radflow interpret (decode+parse+map+ACK builder)", lambda r: interpret(r, PEER, RECEIVED_AT), messages),
                ("python-hl7 hl7.parse (reference)", hl7.parse, texts),
                ("hl7apy parse_message (reference)", parse_message, texts),
            ]  # fmt: skip
            for what, call, items in runs:
                rows.append({**base, "what": what, **time_calls(call, items, seconds)})
    finally:
        logging.disable(logging.NOTSET)
    return rows


# --- (b) outbound ---------------------------------------------------------------------------


def _make_certs(folder: Path) -> dict[str, Path]:
    """A CA and a localhost server cert, made with the openssl command line."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("no openssl command to make certificates")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    steps = [
        ["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=bench-ca",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"],
        ["req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "server.pem", "-days", "1", "-extfile", "san.ext"],
    ]  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for step in steps:
        subprocess.run([openssl, *step], cwd=folder, check=True, capture_output=True, timeout=60)
    return {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}


async def _client_rate(messages: int, tls: bool, folder: Path) -> dict[str, Any]:
    from hl7.mllp import start_hl7_server

    from adapters.tls import client_context, server_context
    from interfaces.hl7.mllp_client import send_message

    server_ssl = client_ssl = None
    if tls:
        files = _make_certs(folder)
        server_ssl, client_ssl = server_context(files["cert"], files["key"]), client_context(ca=files["ca"])

    async def answer(reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        try:
            while not reader.at_eof():
                writer.writemessage((await reader.readmessage()).create_ack("AA"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await start_hl7_server(answer, "127.0.0.1", 0, encoding="utf-8", ssl=server_ssl)
    port = server.sockets[0].getsockname()[1]
    template = (EXAMPLES / "orm_o01_new_order.hl7").read_text().replace("\n", "\r")
    latencies: list[float] = []
    started = time.perf_counter()
    try:
        for n in range(messages):
            message = template.replace("|ORM0001|", f"|OUT{n:08d}|")
            t0 = time.perf_counter()
            ack = await send_message("localhost", port, message, timeout_s=10, ssl_context=client_ssl)
            latencies.append((time.perf_counter() - t0) * 1000)
            if not ack.accepted:
                raise RuntimeError(f"peer answered {ack.code}")
    finally:
        server.close()
    elapsed = time.perf_counter() - started
    return {
        "path": f"mllp_client.send_message, new connection each, {'TLS' if tls else 'plain'}",
        "messages": messages,
        "deliveries_per_s": round(messages / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
    }


def bench_outbound(messages: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    try:
        outbound = importlib.import_module("hl7_outbound")
        rows = asyncio.run(outbound.run_outbound_bench(messages, (1, 20)))
        result["workflow"] = [
            {"path": f"queue -> workflow -> activity, {r['lanes']} lane(s)", **r} for r in rows
        ]
    except Exception as error:
        result["workflow_unavailable"] = f"{type(error).__name__}: {error}"
    try:
        with tempfile.TemporaryDirectory(prefix="radflow-bench-tls-") as folder:
            result["client"] = [
                asyncio.run(_client_rate(messages, tls, Path(folder))) for tls in (False, True)
            ]
    except Exception as error:
        result["client_unavailable"] = f"{type(error).__name__}: {error}"
    return result


# --- (c) message-browser search -------------------------------------------------------------


def bench_search(rows: int, backends: Sequence[str], keys: int) -> dict[str, Any]:
    try:
        search = importlib.import_module("hl7_search")
    except Exception as error:
        return {"unavailable": f"bench/hl7_search.py: {type(error).__name__}: {error}"}
    runs, missing = [], {}
    for backend in backends:
        print(f"  {backend}: loading {rows:,} messages ...", flush=True)
        try:
            run = search.run_sqlite if backend == "sqlite" else search.run_postgres
            runs.append(run(rows, keys))
        except Exception as error:
            missing[backend] = f"{type(error).__name__}: {error}"
    return {"rows": rows, "keys": keys, "runs": runs, "unavailable": missing}


# --- report ---------------------------------------------------------------------------------


def print_report(result: dict[str, Any]) -> None:
    load = result["machine"].get("loadavg_1m_at_start")
    print(f"\n(a) parse + map, no I/O (single thread; load average at start {load})")
    head = f"{'set':<9} {'msgs':>5} {'what':<50} {'msgs/s':>9} {'/cpu-s':>9} {'p50 µs':>8} {'p99 µs':>9}"
    print(f"  {head} {'failed':>7}")
    for r in result["mapping"]:
        print(
            f"  {r['set']:<9} {r['messages']:>5} {r['what']:<50} {r['msgs_per_s']:>9,.0f} "
            f"{r['msgs_per_cpu_s']:>9,.0f} {r['p50_us']:>8.1f} {r['p99_us']:>9.1f} {r['failed_per_pass']:>7}"
        )
    for name in dict.fromkeys(r["set"] for r in result["mapping"]):
        first = next(r for r in result["mapping"] if r["set"] == name)
        print(f"  {name} outcomes: {first['outcomes']}")

    out = result["outbound"]
    print("\n(b) outbound deliveries to a local python-hl7 peer answering AA")
    for r in out.get("workflow", []) + out.get("client", []):
        extra = f"  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms" if "p50_ms" in r else f"  ({r['seconds']} s)"
        print(f"  {r['path']:<58} {r['messages']:>5} msgs {r['deliveries_per_s']:>8,.1f}/s{extra}")
    for key in ("workflow_unavailable", "client_unavailable"):
        if key in out:
            print(f"  {key.split('_')[0]}: not available: {out[key]}")

    search = result["search"]
    print(f"\n(c) message-browser search over {search.get('rows', 0):,} logged messages (first page of 50)")
    if "runs" not in search:
        print(f"  not available: {search.get('unavailable')}")
        return
    for run in search["runs"]:
        print(f"  {run['backend']}: loaded in {run['load_s']} s, {run['size_mb']} MB")
        for s in run["searches"]:
            verdict = "ok" if s["p95_ms"] < 100 else "OVER 100 ms"
            print(f"    {s['search']:<34} p50 {s['p50_ms']:>8.2f} ms  p95 {s['p95_ms']:>8.2f} ms  {verdict}")
    for backend, reason in search["unavailable"].items():
        print(f"  {backend}: not available: {reason}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 s per mapping run, 100 outbound, 100,000 rows")
    ap.add_argument("--seconds", type=float, help="seconds per parse/map run (default 5; quick 1)")
    ap.add_argument("--rows", type=int, help="logged messages for the search part (default 1,000,000)")
    ap.add_argument("--messages", type=int, help="outbound messages per run (default 300; quick 100)")
    ap.add_argument("--keys", type=int, default=200, help="random keys per kind of search (200)")
    ap.add_argument("--backends", default="sqlite,postgres", help="search backends: sqlite,postgres")
    ap.add_argument("--corpus", type=Path, default=CORPUS, help=f"HL7 corpus folder (default {CORPUS})")
    ap.add_argument("--skip", nargs="*", default=[], choices=("mapping", "outbound", "search"))
    ap.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    args = ap.parse_args(argv)
    seconds = args.seconds or (1.0 if args.quick else 5.0)
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    messages = args.messages or (100 if args.quick else 300)
    started_at = datetime.now(UTC)
    result: dict[str, Any] = {
        "bench": "hl7_mapping",
        "started_at": started_at.isoformat(),
        "machine": {**machine_info(), "loadavg_1m_at_start": round(os.getloadavg()[0], 2)},
        "config": {"seconds": seconds, "rows": rows, "messages": messages, "keys": args.keys},
        "mapping": [],
        "outbound": {"workflow_unavailable": "skipped", "client_unavailable": "skipped"},
        "search": {"unavailable": "skipped"},
    }
    if "mapping" not in args.skip:
        print("(a) parse + map ...", flush=True)
        corpus = args.corpus if args.corpus.is_dir() else None
        if corpus is None:
            print(f"  corpus {args.corpus} is absent: examples only", flush=True)
        result["mapping"] = bench_mapping(seconds, corpus)
    if "outbound" not in args.skip:
        print("(b) outbound ...", flush=True)
        result["outbound"] = bench_outbound(messages)
    if "search" not in args.skip:
        print("(c) search ...", flush=True)
        result["search"] = bench_search(rows, [b for b in args.backends.split(",") if b], args.keys)
    print_report(result)
    if not args.no_json:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS_DIR / f"hl7_mapping-{started_at:%Y%m%dT%H%M%SZ}.json"
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"\nresults: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
