"""`radflow projections rebuild|check NAME|all` and `radflow ops stuck`.

rebuild: drop a projection's rows and position and replay the event store into it, with a
progress bar on stderr. check: replay the store into a scratch copy (a temporary SQLite file)
up to the live projection's position and compare the two row by row; the differences are
printed and the exit code is 1 when any projection differs (0 equal, 2 bad input).

Only the read models are rebuilt or checked; the order-status and report feeds are queues of
messages to send (their rows change as deliveries happen), never replayed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from adapters.settings import Settings

BAR = 30
# rebuilding re-hashes the store as it is now, which would hide tampering: only when named
NOT_IN_ALL = frozenset({"audit_chain"})


class ProgressBar:
    """`name [#####.....] done/total events` on one line of stderr, redrawn at most 10x/s."""

    def __init__(self, name: str, stream: TextIO | None = None) -> None:
        self.name = name
        self.stream = stream or sys.stderr
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last < 0.1 and done:
            return
        self._last = now
        filled = BAR if not total else int(BAR * min(done / total, 1.0))
        self.stream.write(f"\r{self.name:<18} [{'#' * filled}{'.' * (BAR - filled)}] {done}/{total} events")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def _runners(settings: Settings, names: Sequence[str]) -> list[Any] | None:
    from api.worker_process import projection_runners

    runners = projection_runners(settings)
    known = [r.projection.name for r in runners]
    if names == ("all",):
        return runners
    unknown = [n for n in names if n not in known]
    if unknown:
        print(
            f"radflow projections: unknown projection {', '.join(unknown)} (known: {', '.join(known)}, all)",
            file=sys.stderr,
        )
        return None
    return [r for r in runners if r.projection.name in names]


def rebuild(settings: Settings, args: argparse.Namespace) -> int:
    runners = _runners(settings, (args.name,))
    if runners is None:
        return 2
    if args.name == "all":  # the audit chain is rebuilt only when named (see README, Audit)
        runners = [r for r in runners if r.projection.name not in NOT_IN_ALL]
    for runner in runners:
        bar = ProgressBar(runner.projection.name)
        count = runner.rebuild(progress=bar)
        bar.close()
        print(f"{runner.projection.name}: rebuilt from {count} events, position {runner.position()}")
    return 0


def differences(
    live: dict[str, list[tuple[Any, ...]]], rebuilt: dict[str, list[tuple[Any, ...]]], shown: int = 10
) -> list[str]:
    """Per table, the rows only one side has (as multisets), at most `shown` of each."""
    out = []
    for table in live:
        only_live = Counter(live[table]) - Counter(rebuilt.get(table, []))
        only_rebuilt = Counter(rebuilt.get(table, [])) - Counter(live[table])
        for label, rows in (("only in live", only_live), ("only in rebuilt", only_rebuilt)):
            for n, row in enumerate(rows.elements()):
                if n == shown:
                    out.append(f"  {table}: ... {sum(rows.values()) - shown} more {label}")
                    break
                out.append(f"  {table}: {label}: {dict(row)}")
    return out


def check_one(runner: Any, scratch_dir: Path) -> tuple[bool, list[str]]:
    """Replay into a scratch SQLite copy up to the live position; compare the tables."""
    from adapters.sql import Database
    from projections.runner import ProjectionRunner

    name = runner.projection.name
    position, live = runner.snapshot()
    scratch_dir.mkdir(parents=True, exist_ok=True)
    scratch = ProjectionRunner(
        runner.store, Database("sqlite", path=scratch_dir / f"{name}.sqlite"), runner.projection
    )
    scratch.create_schema()
    bar = ProgressBar(name)
    scratch.catch_up(until=position, progress=bar)
    bar.close()
    _, rebuilt = scratch.snapshot()
    scratch.db.close()
    found = differences(live, rebuilt)
    rows = sum(len(r) for r in live.values())
    if found:
        return False, [f"{name}: DIFFERS from a rebuild at position {position}:", *found]
    return True, [f"{name}: equal to a rebuild at position {position} ({rows} rows in {len(live)} tables)"]


def check(settings: Settings, args: argparse.Namespace) -> int:
    runners = _runners(settings, (args.name,))
    if runners is None:
        return 2
    all_equal = True
    with tempfile.TemporaryDirectory(prefix="radflow-check-") as scratch:
        for runner in runners:
            equal, lines = check_one(runner, Path(scratch))
            all_equal &= equal
            print("\n".join(lines))
    return 0 if all_equal else 1


def stuck(settings: Settings, args: argparse.Namespace) -> int:
    """Stuck exams from the worklist (no Temporal needed), as GET /api/ops/stuck lists them."""
    import json
    from datetime import UTC, datetime

    from adapters.ops_config import load_ops_rules
    from adapters.sql import Database
    from adapters.yaml_config import ConfigError
    from api.ops import stuck_exams

    try:
        rules = load_ops_rules(settings.hl7_config_dir)
    except ConfigError as error:
        print(f"radflow ops stuck: invalid configuration: {error}", file=sys.stderr)
        return 2
    exams = stuck_exams(
        Database.for_file(settings, settings.projections_sqlite_path), rules, datetime.now(UTC)
    )
    if args.json:
        print(json.dumps(exams, indent=2))
    elif not exams:
        print("no exam is past its threshold")
    for exam in [] if args.json else exams:
        print(f"{exam['accession']:<16} {exam['state']:<12} {exam['reason']}")
    return 0


def add_projection_commands(commands: Any) -> None:
    projections = commands.add_parser("projections", help="read model maintenance")
    p_sub = projections.add_subparsers(dest="action", required=True, metavar="ACTION")
    p_rebuild = p_sub.add_parser("rebuild", help="drop a projection and replay the event store into it")
    p_rebuild.add_argument("name", help="worklist, pacs_index, reading_worklist, ... or all")
    p_rebuild.set_defaults(run=_with_logging(rebuild))
    p_check = p_sub.add_parser(
        "check",
        help="replay into a scratch copy and compare with the live projection (exit 1 if they differ)",
    )
    p_check.add_argument("name", help="worklist, pacs_index, reading_worklist, ... or all")
    p_check.set_defaults(run=_with_logging(check))
    ops = commands.add_parser("ops", help="operations: stuck exams")
    o_sub = ops.add_subparsers(dest="action", required=True, metavar="ACTION")
    o_stuck = o_sub.add_parser("stuck", help="exams past their state's threshold (ops.yaml)")
    o_stuck.add_argument("--json", action="store_true")
    o_stuck.set_defaults(run=_with_logging(stuck))


def _with_logging(run: Any) -> Any:
    def wrapped(settings: Settings, args: argparse.Namespace) -> int:
        from adapters.logs import configure_logging

        configure_logging("cli", "WARNING")
        return int(run(settings, args))

    return wrapped
