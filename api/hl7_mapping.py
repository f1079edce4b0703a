"""POST /api/hl7/map: the dry run over HTTP. The site's channel configuration is read on every
call, so an analyst sees the effect of an edited mapping without restarting anything."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request

from adapters.settings import Settings
from api.authz import INTERFACE_STAFF, requires
from interfaces.hl7.channels import ChannelConfigError
from interfaces.hl7.dry_run import UnknownChannel, dry_run


def site_channels(settings: Settings) -> Any:
    """The channels under RADFLOW_HL7_CONFIG_DIR (the built-in ones when unset); raises the
    configuration's own error (naming file, line and key) when the folder is invalid."""
    from interfaces.hl7.channels import load_channels

    return load_channels(settings.hl7_config_dir)


def parse_map_request(body: bytes, content_type: str) -> tuple[bytes, str | None]:
    """(raw message, channel name) from a text/plain, octet-stream or JSON body; ValueError
    with the reason when there is nothing to map."""
    channel: str | None = None
    if content_type.split(";")[0].strip().lower() == "application/json":
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"body is not valid JSON: {error}") from error
        if not isinstance(data, dict) or not isinstance(data.get("message"), str):
            raise ValueError('JSON body must be {"message": "<HL7 text>", "channel": "<name>" (optional)}')
        if data.get("channel") is not None and not isinstance(data["channel"], str):
            raise ValueError("channel must be a string")
        channel = data.get("channel") or None
        raw = data["message"].encode("utf-8")
    else:
        raw = body
    # line feeds from a text editor or curl stand for the HL7 segment separator
    raw = raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    if not raw.strip(b"\r\x0b\x1c \t"):
        raise ValueError('empty body: send the HL7 message as text/plain or JSON {"message": ...}')
    return raw, channel


def hl7_mapping_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["hl7"], dependencies=[Depends(requires(*INTERFACE_STAFF))])

    @router.post("/api/hl7/map")
    async def map_message(request: Request) -> dict[str, Any]:
        """The dry run: tree, commands, warnings, refusal and ACK; 200 even when the message
        would be refused, 400 when there is no message or the channel is unknown."""
        try:
            raw, channel = parse_map_request(await request.body(), request.headers.get("content-type", ""))
        except ValueError as error:
            raise HTTPException(status_code=400, detail=str(error)) from error
        channel = request.query_params.get("channel") or channel
        try:
            channels = site_channels(settings)
        except ChannelConfigError as error:  # the site's YAML is broken: say where
            # the service cannot map anything until the files are fixed, as reprocess says too
            raise HTTPException(status_code=503, detail=f"channel configuration: {error}") from error
        try:
            return dry_run(raw, channels=channels, channel=channel)
        except UnknownChannel as error:
            raise HTTPException(status_code=400, detail=str(error)) from error

    return router


def map_file_command(settings: Settings, args: Any) -> int:
    """`radflow hl7 map FILE [--channel NAME] [--json]`: 0 accepted, 1 refused, 2 usage or
    configuration error."""
    import sys
    from pathlib import Path

    path = Path(args.file)
    try:
        raw = path.read_bytes()
    except OSError as error:
        print(f"radflow hl7 map: cannot read {path}: {error.strerror or error}", file=sys.stderr)
        return 2
    try:
        raw, _ = parse_map_request(raw, "application/octet-stream")
        channels = site_channels(settings)
        report = dry_run(raw, channels=channels, channel=args.channel or None)
    except (ValueError, UnknownChannel) as error:
        print(f"radflow hl7 map: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # the site's channel YAML is invalid: its error names file/line/key
        print(f"radflow hl7 map: channel configuration: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else summary(report))
    return 1 if report["refusal"] else 0


def summary(report: dict[str, Any], max_fields: int = 8) -> str:
    """A readable dry-run report: header, abridged tree, commands, warnings, outcome, ACK."""
    lines: list[str] = []
    header = report["header"] or {}
    lines.append(
        f"{header.get('message_type') or '(no MSH)'} control id {header.get('control_id', '')!r} "
        f"from {header.get('sending_application', '')}/{header.get('sending_facility', '')} "
        f"v{header.get('version', '')} -> channel {report['channel'] or '(none)'}"
    )
    lines.append("TREE")
    for segment in report["tree"]:
        if "error" in segment:
            lines.append(f"  {segment['error']}")
            continue
        fields = segment["fields"]
        shown = " ".join(f"{f['position']}={f.get('text', f['value'])[:40]!r}" for f in fields[:max_fields])
        more = f" (+{len(fields) - max_fields} more)" if len(fields) > max_fields else ""
        lines.append(f"  {segment['segment']}: {shown}{more}")
    lines.append(f"COMMANDS ({len(report['commands'])})")
    for command in report["commands"]:
        body = {k: v for k, v in command.items() if k not in ("provenance", "workflow_id", "kind") and v}
        lines.append(
            f"  {command['kind']} -> {command['workflow_id']}: {json.dumps(body, ensure_ascii=False)}"
        )
    if report["warnings"]:
        lines.append("WARNINGS")
        lines.extend(f"  {w}" for w in report["warnings"])
    refusal = report["refusal"]
    if refusal:
        lines.append(
            f"REFUSED {refusal['code']}: {refusal['reason']} "
            f"(condition {refusal['condition'] or '-'}, location {refusal['location'] or '-'})"
        )
    else:
        lines.append("ACCEPTED")
    lines.append("ACK")
    lines.extend(f"  {segment}" for segment in report["ack"].split("\n"))
    lines.append(f"NOTE {report['note']}")
    return "\n".join(lines)
