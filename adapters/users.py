"""Local users and their sessions, in the messages database (SQLite or PostgreSQL).

Passwords are stored as argon2id hashes (argon2-cffi), never in any other form. A user whose
roles the configuration names (RADFLOW_MFA_ROLES) must also give a TOTP code (RFC 6238, pyotp);
a code is accepted once (RFC 6238 §5.2). Repeated failures lock the account for a while, so a
password cannot be guessed online. Refresh tokens and web sessions are random secrets of which
only a SHA-256 is stored: a stolen database yields no usable token, and each can be revoked.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from adapters.sql import Database

ROLES = (
    "radiologist",
    "technologist",
    "scheduler",
    "billing",
    "interface_analyst",
    "operations",
    "auditor",
    "admin",
)
MIN_PASSWORD_LENGTH = 10
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
TOTP_ISSUER = "radflow"

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS users (
        username TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        roles TEXT NOT NULL,
        totp_secret TEXT,
        totp_last_step BIGINT,
        failed_attempts INTEGER NOT NULL DEFAULT 0,
        locked_until TEXT,
        must_change_password INTEGER NOT NULL DEFAULT 0,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        last_login_at TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS auth_tokens (
        id TEXT PRIMARY KEY,
        username TEXT NOT NULL,
        kind TEXT NOT NULL,
        token_hash TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        revoked_at TEXT,
        replaced_by TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS auth_tokens_by_user ON auth_tokens (username)",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class UserError(ValueError):
    """Bad input for a user change (unknown user or role, weak password); the message says which."""


class LoginRefused(Exception):
    """Credentials that do not open a session. `status` is the HTTP answer: 401 wrong
    credentials, 423 locked, 403 a step is missing (password change, MFA enrolment)."""

    def __init__(self, reason: str, status: int = 401, username: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.username = username


@dataclass(frozen=True)
class User:
    username: str
    roles: frozenset[str]
    totp_secret: str | None
    failed_attempts: int
    locked_until: str | None
    must_change_password: bool
    disabled: bool
    created_at: str
    last_login_at: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> User:
        return cls(
            username=row["username"],
            roles=frozenset(r for r in str(row["roles"]).split(",") if r),
            totp_secret=row["totp_secret"] or None,
            failed_attempts=int(row["failed_attempts"]),
            locked_until=row["locked_until"],
            must_change_password=bool(row["must_change_password"]),
            disabled=bool(row["disabled"]),
            created_at=row["created_at"],
            last_login_at=row["last_login_at"],
        )

    def locked(self, now: datetime) -> bool:
        return bool(self.locked_until) and str(self.locked_until) > _iso(now)

    def public(self) -> dict[str, Any]:
        """What an admin may see: no hash, no TOTP secret."""
        return {
            "username": self.username,
            "roles": sorted(self.roles),
            "mfa": self.totp_secret is not None,
            "failed_attempts": self.failed_attempts,
            "locked_until": self.locked_until,
            "must_change_password": self.must_change_password,
            "disabled": self.disabled,
            "created_at": self.created_at,
            "last_login_at": self.last_login_at,
        }


def check_roles(roles: Iterable[str]) -> frozenset[str]:
    wanted = frozenset(r.strip() for r in roles if r.strip())
    unknown = wanted - set(ROLES)
    if unknown:
        raise UserError(f"unknown role(s) {', '.join(sorted(unknown))}; known: {', '.join(ROLES)}")
    if not wanted:
        raise UserError(f"give at least one role of: {', '.join(ROLES)}")
    return wanted


def check_password(username: str, password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"password too short: at least {MIN_PASSWORD_LENGTH} characters")
    if username.lower() in password.lower():
        raise UserError("password must not contain the user name")


def one_time_password(username: str = "") -> str:
    """20 random characters (~120 bits) that pass `check_password` for this user."""
    while True:
        password = secrets.token_urlsafe(15)
        if not username or username.lower() not in password.lower():
            return password


class Users:
    def __init__(
        self,
        db: Database,
        *,
        max_failures: int = 5,
        lockout: timedelta = timedelta(minutes=15),
        hasher: PasswordHasher | None = None,
    ) -> None:
        self.db = db
        self.max_failures = max_failures
        self.lockout = lockout
        self.hasher = hasher or PasswordHasher()
        self._dummy_hash = ""

    def create_schema(self) -> None:
        with self.db.serialised("schema:users") as cur:
            for statement in SCHEMA:
                cur.execute(statement)

    # ---- users -------------------------------------------------------------------------------

    def get(self, username: str) -> User | None:
        rows = self.db.query("SELECT * FROM users WHERE username = ?", (username,))
        return User.from_row(rows[0]) if rows else None

    def require(self, username: str) -> User:
        user = self.get(username)
        if user is None:
            raise UserError(f"no user {username!r}")
        return user

    def all(self) -> list[User]:
        return [User.from_row(r) for r in self.db.query("SELECT * FROM users ORDER BY username")]

    def count(self) -> int:
        return int(self.db.query("SELECT COUNT(*) AS n FROM users")[0]["n"])

    def add(
        self, username: str, password: str, roles: Iterable[str], *, must_change_password: bool = False
    ) -> User:
        if not USERNAME.match(username):
            raise UserError(
                f"invalid user name {username!r}: letters, digits and . _ @ - (up to 64, starting with a letter or digit)"
            )
        wanted = check_roles(roles)
        check_password(username, password)
        now = _iso(utcnow())
        with self.db.transaction() as cur:
            if cur.execute("SELECT 1 AS x FROM users WHERE username = ?", (username,)).fetchone():
                raise UserError(f"user {username!r} exists already")
            cur.execute(
                "INSERT INTO users (username, password_hash, roles, must_change_password, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    username,
                    self.hasher.hash(password),
                    ",".join(sorted(wanted)),
                    int(must_change_password),
                    now,
                    now,
                ),
            )
        return self.require(username)

    def create_first_admin(self) -> str | None:
        """At first start, when nobody can sign in: an `admin` with a one-time password (to be
        changed at first login) and a TOTP secret. Returns the password, or None when any user
        exists (also when another process created one a moment earlier)."""
        password = one_time_password("admin")
        now = _iso(utcnow())
        with self.db.serialised("users:first-admin") as cur:
            if cur.execute("SELECT COUNT(*) AS n FROM users").fetchone() != {"n": 0}:
                return None
            cur.execute(
                "INSERT INTO users (username, password_hash, roles, totp_secret, must_change_password, "
                "created_at, updated_at) VALUES ('admin', ?, 'admin', ?, 1, ?, ?)",
                (self.hasher.hash(password), pyotp.random_base32(), now, now),
            )
        return password

    def _update(self, username: str, assignments: str, params: Iterable[Any]) -> None:
        self.require(username)
        self.db.execute(
            f"UPDATE users SET {assignments}, updated_at = ? WHERE username = ?",
            (*params, _iso(utcnow()), username),
        )

    def set_password(self, username: str, password: str, *, must_change_password: bool = False) -> None:
        check_password(username, password)
        self._update(
            username,
            "password_hash = ?, must_change_password = ?",
            (self.hasher.hash(password), int(must_change_password)),
        )

    def set_roles(self, username: str, roles: Iterable[str]) -> User:
        self._update(username, "roles = ?", (",".join(sorted(check_roles(roles))),))
        return self.require(username)

    def enable_mfa(self, username: str) -> str:
        """A new TOTP secret (replacing any earlier one); show it to the user once."""
        secret = pyotp.random_base32()
        self._update(username, "totp_secret = ?, totp_last_step = NULL", (secret,))
        return secret

    def disable_mfa(self, username: str) -> None:
        self._update(username, "totp_secret = NULL, totp_last_step = NULL", ())

    def unlock(self, username: str) -> None:
        self._update(username, "failed_attempts = 0, locked_until = NULL", ())

    def set_disabled(self, username: str, disabled: bool) -> None:
        self._update(username, "disabled = ?", (int(disabled),))
        if disabled:
            self.revoke_all(username)

    @staticmethod
    def provisioning_uri(username: str, secret: str) -> str:
        return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=TOTP_ISSUER)

    # ---- signing in --------------------------------------------------------------------------

    def _verify_hash(self, stored: str, password: str) -> bool:
        try:
            return bool(self.hasher.verify(stored, password))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def _fail(self, user: User, reason: str, now: datetime) -> LoginRefused:
        failures = user.failed_attempts + 1
        if failures >= self.max_failures:
            until = _iso(now + self.lockout)
            self.db.execute(
                "UPDATE users SET failed_attempts = 0, locked_until = ? WHERE username = ?",
                (until, user.username),
            )
            return LoginRefused(
                f"{reason}; account locked after {failures} failed attempts until {until}", 423, user.username
            )
        self.db.execute("UPDATE users SET failed_attempts = ? WHERE username = ?", (failures, user.username))
        return LoginRefused(reason, 401, user.username)

    def authenticate(
        self,
        username: str,
        password: str,
        otp: str | None = None,
        *,
        mfa_roles: Iterable[str] = (),
        allow_password_change: bool = False,
        now: datetime | None = None,
    ) -> User:
        """The user these credentials open, or LoginRefused with the reason. Wrong passwords and
        wrong codes count towards the lock-out; a locked account is refused before any check."""
        now = now or utcnow()
        user = self.get(username)
        if user is None:
            if not self._dummy_hash:
                self._dummy_hash = self.hasher.hash(secrets.token_hex(8))
            self._verify_hash(self._dummy_hash, password)  # the same time as a wrong password
            raise LoginRefused("invalid user name or password", 401, username)
        if user.disabled:
            raise LoginRefused("account disabled", 403, username)
        if user.locked(now):
            raise LoginRefused(
                f"account locked until {user.locked_until} after repeated failures (an admin can unlock it)",
                423,
                username,
            )
        row = self.db.query(
            "SELECT password_hash, totp_last_step FROM users WHERE username = ?", (username,)
        )[0]
        if not self._verify_hash(row["password_hash"], password):
            raise self._fail(user, "invalid user name or password", now)
        needs_mfa = sorted(user.roles & set(mfa_roles))
        if needs_mfa:
            if user.totp_secret is None:
                raise LoginRefused(
                    f"a second factor is required for role {', '.join(needs_mfa)} and none is enrolled: "
                    f"an admin runs `radflow users mfa {username}`",
                    403,
                    username,
                )
            if not otp:
                raise LoginRefused(
                    f"a TOTP code (otp) is required for role {', '.join(needs_mfa)}", 401, username
                )
            step = self._totp_step(user.totp_secret, otp.strip(), now)
            if step is None:
                raise self._fail(user, "invalid TOTP code", now)
            if row["totp_last_step"] is not None and step <= int(row["totp_last_step"]):
                raise self._fail(user, "TOTP code already used: wait for the next one", now)
            self.db.execute("UPDATE users SET totp_last_step = ? WHERE username = ?", (step, username))
        if user.must_change_password and not allow_password_change:
            raise LoginRefused(
                "password change required before first use: POST /api/auth/password (or sign in at /ui/login)",
                403,
                username,
            )
        self.db.execute(
            "UPDATE users SET failed_attempts = 0, locked_until = NULL, last_login_at = ? WHERE username = ?",
            (_iso(now), username),
        )
        return self.require(username)

    @staticmethod
    def _totp_step(secret: str, code: str, now: datetime) -> int | None:
        """The time step a code belongs to (this one or one either side, for clock drift)."""
        totp = pyotp.TOTP(secret)
        at = int(now.timestamp())
        for offset in (0, -1, 1):
            moment = at + offset * totp.interval
            if hmac.compare_digest(totp.at(moment), code):
                return moment // totp.interval
        return None

    # ---- refresh tokens and web sessions -------------------------------------------------------

    def issue_token(self, username: str, kind: str, lifetime: timedelta) -> tuple[str, str]:
        """(id, token): the token is `<id>.<secret>`; only the secret's SHA-256 is stored."""
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        now = utcnow()
        self.db.execute(
            "INSERT INTO auth_tokens (id, username, kind, token_hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
            (token_id, username, kind, _digest(secret), _iso(now), _iso(now + lifetime)),
        )
        return token_id, f"{token_id}.{secret}"

    def redeem_refresh(self, token: str, lifetime: timedelta) -> tuple[User, str]:
        """A refresh token for the user and a new one (the old one is revoked: rotation). A
        revoked token presented again means it leaked: every session of the user ends."""
        token_id, _, secret = token.partition(".")
        rows = self.db.query("SELECT * FROM auth_tokens WHERE id = ? AND kind = 'refresh'", (token_id,))
        if not rows or not hmac.compare_digest(rows[0]["token_hash"], _digest(secret)):
            raise LoginRefused("invalid refresh token", 401)
        row = rows[0]
        if row["revoked_at"]:
            self.revoke_all(row["username"])
            raise LoginRefused(
                "refresh token already used or revoked: all sessions ended, sign in again", 401
            )
        if row["expires_at"] <= _iso(utcnow()):
            raise LoginRefused("refresh token expired: sign in again", 401)
        user = self.get(row["username"])
        if user is None or user.disabled:
            raise LoginRefused("account disabled", 403)
        if user.locked(utcnow()):
            raise LoginRefused(f"account locked until {user.locked_until}", 423)
        new_id, new_token = self.issue_token(user.username, "refresh", lifetime)
        self.db.execute(
            "UPDATE auth_tokens SET revoked_at = ?, replaced_by = ? WHERE id = ?",
            (_iso(utcnow()), new_id, token_id),
        )
        return user, new_token

    def revoke(self, token_id: str) -> None:
        self.db.execute(
            "UPDATE auth_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (_iso(utcnow()), token_id),
        )

    def revoke_all(self, username: str) -> None:
        self.db.execute(
            "UPDATE auth_tokens SET revoked_at = ? WHERE username = ? AND revoked_at IS NULL",
            (_iso(utcnow()), username),
        )

    def session_roles(self, token_id: str) -> frozenset[str] | None:
        """The current roles of a live web session's user (a role change applies at once);
        None when the session was revoked, expired, or its user disabled or locked."""
        rows = self.db.query(
            "SELECT u.roles, u.locked_until FROM auth_tokens t JOIN users u ON u.username = t.username "
            "WHERE t.id = ? AND t.kind = 'session' AND t.revoked_at IS NULL AND t.expires_at > ? AND u.disabled = 0",
            (token_id, _iso(utcnow())),
        )
        if not rows or (rows[0]["locked_until"] and str(rows[0]["locked_until"]) > _iso(utcnow())):
            return None
        return frozenset(r for r in str(rows[0]["roles"]).split(",") if r)


def totp_now(secret: str) -> str:
    """The current code for a secret (the CLI's `mfa --show-code`, and tests)."""
    return pyotp.TOTP(secret).at(int(time.time()))
