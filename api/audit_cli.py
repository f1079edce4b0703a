"""`radflow audit verify`: recompute every exam's hash chain from the event store.

Exit 0 when every chain is reproduced by the stored rows, 1 naming the first broken link (an
altered, deleted or inserted event row, or a head that differs from one exported earlier), 2
when the chain table is absent. Reads only; the worker need not run.

What it can and cannot show: the chain is written by a projection in the worker shortly after
each event is stored. A changed row is caught because its hash no longer matches the link
recorded when it was written. Someone able to rewrite both the event rows and the
`audit_chain` table is caught only if the heads were kept outside radflow before:
`radflow audit verify --print-heads > heads-2026-12-05.txt` (keep it elsewhere, e.g. mailed
or on write-once storage), later `radflow audit verify --against heads-2026-12-05.txt`.
Events stored after the projection's position are counted as pending, not checked.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from adapters.settings import Settings


def add_audit_commands(commands: Any) -> None:
    audit = commands.add_parser("audit", help="tamper evidence: verify the exams' hash chains")
    a_sub = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    verify = a_sub.add_parser("verify", help="recompute every exam's hash chain from the event store")
    verify.add_argument(
        "--print-heads", action="store_true", help="print each chain's head (keep the output outside radflow)"
    )
    verify.add_argument(
        "--against", type=Path, help="a file printed earlier by --print-heads: heads must match"
    )
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(run=_verify)


def _parse_heads(path: Path) -> list[tuple[str, int, str]]:
    heads = []
    for line in path.read_text().splitlines():  # the whole --print-heads output will do
        fields = line.split("\t")
        if len(fields) == 4 and fields[0] == "head":
            heads.append((fields[1], int(fields[2]), fields[3]))
    if not heads:
        raise SystemExit(f"radflow audit verify: {path} holds no 'head<TAB>accession<TAB>seq<TAB>hash' lines")
    return heads


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    from adapters.event_store import open_event_store
    from adapters.logs import configure_logging
    from adapters.sql import Database
    from projections.audit_chain import chain_heads, check_heads, heads_digest, verify_chains

    configure_logging("cli", "WARNING")
    exported = _parse_heads(args.against) if args.against else []
    store = open_event_store(settings)
    db = Database.for_file(settings, settings.projections_sqlite_path)
    try:
        try:
            result = verify_chains(store, db)
        except Exception as error:  # no chain table: the worker never ran on this store
            if "audit_chain" in str(error) or "projection_tracking" in str(error):
                print(f"radflow audit verify: no hash chain recorded yet ({error})", file=sys.stderr)
                return 2
            raise
        result.broken.extend(check_heads(db, exported))
        heads = chain_heads(db) if args.print_heads else []
    finally:
        db.close()
        store.close()
    if args.json:
        print(
            json.dumps(
                {**result.as_dict(), "heads": heads} if args.print_heads else result.as_dict(), indent=2
            )
        )
    else:
        if not result.intact:
            first = result.broken[0]
            print(f"BROKEN: {first.describe()}")
            for other in result.broken[1:]:
                print(f"also broken: {other.describe()}")
        print(
            f"{'intact' if result.intact else 'NOT intact'}: {result.chains} chains, {result.links} links checked,"
            f" {result.scanned} stored events scanned up to position {result.position};"
            f" {result.pending} stored since, not yet chained"
            + (f"; {len(exported)} exported heads compared" if exported else "")
        )
        if args.print_heads:
            for head in heads:
                print(f"head\t{head['accession']}\t{int(head['seq'])}\t{head['hash']}")
            print(f"digest\t{heads_digest(heads)}")
    return 0 if result.intact else 1
