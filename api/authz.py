"""Who may call what: the roles, the authenticated `Principal`, and `requires(...)`, the FastAPI
dependency every route declares (deny by default: create_app refuses to start when a route
declares none, see `undeclared_routes`).

A caller proves who it is with a short-lived signed access token (`Authorization: Bearer`, from
POST /api/auth/token) or, in the web UI, with the HttpOnly SameSite=Strict session cookie set by
/ui/login. A cookie is sent by the browser on its own, so a change made with it must also carry
`X-Requested-With: radflow` (which only our own script adds: a cross-site form cannot set a
header, and a cross-site fetch with one needs a CORS pre-flight we never grant).

With `audit=`, the request leaves one access-audit row (adapters/access_audit.py) once its
answer is known: the dependency notes who and what; `AccessAuditMiddleware` adds the status.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import jwt
from fastapi import Depends, HTTPException, Request
from fastapi.routing import APIRoute
from fastapi.security import OAuth2PasswordBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters.access_audit import AccessAudit
from adapters.users import ROLES

__all__ = ["ROLES", "Principal", "requires", "loopback_only", "Gate", "TokenError"]

log = logging.getLogger(__name__)

ADMIN = "admin"  # passes every role check
SESSION_COOKIE = "radflow_session"
CSRF_HEADER = "X-Requested-With"
CSRF_VALUE = "radflow"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ALGORITHM = "HS256"
ISSUER = "radflow"
# routes open to anyone (they authenticate the caller themselves, or hold nothing private);
# everything else must declare `requires(...)` or `loopback_only`
PUBLIC_PATHS = frozenset(
    {
        "/api/auth/token",
        "/api/auth/refresh",
        "/api/auth/password",
        "/ui/login",
        "/ui/logout",
        "/ui/static/{name}",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
    }
)

bearer = OAuth2PasswordBearer(tokenUrl="/api/auth/token", auto_error=False)


@dataclass(frozen=True)
class Principal:
    username: str
    roles: frozenset[str]
    via: str  # "token" | "cookie"

    def has_any(self, roles: Iterable[str]) -> bool:
        return ADMIN in self.roles or bool(self.roles & set(roles))


class TokenError(Exception):
    """A token that proves nothing; the message is the reason the caller gets."""


@dataclass
class Gate:
    """What the dependencies need at request time; create_app puts it on `app.state.gate`."""

    secret: bytes
    audit: AccessAudit | None = None
    # a cookie session is revocable (sign-out, disabled user) and lasts hours: its roles are
    # read from the users store on each request (None: the session is over)
    session_roles: Callable[[str], frozenset[str] | None] = field(default=lambda _sid: None)
    # accession -> the patient's MRN, for the audit row (None when unknown)
    patient_of: Callable[[str], str | None] = field(default=lambda _accession: None)
    access_minutes: float = 15.0

    def issue(
        self,
        username: str,
        roles: Iterable[str],
        *,
        kind: str = "access",
        minutes: float | None = None,
        sid: str = "",
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": username,
            "roles": sorted(roles),
            "typ": kind,
            "iat": now,
            "exp": now + int((minutes if minutes is not None else self.access_minutes) * 60),
            "jti": secrets.token_hex(8),
        }
        if sid:
            claims["sid"] = sid
        return jwt.encode(claims, self.secret, algorithm=ALGORITHM)

    def verify(self, token: str, kind: str = "access") -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self.secret, algorithms=[ALGORITHM], issuer=ISSUER, options={"require": ["exp", "sub"]}
            )
        except jwt.ExpiredSignatureError as error:
            raise TokenError("token expired") from error
        except jwt.InvalidTokenError as error:
            raise TokenError(f"invalid token ({type(error).__name__})") from error
        if claims.get("typ") != kind:
            raise TokenError(f"a {claims.get('typ')} token is not an {kind} token")
        return claims


def _gate(request: Request) -> Gate:
    gate = getattr(request.app.state, "gate", None)
    if gate is None:
        raise RuntimeError("no authentication gate: create the app with api.app.create_app")
    return gate


def _note_access(request: Request, kind: str, who: Principal | None, detail: str = "") -> None:
    """What the audit row will say; the middleware writes it with the final status code."""
    route = request.scope.get("route")
    request.scope.setdefault("state", {})["access_audit"] = {
        "kind": kind,
        "username": who.username if who else "",
        "roles": ",".join(sorted(who.roles)) if who else "",
        "route": getattr(route, "path", request.url.path),
        "path_params": dict(request.path_params),
        "patient_id": request.query_params.get("patient_id") or request.query_params.get("patient") or "",
        "detail": detail,
    }


def _unauthenticated(request: Request, reason: str) -> HTTPException:
    if request.url.path.startswith("/ui") and request.method in SAFE_METHODS:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return HTTPException(303, reason, headers={"Location": f"/ui/login?next={quote(target, safe='')}"})
    return HTTPException(401, reason, headers={"WWW-Authenticate": "Bearer"})


def authenticate(request: Request, token: str | None) -> Principal:
    """The caller, from a bearer token or the session cookie; raises TokenError with the reason."""
    gate = _gate(request)
    if token:
        claims = gate.verify(token, "access")
        return Principal(str(claims["sub"]), frozenset(claims.get("roles") or ()), "token")
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise TokenError("authentication required: send a bearer token (POST /api/auth/token) or sign in")
    claims = gate.verify(cookie, "session")
    roles = gate.session_roles(str(claims.get("sid", "")))
    if roles is None:
        raise TokenError("session ended: sign in again")
    return Principal(str(claims["sub"]), roles, "cookie")


def requires(*roles: str, audit: str | None = None) -> Any:
    """A dependency returning the caller as a `Principal`: 401 without valid credentials, 403
    without one of `roles` (admin passes everywhere) or, for a cookie-authenticated change,
    without the CSRF header. With `audit`, the request is recorded in the access audit."""
    unknown = set(roles) - set(ROLES)
    if unknown or not roles:
        raise ValueError(f"requires(): unknown or missing roles {sorted(unknown)}; known: {', '.join(ROLES)}")
    wanted = frozenset(roles)

    async def dependency(request: Request, token: str | None = Depends(bearer)) -> Principal:
        try:
            principal = authenticate(request, token)
        except TokenError as error:
            if audit:
                _note_access(request, audit, None, f"refused: {error}")
            raise _unauthenticated(request, str(error)) from error
        csrf_ok = (
            principal.via != "cookie"
            or request.method in SAFE_METHODS
            or (request.headers.get(CSRF_HEADER) == CSRF_VALUE)
        )
        if not csrf_ok:
            if audit:
                _note_access(request, audit, principal, "refused: CSRF header missing")
            raise HTTPException(
                403,
                f"a change made with the session cookie must carry the header {CSRF_HEADER}: {CSRF_VALUE}",
            )
        if not principal.has_any(wanted):
            if audit:
                _note_access(request, audit, principal, "refused: role")
            raise HTTPException(
                403,
                f"{principal.username} lacks the role for this: needs one of {', '.join(sorted(wanted))}"
                f" (has {', '.join(sorted(principal.roles)) or 'none'})",
            )
        if audit:
            _note_access(request, audit, principal)
        request.scope.setdefault("state", {})["principal"] = principal
        return principal

    dependency.radflow_roles = wanted  # type: ignore[attr-defined]  # read by undeclared_routes
    dependency.radflow_audit = audit  # type: ignore[attr-defined]
    return dependency


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in ("localhost", "testclient")  # Starlette's TestClient peer


def loopback_only(request: Request) -> None:
    """For /healthz and /metrics: open, but only to a caller on this machine."""
    client = request.client.host if request.client else None
    if not _is_loopback(client):
        raise HTTPException(403, "only answered on the loopback interface")


loopback_only.radflow_roles = frozenset({"loopback"})  # type: ignore[attr-defined]


def declared_roles(route: APIRoute) -> frozenset[str] | None:
    """The roles a route's dependencies demand (None: it declares nothing)."""
    found: set[str] = set()
    declared = False
    stack = [route.dependant]
    while stack:
        dependant = stack.pop()
        roles = getattr(dependant.call, "radflow_roles", None)
        if roles is not None:
            declared = True
            found |= roles
        stack.extend(dependant.dependencies)
    return frozenset(found) if declared else None


def flat_routes(routes: Iterable[Any]) -> list[Any]:
    """The app's routes with included routers flattened. FastAPI 0.16x keeps an included router
    as one lazy `_IncludedRouter` entry in `app.routes`; its private helper yields the routes
    as served (with the router's dependencies merged), which is what must be checked."""
    try:
        from fastapi.routing import _iter_included_route_candidates  # type: ignore[attr-defined]
    except ImportError:  # older FastAPI: app.routes is already flat
        return list(routes)
    return list(_iter_included_route_candidates(list(routes)))


def undeclared_routes(routes: Iterable[Any]) -> list[str]:
    """`METHOD path` of every route that neither declares roles nor is a listed public one."""
    missing = []
    for route in flat_routes(routes):
        path = getattr(route, "path", "")
        if path in PUBLIC_PATHS:
            continue
        if isinstance(route, APIRoute):
            if declared_roles(route) is None:
                missing.append(f"{','.join(sorted(route.methods or ()))} {path}")
        elif hasattr(route, "methods") or hasattr(route, "routes"):
            missing.append(f"{','.join(sorted(getattr(route, 'methods', None) or []))} {path}".strip())
    return missing


class AccessAuditMiddleware:
    """Writes the access-audit row a `requires(audit=...)` dependency noted, with the status code
    of the answer (a refused or failed read is recorded too). Pure ASGI: no body buffering."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            note = (scope.get("state") or {}).get("access_audit")
            gate = getattr(scope["app"].state, "gate", None) if "app" in scope else None
            if note and gate is not None and gate.audit is not None:
                await asyncio.to_thread(_write, gate, note, scope, status["code"])


def _write(gate: Gate, note: dict[str, Any], scope: Scope, status: int) -> None:
    params = note["path_params"]
    accession = params.get("accession") or None
    patient = note["patient_id"] or None
    if accession and not patient:
        try:
            patient = gate.patient_of(accession)
        except Exception:  # the audit row matters more than the patient lookup
            log.exception("access audit: patient lookup failed for an accession")
    client = scope.get("client")
    if gate.audit is None:
        return
    try:
        gate.audit.record(
            at=datetime.now(UTC).isoformat(timespec="microseconds"),
            username=note["username"] or "(anonymous)",
            roles=note["roles"],
            client=f"{client[0]}:{client[1]}" if client else "",
            method=scope["method"],
            route=note["route"],
            path=scope["path"],
            kind=note["kind"],
            accession=accession,
            patient_key=patient,
            status=status,
            detail=note["detail"],
        )
    except Exception:
        log.exception("access audit: could not record %s %s", scope["method"], note["route"])


# The role matrix (README "Access control"): who may call which family of routes. Admin passes
# everywhere without being named.
EXAM_READERS = ("radiologist", "technologist", "scheduler", "operations", "auditor")
REPORTERS = ("radiologist",)
CRITICAL_ACKNOWLEDGERS = ("radiologist", "operations")
INTERFACE_STAFF = ("interface_analyst", "operations")
IMAGING_STAFF = ("technologist", "radiologist", "operations")
RECONCILERS = ("technologist", "operations")
AUDITORS = ("auditor",)
OPERATORS = ("operations",)
ADMINS = ("admin",)
