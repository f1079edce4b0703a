"""`radflow hl7 outbound list | retry | discard`: the outbound queue and its dead letters from
the command line (exit 0 done, 1 refused, 2 bad input)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from adapters.settings import Settings


def _outbound(settings: Settings) -> Any:
    from adapters.outbound_log import OutboundLog
    from adapters.sql import Database

    outbound = OutboundLog(Database.for_file(settings, settings.messages_sqlite_path))
    outbound.create_schema()
    return outbound


def _list(settings: Settings, args: argparse.Namespace) -> int:
    from adapters.outbound_log import OutboundError
    from api.hl7_outbound import outbound_json

    try:
        rows = _outbound(settings).search(
            status=args.status, destination=args.destination, accession=args.accession, limit=args.limit
        )
    except OutboundError as error:
        print(f"radflow hl7 outbound list: {error}", file=sys.stderr)
        return 2
    entries = [outbound_json(r) for r in rows]
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print("no outbound messages match")
        return 0
    print(
        f"{'ID':>8} {'DESTINATION':<16} {'ACCESSION':<14} {'ORC-5':<5} {'STATUS':<10} {'TRIES':>5} LAST ERROR"
    )
    for e in entries:
        print(
            f"{e['id']:>8} {e['destination']:<16} {e['accession']:<14} {e['order_status']:<5} "
            f"{e['status']:<10} {e['attempts']:>5} {e['last_error'] or ''}"
        )
    return 0


def _act(settings: Settings, args: argparse.Namespace) -> int:
    from adapters.outbound_log import OutboundError

    if not args.reason.strip():
        print(f"radflow hl7 outbound {args.verb}: --reason must not be blank", file=sys.stderr)
        return 2
    outbound = _outbound(settings)
    operation = outbound.retry if args.verb == "retry" else outbound.discard
    try:
        row = operation(args.id, reason=args.reason, user=args.user)
    except OutboundError as error:
        print(f"radflow hl7 outbound {args.verb}: {error}", file=sys.stderr)
        return 2 if error.not_found else 1
    print(f"outbound message {row['id']} to {row['destination']}: now {row['status']}")
    return 0


def add_outbound_commands(hl7_actions: Any) -> None:
    """Adds `outbound` to the `radflow hl7` subcommands."""
    outbound = hl7_actions.add_parser(
        "outbound", help="outbound HL7 queue: list, retry or discard dead letters"
    )
    o_sub = outbound.add_subparsers(dest="outbound_action", required=True, metavar="ACTION")
    o_list = o_sub.add_parser("list", help="list outbound messages, newest first")
    o_list.add_argument("--status", default="", help="queued, delivered, dead or discarded")
    o_list.add_argument("--destination", default="")
    o_list.add_argument("--accession", default="")
    o_list.add_argument("--limit", type=int, default=100)
    o_list.add_argument("--json", action="store_true", help="print JSON, as GET /api/hl7/outbound does")
    o_list.set_defaults(run=_list)
    for verb, text in (("retry", "send a dead letter again"), ("discard", "never send this message")):
        o_act = o_sub.add_parser(verb, help=f"{text}, with a reason")
        o_act.add_argument("id", type=int, help="outbound message id (see radflow hl7 outbound list)")
        o_act.add_argument("--reason", required=True, help="why; kept with the message")
        o_act.add_argument("--user", default="cli")
        o_act.set_defaults(run=_act, verb=verb)
