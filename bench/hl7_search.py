#!/usr/bin/env python3
"""Message-browser search latency over a large HL7 message log, on SQLite and PostgreSQL.

    .venv/bin/python bench/hl7_search.py            # 1,000,000 logged messages
    .venv/bin/python bench/hl7_search.py --quick    # 100,000
    .venv/bin/python bench/hl7_search.py --rows 250000 --backends sqlite

It creates the real schema (MessageLog.create_schema: every index the browser relies on), bulk
loads N rows with realistic shapes (~0.3 N patients, ~0.7 N accessions, 20 senders, 10 message
types, ~96 % accepted, a year of arrival times, short raw bytes), then times each kind of
search through MessageLog.search (the code behind GET /api/hl7/messages) over --keys random
keys: p50 / p95 / max in ms, first page of 50, newest first. SQLite runs in a temporary file;
PostgreSQL in a fresh database `radflow_bench_search` (RADFLOW_TEST_PG names the admin
connection), dropped afterwards. Results also go to bench/results/hl7_search-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from adapters.message_log import MessageFilters, MessageLog  # noqa: E402
from adapters.sql import Database  # noqa: E402

RESULTS_DIR = ROOT / "bench" / "results"
PG_ADMIN = os.environ.get("RADFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
BENCH_DB = "radflow_bench_search"
TARGET_MS = 100.0
START = datetime(2025, 1, 1, tzinfo=UTC)
SPAN_S = 365 * 24 * 3600

TYPES = [  # (MSH-9, share, carries an order)
    ("ORM^O01", 0.40, True),
    ("OMI^O23", 0.10, True),
    ("ORU^R01", 0.08, True),
    ("SIU^S12", 0.06, True),
    ("SIU^S15", 0.02, True),
    ("ADT^A08", 0.15, False),
    ("ADT^A04", 0.08, False),
    ("ADT^A01", 0.05, False),
    ("ADT^A03", 0.04, False),
    ("ADT^A40", 0.02, False),
]
STATUSES = [("accepted", 0.96), ("rejected", 0.025), ("error", 0.01), ("duplicate", 0.005)]
COLUMNS = (
    "received_at, peer, raw, sending_application, sending_facility, control_id, message_type, "
    "status, ack_code, ack, error, accession, patient_id, placer_order_number, "
    "filler_order_number, commands, relayed_at, applied_status"
)


def generate(rows: int, seed: int = 7) -> Iterator[tuple[Any, ...]]:
    """Rows in arrival order (ids follow received_at, as in a live log)."""
    rnd = random.Random(seed)
    patients = max(1, int(rows * 0.3))
    senders = [f"HIS{n:02d}" for n in range(1, 21)]
    sender_weights = [1.0 / n for n in range(1, 21)]  # a few busy feeds, many quiet ones
    types, type_weights = [t[0] for t in TYPES], [t[1] for t in TYPES]
    carries = {t[0]: t[2] for t in TYPES}
    statuses, status_weights = [s[0] for s in STATUSES], [s[1] for s in STATUSES]
    acks = {"accepted": "AA", "duplicate": "AA", "rejected": "AE", "error": "AR"}
    step = SPAN_S / rows
    accessions = 0
    for n in range(rows):
        at = START + timedelta(seconds=n * step + rnd.random() * step * 0.5)
        received_at = at.isoformat(timespec="microseconds")
        sender = rnd.choices(senders, sender_weights)[0]
        kind = rnd.choices(types, type_weights)[0]
        status = rnd.choices(statuses, status_weights)[0]
        mrn = f"MRN{rnd.randrange(patients):07d}"
        control_id = f"C{n:09d}"
        accession = placer = filler = None
        if carries[kind]:
            # mostly a new order; sometimes a later message on an earlier one
            if accessions == 0 or rnd.random() < 0.78:
                accessions += 1
                number = accessions
            else:
                number = rnd.randrange(1, accessions + 1)
            accession, placer, filler = f"A{number:08d}", f"PL{number:08d}", f"FL{number:08d}"
        raw = (
            f"MSH|^~\\&|{sender}|GENERAL|RADFLOW|RADIOLOGY|{at:%Y%m%d%H%M%S}||{kind}|{control_id}|P|2.5.1\r"
            f"PID|1||{mrn}^^^HOSP||DOE^JANE"
        ).encode()
        ack = f"MSH|^~\\&|RADFLOW|RADIOLOGY|{sender}|GENERAL|||ACK|A{n}|P|2.5.1\rMSA|{acks[status]}|{control_id}"
        yield (
            received_at,
            "10.0.0.1:40000",
            raw,
            sender,
            "GENERAL",
            control_id,
            kind,
            status,
            acks[status],
            ack.encode(),
            None if status in ("accepted", "duplicate") else "unknown accession",
            accession,
            mrn,
            placer,
            filler,
            "[]" if status == "accepted" else None,
            received_at if status == "accepted" else None,
            "applied" if status == "accepted" else None,
        )


def load_sqlite(db: Database, rows: int) -> None:
    conn = db._sqlite()  # the bench's own bulk load; searching goes through MessageLog
    conn.execute("PRAGMA synchronous=OFF")
    marks = ", ".join("?" * len(COLUMNS.split(",")))
    batch: list[tuple[Any, ...]] = []

    def flush() -> None:
        conn.execute("BEGIN")
        first = conn.execute("SELECT COALESCE(MAX(id), 0) AS n FROM hl7_messages").fetchone()["n"]
        conn.executemany(f"INSERT INTO hl7_messages ({COLUMNS}) VALUES ({marks})", batch)
        conn.executemany(
            "INSERT INTO hl7_message_orders (message_id, accession, command_kind, placer_order_number, "
            "filler_order_number) VALUES (?, ?, 'place_order', ?, ?)",
            [
                (first + i + 1, r[11], r[13], r[14])
                for i, r in enumerate(batch)
                if r[11] and r[7] == "accepted"
            ],
        )
        conn.execute("COMMIT")
        batch.clear()

    for row in generate(rows):
        batch.append(row)
        if len(batch) >= 50_000:
            flush()
    if batch:
        flush()
    conn.execute("PRAGMA synchronous=FULL")


def load_postgres(conninfo: str, rows: int) -> None:
    with psycopg.connect(conninfo, autocommit=False) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY hl7_messages ({COLUMNS}) FROM STDIN") as copy:
            for row in generate(rows):
                copy.write_row(row)
        conn.commit()
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO hl7_message_orders (message_id, accession, command_kind, placer_order_number, "
                "filler_order_number) SELECT id, accession, 'place_order', placer_order_number, "
                "filler_order_number FROM hl7_messages WHERE accession IS NOT NULL AND status = 'accepted'"
            )
            cur.execute("ANALYZE hl7_messages")
            cur.execute("ANALYZE hl7_message_orders")
        conn.commit()


def searches(rows: int, rnd: random.Random) -> dict[str, Callable[[], MessageFilters]]:
    """One filter maker per kind of search; each draws a fresh random key."""
    patients = max(1, int(rows * 0.3))
    accessions = max(1, int(rows * 0.73 * 0.78))

    def window(days: float) -> tuple[str, str]:
        start = START + timedelta(seconds=rnd.random() * (SPAN_S - days * 86400))
        return (
            start.isoformat(timespec="microseconds"),
            (start + timedelta(days=days)).isoformat(timespec="microseconds"),
        )

    def type_and_range() -> MessageFilters:
        since, until = window(7)
        return MessageFilters(type=rnd.choice(TYPES)[0], since=since, until=until)

    def sender_status_range() -> MessageFilters:
        since, until = window(30)
        status = rnd.choice(["accepted", "rejected", "error"])
        return MessageFilters(
            sender=f"HIS{rnd.randrange(1, 21):02d}", status=status, since=since, until=until
        )

    def time_range() -> MessageFilters:
        since, until = window(1)
        return MessageFilters(since=since, until=until)

    return {
        "accession": lambda: MessageFilters(accession=f"A{rnd.randrange(1, accessions):08d}"),
        "mrn": lambda: MessageFilters(mrn=f"MRN{rnd.randrange(patients):07d}"),
        "placer": lambda: MessageFilters(placer=f"PL{rnd.randrange(1, accessions):08d}"),
        "control_id": lambda: MessageFilters(control_id=f"C{rnd.randrange(rows):09d}"),
        "type + 7-day range": type_and_range,
        "sender + status + 30-day range": sender_status_range,
        "1-day range only": time_range,
        "unfiltered, page 20 (keyset)": lambda: MessageFilters(),
    }


def measure(log: MessageLog, rows: int, keys: int) -> list[dict[str, Any]]:
    rnd = random.Random(11)
    results = []
    for name, make in searches(rows, rnd).items():
        timings, hits = [], []
        for _ in range(keys):
            filters = make()
            started = time.perf_counter()
            page = log.search(filters, limit=50)
            if name.startswith("unfiltered"):
                for _ in range(19):  # walk 19 more pages, time the 20th
                    started = time.perf_counter()
                    page = log.search(filters, limit=50, before_id=page[-1]["id"])
            timings.append((time.perf_counter() - started) * 1000)
            hits.append(len(page))
        timings.sort()
        results.append(
            {
                "search": name,
                "p50_ms": round(statistics.median(timings), 3),
                "p95_ms": round(timings[int(len(timings) * 0.95) - 1], 3),
                "max_ms": round(timings[-1], 3),
                "mean_hits": round(statistics.mean(hits), 1),
            }
        )
    return results


def run_sqlite(rows: int, keys: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="radflow-bench-search-") as tmp:
        db = Database("sqlite", path=Path(tmp) / "messages.sqlite3")
        log = MessageLog(db)
        log.create_schema()
        started = time.perf_counter()
        load_sqlite(db, rows)
        load_s = time.perf_counter() - started
        size = (Path(tmp) / "messages.sqlite3").stat().st_size
        results = measure(log, rows, keys)
        db.close()
    return {
        "backend": "sqlite",
        "load_s": round(load_s, 1),
        "size_mb": round(size / 1e6, 1),
        "searches": results,
    }


def run_postgres(rows: int, keys: int) -> dict[str, Any]:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    conninfo = f"{PG_ADMIN.rsplit('/', 1)[0]}/{BENCH_DB}"
    try:
        db = Database("postgres", conninfo=conninfo)
        log = MessageLog(db)
        log.create_schema()
        started = time.perf_counter()
        load_postgres(conninfo, rows)
        load_s = time.perf_counter() - started
        size = db.query("SELECT pg_database_size(current_database()) AS n")[0]["n"]
        results = measure(log, rows, keys)
        db.close()
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
    return {
        "backend": "postgres",
        "load_s": round(load_s, 1),
        "size_mb": round(size / 1e6, 1),
        "searches": results,
    }


def print_table(rows: int, runs: list[dict[str, Any]]) -> None:
    print(f"\nmessage-browser search over {rows:,} logged messages (first page of 50, newest first)")
    for run in runs:
        print(f"\n{run['backend']}: loaded in {run['load_s']} s, {run['size_mb']} MB")
        print(
            f"  {'search':<32} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9} {'hits':>6}  target p95 < {TARGET_MS:.0f} ms"
        )
        for r in run["searches"]:
            verdict = "ok" if r["p95_ms"] < TARGET_MS else "OVER"
            print(
                f"  {r['search']:<32} {r['p50_ms']:>9.2f} {r['p95_ms']:>9.2f} {r['max_ms']:>9.2f} "
                f"{r['mean_hits']:>6.1f}  {verdict}"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="messages to log (default 1,000,000)")
    ap.add_argument("--quick", action="store_true", help="100,000 messages")
    ap.add_argument("--keys", type=int, default=200, help="random keys per kind of search")
    ap.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    args = ap.parse_args(argv)
    rows = 100_000 if args.quick else args.rows
    if rows < 1_000:
        ap.error("--rows must be at least 1000")
    runs = []
    for backend in args.backends.split(","):
        print(f"{backend}: loading {rows:,} messages ...", flush=True)
        runs.append(run_sqlite(rows, args.keys) if backend == "sqlite" else run_postgres(rows, args.keys))
    print_table(rows, runs)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"hl7_search-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps({"rows": rows, "keys": args.keys, "runs": runs}, indent=2))
    print(f"\nwritten to {out.relative_to(ROOT)}")
    slow = [r for run in runs for r in run["searches"] if r["p95_ms"] >= TARGET_MS]
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
