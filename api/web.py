"""The web UI: server-rendered pages (Jinja2) for the people at the department, over the same read
models and actions as the JSON API. The pages carry what is fixed when they load (the patient
banner, the timeline, the priors); the parts that change while a radiologist works (worklist
rows, the report, deliveries) are read from the JSON API by api/static/ui.js, and every action
is the JSON API's own POST/PUT, so the UI has no write path of its own.

No front-end build and no CDN (the machines have no internet): one stylesheet, one script.
Later issues add their pages to `NAV` and extend `layout.html`.

Signing in (/ui/login) sets an HttpOnly, SameSite=Strict session cookie (api/authz.py); a page
asked for without it redirects to the sign-in page and back."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from adapters.event_store import EventStore
from adapters.sql import Database
from adapters.users import LoginRefused, UserError
from api.authz import EXAM_READERS, ROLES, SESSION_COOKIE, TokenError, requires
from domain.exam import exam_id
from domain.report import SECTIONS, report_id

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
ASSETS = {"ui.css": "text/css", "ui.js": "text/javascript"}

# (label, href): the shell's navigation; a later page adds its entry here
NAV: list[tuple[str, str]] = [
    ("Reading", "/ui/reading"),
    ("HL7 messages", "/hl7/messages"),
    ("Operations", "/ui/ops"),
    ("API", "/docs"),
]

MODALITIES = ("CR", "CT", "DX", "MG", "MR", "NM", "PT", "RF", "US", "XA")
# autosaves would drown the timeline: the draft is on the editor, the timeline shows decisions
QUIET_EVENTS = {"ReportOpened", "ReportDraftSaved"}


def person_name(xpn: str) -> str:
    """An HL7 XPN / DICOM PN (`FAMILY^GIVEN^MIDDLE`) as people read it: `FAMILY, Given Middle`."""
    parts = [p.strip() for p in (xpn or "").split("^")]
    family, rest = parts[0], " ".join(p for p in parts[1:3] if p)
    return f"{family}, {rest}" if family and rest else family or rest


def birth_date(value: str | None) -> str:
    """An HL7 DT / DICOM DA (`YYYYMMDD`) as `YYYY-MM-DD`; anything else as it came."""
    text = (value or "").strip()
    if re.fullmatch(r"\d{8}", text):
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text


def when(value: str | None) -> str:
    """An ISO instant as `YYYY-MM-DD HH:MM:SS` UTC (ui.js shows it in the reader's local time)."""
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _title(event_type: str) -> str:
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", event_type).split()
    if words and words[0] == "Exam" and len(words) > 1:
        words = words[1:]
    return " ".join(words).capitalize()


def timeline_entry(event: Any) -> dict[str, Any]:
    """One line of the exam's story: when, what happened, who, and the detail that matters."""
    kind = type(event).__name__
    provenance = getattr(event, "provenance", {}) or {}
    source = provenance.get("source") or {}
    attr = vars(event)
    title, detail = _title(kind), ""
    if kind == "ExamOrdered":
        order = attr.get("order") or {}
        detail = " · ".join(str(order.get(k) or "") for k in ("priority", "procedure_text") if order.get(k))
    elif kind == "ExamReported":
        title, detail = "Reported", f"result status {attr.get('result_status', '')}"
    elif kind == "ExamCancelled":
        detail = str(attr.get("reason") or "")
    elif kind == "ReportTurnaroundBreached":
        title = "Turnaround breached"
        detail = f"{attr.get('priority', '')} target {attr.get('target_minutes', '')} min, due {when(attr.get('due_at'))}"
    elif kind == "ReadingClaimed":
        title, detail = f"Claimed by {attr.get('radiologist', '')}", f"until {when(attr.get('expires_at'))}"
    elif kind == "ReadingReleased":
        title, detail = f"Released by {attr.get('radiologist', '')}", str(attr.get("reason") or "")
    elif kind == "ReportIssued":
        revision = attr.get("revision") or {}
        title = f"{str(revision.get('kind', 'report')).capitalize()} report signed"
        detail = f"revision {revision.get('revision', '')}, OBR-25 {revision.get('result_status', '')}" + (
            " · critical" if revision.get("critical") else ""
        )
    elif kind == "CriticalResultFlagged":
        contacts = attr.get("contacts") or [{}]
        title = "Critical result flagged"
        detail = f"{contacts[0].get('name', '')} to acknowledge by {when(attr.get('ack_due_at'))}"
    elif kind == "CriticalResultEscalated":
        title = "Critical result escalated"
        detail = f"level {attr.get('level', '')}: {(attr.get('contact') or {}).get('name', '')}"
    elif kind == "CriticalResultAcknowledged":
        title, detail = f"Critical result acknowledged by {attr.get('by', '')}", str(attr.get("note") or "")
    elif kind == "CriticalResultUnacknowledged":
        title, detail = "Critical result not acknowledged", "every contact was tried"
    occurred = provenance.get("occurred_at") or getattr(event, "timestamp", "")
    return {
        "type": kind,
        "title": title,
        "detail": detail,
        "at": str(occurred.isoformat() if isinstance(occurred, datetime) else occurred),
        "actor": provenance.get("actor") or source.get("application") or "",
        "source": source.get("kind") or "",
    }


def timeline(store: EventStore, accession: str) -> list[dict[str, Any]]:
    """The exam's and its report's events, merged in the order they happened."""
    events = [*store.events_of(exam_id(accession)), *store.events_of(report_id(accession))]
    entries = [timeline_entry(e) for e in events if type(e).__name__ not in QUIET_EVENTS]
    return sorted(entries, key=lambda e: e["at"])


def safe_next(target: str) -> str:
    """Where to go after signing in: a path on this site only (never `//host` or a URL)."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/reading"


def web_router(projections_db: Database, store: EventStore) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    templates = Jinja2Templates(directory=TEMPLATES)
    templates.env.filters["person"] = person_name
    templates.env.filters["when"] = when
    templates.env.filters["birth_date"] = birth_date
    templates.env.globals["nav"] = NAV

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        principal = getattr(request.state, "principal", None)
        context.setdefault("user", principal.username if principal else "")
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    def login_page(request: Request, status_code: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("next", safe_next(request.query_params.get("next", "")))
        context.setdefault("username", "")
        context.setdefault("error", "")
        context.setdefault("notice", "")
        response = templates.TemplateResponse(request, "login.html", context, status_code=status_code)
        response.headers["Cache-Control"] = "no-store"
        return response

    @router.get("/ui/login")
    def login_form(request: Request) -> HTMLResponse:
        return login_page(request)

    @router.post("/ui/login", response_model=None)
    def login(
        request: Request,
        username: Annotated[str, Form(max_length=64)] = "",
        password: Annotated[str, Form(max_length=256)] = "",
        otp: Annotated[str, Form(max_length=16)] = "",
        new_password: Annotated[str, Form(max_length=256)] = "",
        next: Annotated[str, Form(max_length=2000)] = "",  # noqa: A002 - the form field's name
    ) -> Response:
        """Checks the credentials (counting towards lock-out like the token endpoint), sets the
        first password where one must be chosen, then sets the session cookie."""
        auth = request.app.state.auth
        target = safe_next(next)
        try:
            user = auth.sign_in(request, username, password, otp.strip() or None, allow_password_change=True)
        except LoginRefused as refused:
            return login_page(request, refused.status, username=username, error=refused.reason, next=target)
        if user.must_change_password:
            if not new_password:
                return login_page(
                    request,
                    403,
                    username=username,
                    next=target,
                    error="Choose a new password before first use: fill in “New password” and sign in again.",
                )
            if new_password == password:
                return login_page(
                    request, 422, username=username, next=target, error="The new password must differ."
                )
            try:
                auth.users.set_password(user.username, new_password)
            except UserError as error:
                return login_page(request, 422, username=username, next=target, error=str(error))
            auth.users.revoke_all(user.username)
        hours = auth.settings.session_hours
        sid, _ = auth.users.issue_token(user.username, "session", timedelta(hours=hours))
        cookie = auth.gate.issue(user.username, user.roles, kind="session", minutes=hours * 60, sid=sid)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=int(hours * 3600),
            path="/",
            httponly=True,  # no script can read it
            samesite="strict",  # no other site's page can make the browser send it
            secure=request.url.scheme == "https",
        )
        return response

    @router.api_route("/ui/logout", methods=["GET", "POST"])
    def logout(request: Request) -> RedirectResponse:
        """Ends the session (revoked: the cookie is worthless even if kept) and forgets it."""
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            try:
                claims = request.app.state.gate.verify(cookie, "session")
                request.app.state.auth.users.revoke(str(claims.get("sid", "")))
            except TokenError:
                pass
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @router.get("/ui", dependencies=[Depends(requires(*ROLES))])
    def home() -> RedirectResponse:
        return RedirectResponse("/ui/reading")

    @router.get("/ui/static/{name}")
    def asset(name: str) -> Response:
        if name not in ASSETS:
            return Response(status_code=404)
        # revalidated on every load: a new release's script must not meet an old page
        return FileResponse(STATIC / name, media_type=ASSETS[name], headers={"Cache-Control": "no-cache"})

    @router.get("/ui/reading", dependencies=[Depends(requires(*EXAM_READERS, audit="worklist"))])
    def reading(
        request: Request,
        modality: str = "",
        body_part: str = "",
        service: str = "",
        radiologist: str = "",
        status: str = "awaiting",
    ) -> HTMLResponse:
        filters = {
            "modality": modality,
            "body_part": body_part,
            "service": service,
            "radiologist": radiologist,
            "status": status if status in ("awaiting", "all") else "awaiting",
        }
        return page(request, "reading.html", filters=filters, modalities=MODALITIES, active="/ui/reading")

    @router.get("/ui/exams/{accession}", dependencies=[Depends(requires(*EXAM_READERS, audit="exam"))])
    def exam_page(request: Request, accession: str) -> HTMLResponse:
        rows = projections_db.query("SELECT * FROM worklist WHERE accession = ?", (accession,))
        if not rows:
            return page(request, "not_found.html", 404, accession=accession, active="/ui/reading")
        exam = rows[0]
        priors = projections_db.query(
            "SELECT accession, procedure_code, procedure_text, modality, state, ordered_at, updated_at "
            "FROM worklist WHERE patient_id = ? AND patient_issuer = ? AND accession <> ? AND ordered_at <= ? "
            "ORDER BY ordered_at DESC LIMIT 20",
            (exam["patient_id"], exam["patient_issuer"], accession, exam["ordered_at"]),
        )
        return page(
            request,
            "exam.html",
            exam=exam,
            priors=priors,
            sections=SECTIONS,
            timeline=timeline(store, accession),
            active="/ui/reading",
        )

    @router.get(
        "/ui/exams/{accession}/timeline", dependencies=[Depends(requires(*EXAM_READERS, audit="exam"))]
    )
    def timeline_fragment(request: Request, accession: str) -> HTMLResponse:
        """The timeline alone, which the exam page swaps in after each action."""
        return page(request, "_timeline.html", timeline=timeline(store, accession))

    return router
