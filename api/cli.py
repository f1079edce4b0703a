"""The `radflow` command."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from adapters.logs import configure_logging
from adapters.settings import Settings, load_settings
from api.audit_cli import add_audit_commands
from api.hl7_outbound_cli import add_outbound_commands
from api.ops_cli import add_projection_commands
from api.users_cli import add_users_commands


def _up(settings: Settings, _: argparse.Namespace) -> int:
    from api import supervisor

    configure_logging("up", settings.log_level)
    return supervisor.run(settings)


def _worker(settings: Settings, _: argparse.Namespace) -> int:
    from adapters.outbound_config import OutboundConfigError
    from adapters.yaml_config import ConfigError
    from api import worker_process

    configure_logging("worker", settings.log_level)
    try:
        worker_process.main(settings)
    except OutboundConfigError as error:  # read before any work is taken
        print(f"radflow worker: invalid outbound destinations:\n{error}", file=sys.stderr)
        return 2
    except ConfigError as error:  # reporting.yaml, read before any work is taken
        print(f"radflow worker: invalid configuration:\n{error}", file=sys.stderr)
        return 2
    return 0


def _listen(settings: Settings, _: argparse.Namespace) -> int:
    from adapters.dicom_config import DicomConfigError
    from adapters.tls import TlsConfigError
    from adapters.yaml_config import ConfigError
    from api import listen_process

    configure_logging("listen", settings.log_level)
    try:
        listen_process.main(settings)
    except DicomConfigError as error:  # read before any port opens: nothing was accepted
        print(f"radflow listen: invalid DICOM configuration: {error}", file=sys.stderr)
        return 2
    except TlsConfigError as error:  # the MLLP TLS files, read before the port opens
        print(f"radflow listen: invalid MLLP TLS configuration: {error}", file=sys.stderr)
        return 2
    except ConfigError as error:  # the HL7 channels, read before the port opens
        print(f"radflow listen: invalid HL7 channel configuration: {error}", file=sys.stderr)
        return 2
    return 0


def _api(settings: Settings, _: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app

    configure_logging("api", settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.bind_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
    )
    return 0


def _send(settings: Settings, args: argparse.Namespace) -> int:
    from adapters.tls import TlsConfigError
    from interfaces.hl7.sender import send_files, send_tls_context

    configure_logging("cli", "WARNING")
    host = args.host or settings.bind_host
    port = args.port or settings.mllp_port
    try:
        tls = send_tls_context(args.tls, args.ca, args.cert, args.key, verify=not args.insecure)
    except TlsConfigError as error:
        print(f"radflow hl7 send: {error}", file=sys.stderr)
        return 2

    async def send() -> list[str]:
        codes = []
        async for path, code, text in send_files([Path(f) for f in args.files], host, port, tls):
            print(f"{path}: {code} {text}".rstrip(), flush=True)
            codes.append(code)
        return codes

    try:
        codes = asyncio.run(send())
    except (OSError, EOFError, asyncio.IncompleteReadError) as error:
        print(f"radflow hl7 send: connection to {host}:{port} failed: {error}", file=sys.stderr)
        return 2
    return 0 if all(code == "AA" for code in codes) else 1


def _reconcile_list(settings: Settings, args: argparse.Namespace) -> int:
    from adapters.mpps_log import MppsLog
    from adapters.sql import Database
    from api.reconciliation import queue_entry_json

    configure_logging("cli", "WARNING")
    mpps_log = MppsLog(Database.for_file(settings, settings.messages_sqlite_path))
    mpps_log.create_schema()
    entries = [queue_entry_json(r) for r in mpps_log.reconciliation(include_linked=args.all)]
    if args.json:
        import json

        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print("reconciliation queue is empty")
        return 0
    print(f"{'MPPS SOP INSTANCE UID':<64} {'STATUS':<12} {'AE':<16} {'QUEUED AT':<32} REASON / LINK")
    for e in entries:
        link = (
            f" -> {e['linked']['accession']} by {e['linked']['by']}: {e['linked']['reason']}"
            if e["linked"]
            else ""
        )
        print(
            f"{e['sop_instance_uid']:<64} {e['status']:<12} {e['calling_ae']:<16} {e['queued_at']:<32} {e['reason']}{link}"
        )
    return 0


def _reconcile_link(settings: Settings, args: argparse.Namespace) -> int:
    from adapters.mpps_log import MppsLog
    from adapters.sql import Database
    from interfaces.dicom.mpps import LinkRefused, link

    configure_logging("cli", "WARNING")
    if not args.reason.strip():
        print("radflow reconcile link: --reason must not be blank", file=sys.stderr)
        return 2
    mpps_log = MppsLog(Database.for_file(settings, settings.messages_sqlite_path))
    mpps_log.create_schema()
    try:
        rows = link(mpps_log, args.uid, args.accession, args.reason.strip(), args.user)
    except LinkRefused as refused:
        print(f"radflow reconcile link: {refused}", file=sys.stderr)
        return 1
    print(f"linked {args.uid} to exam {args.accession} (outbox rows {', '.join(f'mpps:{r}' for r in rows)})")
    return 0


def _reconcile_studies(settings: Settings, args: argparse.Namespace) -> int:
    from adapters.sql import Database
    from adapters.storage_log import StorageLog
    from api.reconciliation import study_entry_json

    configure_logging("cli", "WARNING")
    storage_log = StorageLog(Database.for_file(settings, settings.messages_sqlite_path))
    storage_log.create_schema()
    entries = [study_entry_json(r) for r in storage_log.reconciliation(include_linked=args.all)]
    if args.json:
        import json

        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print("no studies wait for reconciliation")
        return 0
    print(f"{'STUDY INSTANCE UID':<64} {'PATIENT':<16} {'INST':>5} {'QUEUED AT':<32} REASON / LINK")
    for e in entries:
        link = (
            f" -> {e['linked']['accession']} ({e['linked']['how']}, {e['linked']['by']})"
            if e["linked"]
            else ""
        )
        print(
            f"{e['study_instance_uid']:<64} {e['patient']['id']:<16} {e['instances']:>5} {e['queued_at']:<32} "
            f"{e['reason']}{link}"
        )
    return 0


def _reconcile_link_study(settings: Settings, args: argparse.Namespace) -> int:
    from adapters.sql import Database
    from adapters.storage_log import StorageLog
    from interfaces.dicom.mpps import LinkRefused
    from interfaces.dicom.storage import link_study

    configure_logging("cli", "WARNING")
    if not args.reason.strip():
        print("radflow reconcile link-study: --reason must not be blank", file=sys.stderr)
        return 2
    storage_log = StorageLog(Database.for_file(settings, settings.messages_sqlite_path))
    storage_log.create_schema()
    try:
        row = link_study(storage_log, args.uid, args.accession, args.reason.strip(), args.user)
    except LinkRefused as refused:
        print(f"radflow reconcile link-study: {refused}", file=sys.stderr)
        return 1
    print(f"linked study {args.uid} to exam {args.accession} (outbox row dicom-batch:{row})")
    return 0


def _message_log(settings: Settings):  # type: ignore[no-untyped-def]
    from adapters.message_log import MessageLog
    from adapters.sql import Database

    message_log = MessageLog(Database.for_file(settings, settings.messages_sqlite_path))
    message_log.create_schema()
    return message_log


def _hl7_search(settings: Settings, args: argparse.Namespace) -> int:
    from api.hl7_messages import BadQuery, message_filters, search_messages

    configure_logging("cli", "WARNING")
    try:
        filters = message_filters(
            accession=args.accession,
            mrn=args.mrn,
            placer=args.placer,
            filler=args.filler,
            control_id=args.control_id,
            type=args.type,
            sender=args.sender,
            status=args.status,
            applied=args.applied,
            since=args.since,
            until=args.until,
        )
        page = search_messages(_message_log(settings), filters, args.limit, args.before)
    except BadQuery as error:
        print(f"radflow hl7 search: {error}", file=sys.stderr)
        return 2
    if args.json:
        import json

        print(json.dumps(page, indent=2))
        return 0
    if not page["messages"]:
        print("no messages match")
        return 0
    print(f"{'ID':>8} {'RECEIVED AT':<32} {'TYPE':<12} {'SENDER':<12} {'CONTROL ID':<20} {'ACCESSION':<14} {'MRN':<12} {'STATUS':<9} ACK REASON")
    for m in page["messages"]:
        note = m["reason"] or (f"reprocess of {m['reprocess_of']}" if m["reprocess_of"] else "")
        print(
            f"{m['id']:>8} {m['received_at']:<32} {m['type']:<12} {m['sender']:<12} {m['control_id']:<20} "
            f"{m['accession'] or '':<14} {m['mrn'] or '':<12} {m['status']:<9} {m['ack_code']:<3} {note}"
        )
    if page["next"] is not None:
        print(f"NEXT: --before {page['next']}")
    return 0


def _hl7_map(settings: Settings, args: argparse.Namespace) -> int:
    from api.hl7_mapping import map_file_command

    configure_logging("cli", "WARNING")
    return map_file_command(settings, args)


def _hl7_reprocess(settings: Settings, args: argparse.Namespace) -> int:
    from adapters.message_log import ACCEPTED, UnknownMessage
    from adapters.yaml_config import ConfigError
    from api.hl7_messages import reprocess_message
    from interfaces.hl7.channels import load_channels

    configure_logging("cli", "WARNING")
    if not args.reason.strip():
        print("radflow hl7 reprocess: --reason must not be blank", file=sys.stderr)
        return 2
    try:
        channels = load_channels(settings.hl7_config_dir)  # the site's current mapping
        entry, created = reprocess_message(
            _message_log(settings), args.id, args.reason.strip(), args.user, channels
        )
    except UnknownMessage as error:
        print(f"radflow hl7 reprocess: {error}", file=sys.stderr)
        return 2
    except ConfigError as error:
        print(f"radflow hl7 reprocess: invalid HL7 channel configuration: {error}", file=sys.stderr)
        return 2
    how = "reprocessed as" if created else "already reprocessed with this outcome as"
    print(f"message {args.id} {how} message {entry['id']}: {entry['status']} {entry['ack_code']} {entry['reason'] or ''}".rstrip())
    return 0 if entry["status"] == ACCEPTED else 1


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="radflow",
        description="radflow RIS + PACS. Settings come from RADFLOW_* environment variables.",
    )
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "up", help="start everything (Temporal dev server, worker, listeners, API)"
    ).set_defaults(run=_up)
    commands.add_parser("worker", help="run the Temporal worker and the projections").set_defaults(
        run=_worker
    )
    commands.add_parser("listen", help="run the MLLP listener, the relay and the DICOM AE").set_defaults(
        run=_listen
    )
    commands.add_parser("api", help="serve the HTTP API").set_defaults(run=_api)

    add_projection_commands(commands)  # projections rebuild|check, ops stuck (api/ops_cli.py)

    reconcile = commands.add_parser(
        "reconcile", help="MPPS and studies no exam could take: list them, link one to an exam"
    )
    r_sub = reconcile.add_subparsers(dest="action", required=True, metavar="ACTION")
    r_list = r_sub.add_parser("list", help="list the MPPS reconciliation queue")
    r_list.add_argument("--all", action="store_true", help="include steps already linked")
    r_list.add_argument(
        "--json", action="store_true", help="print JSON, as GET /api/reconciliation/mpps does"
    )
    r_list.set_defaults(run=_reconcile_list)
    r_link = r_sub.add_parser("link", help="link a queued MPPS to an exam, with a reason")
    r_link.add_argument("uid", help="MPPS SOP instance UID")
    r_link.add_argument("accession")
    r_link.add_argument("--reason", required=True, help="why this step belongs to this exam")
    r_link.add_argument("--user", default="cli")
    r_link.set_defaults(run=_reconcile_link)
    r_studies = r_sub.add_parser("studies", help="list stored studies waiting for reconciliation")
    r_studies.add_argument("--all", action="store_true", help="include studies already linked")
    r_studies.add_argument(
        "--json", action="store_true", help="print JSON, as GET /api/reconciliation/studies does"
    )
    r_studies.set_defaults(run=_reconcile_studies)
    r_link_study = r_sub.add_parser("link-study", help="link a queued study to an exam, with a reason")
    r_link_study.add_argument("uid", help="Study Instance UID")
    r_link_study.add_argument("accession")
    r_link_study.add_argument("--reason", required=True, help="why this study belongs to this exam")
    r_link_study.add_argument("--user", default="cli")
    r_link_study.set_defaults(run=_reconcile_link_study)

    hl7 = commands.add_parser("hl7", help="HL7 tools")
    h_sub = hl7.add_subparsers(dest="action", required=True, metavar="ACTION")
    send = h_sub.add_parser("send", help="send HL7 files over MLLP and print each ACK")
    send.add_argument("files", nargs="+", help="files holding one HL7 message each")
    send.add_argument("--host")
    send.add_argument("--port", type=int)
    send.add_argument("--tls", action="store_true", help="MLLP over TLS")
    send.add_argument("--ca", type=Path, help="PEM CA file the server's certificate must chain to")
    send.add_argument("--cert", type=Path, help="PEM client certificate, for servers that demand one")
    send.add_argument("--key", type=Path, help="PEM key of --cert (when not inside it)")
    send.add_argument("--insecure", action="store_true", help="with --tls: do not verify the server")
    send.set_defaults(run=_send)
    h_search = h_sub.add_parser("search", help="search the HL7 message log, newest first")
    for option in ("accession", "mrn", "placer", "filler", "control-id", "type", "sender", "status", "applied"):
        h_search.add_argument(f"--{option}", default="")
    h_search.add_argument("--since", default="", help="ISO 8601 date or date-time, inclusive")
    h_search.add_argument("--until", default="", help="ISO 8601 date or date-time, exclusive")
    h_search.add_argument("--limit", type=int, default=50)
    h_search.add_argument("--before", type=int, help="the NEXT cursor a previous search printed")
    h_search.add_argument("--json", action="store_true", help="print JSON, as GET /api/hl7/messages does")
    h_search.set_defaults(run=_hl7_search)
    h_reprocess = h_sub.add_parser("reprocess", help="process a stored message again, with a reason")
    h_reprocess.add_argument("id", type=int, help="message id (see radflow hl7 search)")
    h_reprocess.add_argument("--reason", required=True, help="why; kept with the new outcome")
    h_reprocess.add_argument("--user", default="cli")
    h_reprocess.set_defaults(run=_hl7_reprocess)
    h_map = h_sub.add_parser("map", help="dry run: what radflow would do with a message, without doing it")
    h_map.add_argument("file", type=Path, help="a file holding one HL7 message")
    h_map.add_argument("--channel", help="map with this channel instead of the one the header selects")
    h_map.add_argument("--json", action="store_true", help="print JSON, as POST /api/hl7/map does")
    h_map.set_defaults(run=_hl7_map)
    add_outbound_commands(h_sub)
    add_users_commands(commands)
    add_audit_commands(commands)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load_settings()
    except Exception as error:
        print(f"radflow: invalid settings: {error}", file=sys.stderr)
        return 2
    return int(args.run(settings, args))


if __name__ == "__main__":
    sys.exit(main())
