"""The HL7 message browser over HTTP: search the message log by business keys, read one message
(raw text, parsed tree, ACK, the events it caused), and reprocess a stored message with a
reason. The CLI (`radflow hl7 search`, `radflow hl7 reprocess`) uses the same functions."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Body, Depends, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse

from adapters.event_store import EventStore
from adapters.message_log import (
    APPLIED_STATUSES,
    STATUSES,
    MessageFilters,
    MessageLog,
    UnknownMessage,
    utcnow,
)
from adapters.yaml_config import ConfigError
from api.authz import EXAM_READERS, INTERFACE_STAFF, Principal, requires
from domain.exam import exam_id
from interfaces.hl7.decoding import decode
from interfaces.hl7.dry_run import message_tree
from interfaces.hl7.intake import interpret

log = logging.getLogger("radflow.hl7.browser")

PAGE = Path(__file__).resolve().parent / "static" / "hl7_messages.html"
MAX_LIMIT = 500

# a log row id: beyond a 64-bit integer no row exists (and SQLite cannot even be asked)
MessageId = Annotated[int, PathParam(ge=1, le=2**63 - 1)]


class BadQuery(ValueError):
    """A search parameter the browser cannot use; the message says which and why."""


def utc_time(name: str, value: str) -> str:
    """An ISO 8601 date or date-time as the log stores received_at (UTC, microseconds); a
    date alone means its midnight, a time without offset is UTC."""
    text = value.strip()
    try:
        if len(text) == 10:
            moment = datetime.combine(date.fromisoformat(text), time(0), tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadQuery(f"{name}={value!r} is not an ISO 8601 date or date-time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def message_filters(
    *,
    accession: str = "",
    mrn: str = "",
    placer: str = "",
    filler: str = "",
    control_id: str = "",
    type: str = "",
    sender: str = "",
    status: str = "",
    applied: str = "",
    since: str = "",
    until: str = "",
) -> MessageFilters:
    """Validated filters; BadQuery names the parameter that is wrong."""
    if status and status not in STATUSES:
        raise BadQuery(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
    if applied and applied not in APPLIED_STATUSES:
        raise BadQuery(f"unknown applied status {applied!r}; one of {', '.join(APPLIED_STATUSES)}")
    since_utc = utc_time("since", since) if since else ""
    until_utc = utc_time("until", until) if until else ""
    if since_utc and until_utc and since_utc >= until_utc:
        raise BadQuery(f"since ({since}) must be before until ({until})")
    return MessageFilters(
        accession=accession.strip(),
        mrn=mrn.strip(),
        placer=placer.strip(),
        filler=filler.strip(),
        control_id=control_id.strip(),
        type=type.strip(),
        sender=sender.strip(),
        status=status,
        applied=applied,
        since=since_utc,
        until=until_utc,
    )


def search_messages(
    message_log: MessageLog, filters: MessageFilters, limit: int = 50, before: int | None = None
) -> dict[str, Any]:
    """One page, newest first, and the cursor of the next (null on the last page); no count."""
    if not 1 <= limit <= MAX_LIMIT:
        raise BadQuery(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
    if before is not None and before < 1:
        raise BadQuery(f"before must be a message id, not {before}")
    try:
        rows = message_log.search(filters, limit=limit + 1, before_id=before)
    except UnknownMessage as error:
        raise BadQuery(f"before={before}: {error}") from None
    page = rows[:limit]
    return {
        "messages": [summary_json(r) for r in page],
        "next": page[-1]["id"] if len(rows) > limit else None,
    }


def summary_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "control_id": row["control_id"],
        "type": row["message_type"],
        "sender": row["sending_application"],
        "facility": row["sending_facility"],
        "received_at": row["received_at"],
        "status": row["status"],
        "ack_code": row["ack_code"],
        "accession": row["accession"],
        "mrn": row["patient_id"],
        "placer": row["placer_order_number"],
        "filler": row["filler_order_number"],
        "reason": row["error"],
        "applied_status": row["applied_status"],
        "reprocess_of": row["reprocess_of"],
        "duplicate_of": row["duplicate_of"],
        "channel": row["channel"],
    }


def _text(data: bytes | None) -> str:
    if not data:
        return ""
    return decode(bytes(data))[0]


def detail_json(message_log: MessageLog, row: dict[str, Any]) -> dict[str, Any]:
    """The entry with what it said, what radflow answered and what it caused."""
    commands = json.loads(row["commands"]) if row["commands"] else []
    exams = {
        str(exam_id(entry["command"]["accession"])): entry["command"]["accession"]
        for entry in commands
        if entry["command"].get("accession")
    }
    text = _text(row["raw"])
    return {
        **summary_json(row),
        "peer": row["peer"],
        "raw": text,
        "tree": message_tree(text),
        "ack": _text(row["ack"]),
        "acked_at": row.get("acked_at"),
        "commands": [entry["command"]["kind"] for entry in commands],
        "warnings": json.loads(row["warnings"]) if row.get("warnings") else [],
        "relayed_at": row["relayed_at"],
        "applied": None
        if row["applied_status"] is None
        else {"status": row["applied_status"], "reason": row["applied_reason"], "at": row["applied_at"]},
        "events": [
            {
                "aggregate_id": e["aggregate_id"],
                "version": e["version"],
                "type": e["event_type"],
                "recorded_at": e["recorded_at"],
                "href": f"/api/exams/{exams[e['aggregate_id']]}/history"
                if e["aggregate_id"] in exams
                else f"/api/events/{e['aggregate_id']}",
            }
            for e in message_log.events_of(row["id"])
        ],
        "reprocess": None
        if row["reprocess_of"] is None
        else {"of": row["reprocess_of"], "reason": row["reprocess_reason"], "by": row["reprocessed_by"]},
        "reprocessed_as": [
            {
                "id": r["id"],
                "at": r["received_at"],
                "status": r["status"],
                "reason": r["reprocess_reason"],
                "by": r["reprocessed_by"],
            }
            for r in message_log.reprocessed_as(row["id"])
        ],
    }


def reprocess_message(
    message_log: MessageLog, message_id: int, reason: str, user: str, channels: Any = None
) -> tuple[dict[str, Any], bool]:
    """Interpret the stored raw bytes again with the current mapping and record the outcome as a
    new row linked to the original; the ACK is kept, not sent. Accepted commands reach their
    workflows through the relay like a live message's."""
    row = message_log.get(message_id)
    if row is None:
        raise UnknownMessage(f"no message {message_id}")
    # `channels`: the site's current channel configuration (None: the built-in default)
    inbound = interpret(bytes(row["raw"]), row["peer"], row["received_at"], channels)
    inbound.received_at = utcnow()  # when this row was recorded; the original keeps its own
    recorded, created = message_log.reprocess(message_id, inbound, reason, user)
    log.info(
        "hl7 message reprocessed" if created else "hl7 reprocess repeated: earlier outcome returned",
        extra={
            "message_id": message_id,
            "reprocess_id": recorded.id,
            "status": recorded.status,
            "user": user,
            "reason": reason,
        },
    )
    new_row = message_log.get(recorded.id)
    assert new_row is not None  # just written or found
    return detail_json(message_log, new_row), created


def reprocess_request(body: Any) -> tuple[str, str]:
    """(reason, user) from {"reason": ..., "user": ...}; the reason is mandatory and not blank."""
    if not isinstance(body, dict):
        raise BadQuery('body must be a JSON object: {"reason": "...", "user": "..."}')
    reason, user = body.get("reason"), body.get("user", "api")
    if not isinstance(reason, str) or not reason.strip():
        raise BadQuery("reason is required: say why the message is processed again")
    if not isinstance(user, str) or not user.strip():
        raise BadQuery("user must be a non-blank string")
    return reason.strip(), user.strip()


def hl7_messages_router(
    message_log: MessageLog, store: EventStore | None = None, channels: Callable[[], Any] | None = None
) -> APIRouter:
    """The browser's routes; brings the log's schema up to date first (columns, indexes). With
    the event store, also the history of any aggregate (patients, studies), where the events of
    messages that changed no exam link to."""
    message_log.create_schema()
    router = APIRouter(tags=["hl7"])
    messages = [Depends(requires(*INTERFACE_STAFF, audit="messages"))]

    if store is not None:

        @router.get(
            "/api/events/{aggregate_id}",
            dependencies=[Depends(requires(*EXAM_READERS, *INTERFACE_STAFF, audit="patient"))],
        )
        def aggregate_history(aggregate_id: str) -> dict[str, Any]:
            """Every event of one aggregate, oldest first, each with its provenance and a link
            back to the message that caused it."""
            from api.app import event_json  # api.app includes this router

            try:
                key = UUID(aggregate_id)
            except ValueError:
                raise HTTPException(400, f"{aggregate_id!r} is not an aggregate id (a UUID)") from None
            events = store.events_of(key)
            if not events:
                raise HTTPException(404, f"no events for aggregate {aggregate_id}")
            return {"aggregate_id": aggregate_id, "events": [event_json(e) for e in events]}

    @router.get("/api/hl7/messages", dependencies=messages)
    def search(
        accession: str = "",
        mrn: str = "",
        placer: str = "",
        filler: str = "",
        control_id: str = "",
        type: Annotated[str, Query(description="MSH-9, e.g. ORM^O01")] = "",
        sender: Annotated[str, Query(description="MSH-3 sending application")] = "",
        status: Annotated[str, Query(description="accepted, rejected, error or duplicate")] = "",
        applied: Annotated[
            str, Query(description="what applying it did: applied, refused or duplicate")
        ] = "",
        since: Annotated[str, Query(description="ISO 8601, inclusive")] = "",
        until: Annotated[str, Query(description="ISO 8601, exclusive")] = "",
        limit: str = "50",
        before: Annotated[str, Query(description="the `next` cursor of the previous page")] = "",
    ) -> dict[str, Any]:
        """Logged messages matching every filter, newest first, a page at a time."""
        try:
            filters = message_filters(
                accession=accession,
                mrn=mrn,
                placer=placer,
                filler=filler,
                control_id=control_id,
                type=type,
                sender=sender,
                status=status,
                applied=applied,
                since=since,
                until=until,
            )
            return search_messages(
                message_log, filters, _integer("limit", limit), _integer("before", before) if before else None
            )
        except BadQuery as error:
            raise HTTPException(400, str(error)) from None

    @router.get("/api/hl7/messages/{message_id}", dependencies=messages)
    def detail(message_id: MessageId) -> dict[str, Any]:
        row = message_log.get(message_id)
        if row is None:
            raise HTTPException(404, f"no message {message_id}")
        return detail_json(message_log, row)

    @router.post("/api/hl7/messages/{message_id}/reprocess")
    def reprocess(
        message_id: MessageId,
        who: Annotated[Principal, Depends(requires(*INTERFACE_STAFF, audit="messages"))],
        body: Annotated[Any, Body()] = None,
    ) -> JSONResponse:
        """Process a stored message again (after a mapping fix), with a mandatory reason;
        idempotent: the same outcome returns the earlier reprocess with "created": false."""
        try:
            reason, _ = reprocess_request(body)
            user = who.username  # the signed-in user, whatever the body says
        except BadQuery as error:
            raise HTTPException(400, str(error)) from None
        try:
            entry, created = reprocess_message(
                message_log, message_id, reason, user, channels() if channels is not None else None
            )
        except UnknownMessage as error:
            raise HTTPException(404, str(error)) from None
        except ConfigError as error:  # the site's channel files are broken: nothing was done
            raise HTTPException(503, f"invalid HL7 channel configuration: {error}") from None
        return JSONResponse({**entry, "created": created}, status_code=201 if created else 200)

    @router.get("/hl7/messages", include_in_schema=False, dependencies=[Depends(requires(*INTERFACE_STAFF))])
    def page() -> FileResponse:
        return FileResponse(PAGE, media_type="text/html")

    return router


def _integer(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise BadQuery(f"{name}={value!r} is not an integer") from None
    if abs(number) > 2**63 - 1:  # no row id is that large (and SQLite cannot even be asked)
        raise BadQuery(f"{name}={value!r} is out of range")
    return number
