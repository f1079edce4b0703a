"""Signing in: the OAuth2 password flow (POST /api/auth/token, with `otp` for the roles that need
a second factor), refresh with rotation, who-am-I, password change, and user administration.

Access tokens are HS256 JWTs valid for minutes (RADFLOW_ACCESS_TOKEN_MINUTES); they carry the
roles, so a role change takes effect at the next refresh. The signing key is RADFLOW_AUTH_SECRET
or a random key generated once into <data_dir>/auth.key (mode 0600); API replicas that share
no disk must be given the same RADFLOW_AUTH_SECRET.

Every sign-in, refused or not, is written to the access audit (kind `login`), never with the
password; a refused one is also logged with its reason.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request
from pydantic import BaseModel, Field

from adapters.access_audit import AccessAudit
from adapters.settings import Settings
from adapters.sql import Database
from adapters.users import LoginRefused, User, UserError, Users, one_time_password
from api.authz import ROLES, Gate, Principal, requires

log = logging.getLogger(__name__)

FormText = Annotated[str, Form(min_length=1, max_length=256)]


def signing_key(settings: Settings) -> bytes:
    """RADFLOW_AUTH_SECRET, or the key in <data_dir>/auth.key, created (0600) on first use."""
    if settings.auth_secret:
        if len(settings.auth_secret) < 32:
            raise ValueError("RADFLOW_AUTH_SECRET is too short: give at least 32 characters")
        return settings.auth_secret.encode()
    path: Path = settings.auth_key_path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as out:
        out.write(secrets.token_hex(32).encode())
    return path.read_bytes().strip()


def users_store(settings: Settings, db: Database | None = None) -> Users:
    users = Users(
        db or Database.for_file(settings, settings.messages_sqlite_path),
        max_failures=settings.auth_max_failures,
        lockout=timedelta(minutes=settings.auth_lockout_minutes),
    )
    users.create_schema()
    return users


def bootstrap_admin(users: Users) -> None:
    """No user at all: create `admin` with a one-time password, shown once on stderr."""
    password = users.create_first_admin()
    if password is None:
        return
    admin = users.require("admin")
    uri = users.provisioning_uri("admin", admin.totp_secret or "")
    print(
        "\nradflow: no user existed, so one was created (shown once, never stored in clear):\n"
        f"  user: admin\n  one-time password: {password}\n"
        f"  TOTP (add to an authenticator app): {uri}\n"
        "  Sign in at /ui/login and choose a new password; or `radflow users passwd admin`.\n",
        file=sys.stderr,
        flush=True,
    )


class TokenAnswer(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    refresh_token: str
    username: str
    roles: list[str]


class NewUser(BaseModel):
    username: Annotated[str, Field(min_length=1, max_length=64)]
    roles: Annotated[list[str], Field(min_length=1, max_length=8)]
    password: Annotated[str, Field(max_length=256)] | None = None  # none: a one-time password


class RoleChange(BaseModel):
    roles: Annotated[list[str], Field(min_length=1, max_length=8)]


class Auth:
    """The pieces the sign-in routes share, built once by `install`."""

    def __init__(self, settings: Settings, users: Users, gate: Gate) -> None:
        self.settings = settings
        self.users = users
        self.gate = gate

    def record_login(self, request: Request, username: str, status: int, reason: str = "") -> None:
        if reason:
            log.info("sign-in refused for %s from %s: %s", username or "?", _client(request), reason)
        if self.gate.audit is None:
            return
        self.gate.audit.record(
            at=datetime.now(UTC).isoformat(timespec="microseconds"),
            username=username[:64] or "(anonymous)",
            roles="",
            client=_client(request),
            method=request.method,
            route=request.url.path,
            path=request.url.path,
            kind="login",
            accession=None,
            patient_key=None,
            status=status,
            detail=reason[:300],
        )

    def tokens(self, user: User, refresh: str | None = None) -> TokenAnswer:
        """A new access token, with `refresh` (a rotated refresh token) or a new refresh token."""
        if refresh is None:
            _, refresh = self.users.issue_token(
                user.username, "refresh", timedelta(hours=self.settings.refresh_token_hours)
            )
        return TokenAnswer(
            access_token=self.gate.issue(user.username, user.roles),
            expires_in=int(self.settings.access_token_minutes * 60),
            refresh_token=refresh,
            username=user.username,
            roles=sorted(user.roles),
        )

    def sign_in(
        self,
        request: Request,
        username: str,
        password: str,
        otp: str | None,
        *,
        allow_password_change: bool = False,
    ) -> User:
        try:
            user = self.users.authenticate(
                username,
                password,
                otp,
                mfa_roles=self.settings.mfa_role_set,
                allow_password_change=allow_password_change,
            )
        except LoginRefused as refused:
            self.record_login(request, username, refused.status, refused.reason)
            raise
        self.record_login(request, username, 200)
        return user


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else ""


def refused(error: LoginRefused) -> HTTPException:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return HTTPException(error.status, error.reason, headers=headers)


def auth_router(auth: Auth) -> APIRouter:
    router = APIRouter(prefix="/api/auth", tags=["auth"])

    @router.post("/token", response_model=TokenAnswer)
    def token(
        request: Request,
        username: FormText,
        password: Annotated[str, Form(max_length=256)],
        otp: Annotated[str | None, Form(max_length=16)] = None,
        grant_type: Annotated[str | None, Form(pattern="^password$")] = None,
    ) -> TokenAnswer:
        """OAuth2 password flow: an access token (minutes) and a refresh token (hours). A user
        with a role in RADFLOW_MFA_ROLES also sends `otp`, the current TOTP code."""
        try:
            user = auth.sign_in(request, username, password, otp)
        except LoginRefused as error:
            raise refused(error) from error
        return auth.tokens(user)

    @router.post("/refresh", response_model=TokenAnswer)
    def refresh(
        request: Request,
        refresh_token: Annotated[str, Form(min_length=1, max_length=200)],
        grant_type: Annotated[str | None, Form(pattern="^refresh_token$")] = None,
    ) -> TokenAnswer:
        """A new access token and a new refresh token; the one sent is spent."""
        try:
            user, rotated = auth.users.redeem_refresh(
                refresh_token, timedelta(hours=auth.settings.refresh_token_hours)
            )
        except LoginRefused as error:
            raise refused(error) from error
        return auth.tokens(user, rotated)

    @router.post("/password")
    def change_password(
        request: Request,
        username: FormText,
        password: Annotated[str, Form(max_length=256)],
        new_password: Annotated[str, Form(max_length=256)],
        otp: Annotated[str | None, Form(max_length=16)] = None,
    ) -> dict[str, Any]:
        """Change one's own password, proving the current one (and the TOTP code where the role
        needs it): also the first step of a user who must change a one-time password. Every
        refresh token and session of the user ends."""
        try:
            user = auth.sign_in(request, username, password, otp, allow_password_change=True)
        except LoginRefused as error:
            raise refused(error) from error
        if new_password == password:
            raise HTTPException(422, "the new password must differ from the current one")
        try:
            auth.users.set_password(user.username, new_password)
        except UserError as error:
            raise HTTPException(422, str(error)) from error
        auth.users.revoke_all(user.username)
        return {"username": user.username, "changed": True}

    @router.get("/me")
    def me(who: Annotated[Principal, Depends(requires(*ROLES))]) -> dict[str, Any]:
        user = auth.users.get(who.username)
        return {
            "username": who.username,
            "roles": sorted(who.roles),
            "via": who.via,
            "mfa": bool(user and user.totp_secret),
        }

    return router


def users_router(auth: Auth) -> APIRouter:
    """User administration over HTTP (the same as `radflow users ...`): admins only."""
    router = APIRouter(prefix="/api/users", tags=["users"], dependencies=[Depends(requires("admin"))])
    users = auth.users

    def known(username: str) -> User:
        user = users.get(username)
        if user is None:
            raise HTTPException(404, f"no user {username!r}")
        return user

    @router.get("")
    def list_users() -> dict[str, Any]:
        return {"users": [u.public() for u in users.all()]}

    @router.post("", status_code=201)
    def add_user(body: NewUser) -> dict[str, Any]:
        """A new user; without `password`, a one-time password is made and answered once (the
        user must change it at first sign-in)."""
        password = body.password or one_time_password(body.username)
        try:
            user = users.add(body.username, password, body.roles, must_change_password=body.password is None)
        except UserError as error:
            raise HTTPException(409 if "exists" in str(error) else 422, str(error)) from error
        answer = user.public()
        if body.password is None:
            answer["one_time_password"] = password
        return answer

    @router.get("/{username}")
    def get_user(username: str) -> dict[str, Any]:
        return known(username).public()

    @router.put("/{username}/roles")
    def set_roles(username: str, body: RoleChange) -> dict[str, Any]:
        known(username)
        try:
            return users.set_roles(username, body.roles).public()
        except UserError as error:
            raise HTTPException(422, str(error)) from error

    @router.post("/{username}/unlock")
    def unlock(username: str) -> dict[str, Any]:
        known(username)
        users.unlock(username)
        return known(username).public()

    return router


def install(app: FastAPI, settings: Settings, db: Database, patient_of: Any) -> Auth:
    """The gate on `app.state.gate`, the sign-in and user routes, and the first admin."""
    audit = AccessAudit(db)
    audit.create_schema()
    users = users_store(settings, db)
    gate = Gate(
        secret=signing_key(settings),
        audit=audit,
        session_roles=users.session_roles,
        patient_of=patient_of,
        access_minutes=settings.access_token_minutes,
    )
    app.state.gate = gate
    auth = Auth(settings, users, gate)
    app.state.auth = auth
    app.include_router(auth_router(auth))
    app.include_router(users_router(auth))
    bootstrap_admin(users)
    return auth
