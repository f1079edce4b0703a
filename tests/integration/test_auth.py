"""Signing in and what a signed-in caller may do, on the real app (create_app) over its SQLite
files, and the users store on SQLite and PostgreSQL: the password flow, lock-out, the TOTP
second factor, refresh rotation, expiry, the first admin's one-time password, the web UI's
cookie with its CSRF header rule, deny-by-default, and `radflow users`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyotp
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from adapters.access_audit import AccessAudit
from adapters.settings import Settings
from adapters.sql import Database
from adapters.users import LoginRefused, Users, totp_now, utcnow
from api import cli
from api.app import create_app
from api.authz import SESSION_COOKIE, requires, undeclared_routes

PASSWORD = "a long enough password"


@pytest.fixture
def app(tmp_path: Path) -> Any:
    return create_app(Settings(data_dir=tmp_path, auth_max_failures=3))


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def users_of(app: Any) -> Users:
    users: Users = app.state.auth.users
    return users


def sign_in(client: TestClient, username: str, password: str = PASSWORD, **extra: str) -> Any:
    return client.post("/api/auth/token", data={"username": username, "password": password, **extra})


def bearer(answer: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def logins(app: Any, username: str) -> list[tuple[int, str]]:
    rows = app.state.gate.audit.search(user=username)
    return [(r["status"], r["detail"]) for r in rows if r["kind"] == "login"]


def test_a_password_opens_a_token_that_carries_the_users_roles(app: Any, client: TestClient) -> None:
    users_of(app).add("dr.alice", PASSWORD, ["radiologist"])
    answer = sign_in(client, "dr.alice")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (
        body["token_type"] == "bearer" and body["expires_in"] == 15 * 60 and body["roles"] == ["radiologist"]
    )
    me = client.get("/api/auth/me", headers=bearer(answer)).json()
    assert me == {"username": "dr.alice", "roles": ["radiologist"], "via": "token", "mfa": False}
    assert client.get("/api/exams", headers=bearer(answer)).status_code == 200
    refused = client.get("/api/hl7/messages", headers=bearer(answer))
    assert (
        refused.status_code == 403
        and "needs one of interface_analyst, operations" in refused.json()["detail"]
    )


def test_wrong_passwords_and_unknown_users_get_the_same_401_and_are_recorded_without_the_password(
    app: Any, client: TestClient
) -> None:
    users_of(app).add("dr.alice", PASSWORD, ["radiologist"])
    wrong = sign_in(client, "dr.alice", "not the password at all")
    unknown = sign_in(client, "nobody", "not the password at all")
    assert (wrong.status_code, unknown.status_code) == (401, 401)
    assert wrong.json()["detail"] == unknown.json()["detail"] == "invalid user name or password"
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert sign_in(client, "dr.alice").status_code == 200
    assert logins(app, "dr.alice") == [(401, "invalid user name or password"), (200, "")]
    audit_text = str(app.state.gate.audit.search(limit=1000))
    assert PASSWORD not in audit_text and "not the password at all" not in audit_text


def test_repeated_failures_lock_the_account_even_against_the_right_password_until_unlocked(
    app: Any, client: TestClient
) -> None:
    users_of(app).add("tech.tom", PASSWORD, ["technologist"])
    answers = [sign_in(client, "tech.tom", f"wrong guess {n}") for n in range(3)]  # the limit is 3 here
    assert [a.status_code for a in answers] == [401, 401, 423]
    assert "locked after 3 failed attempts" in answers[-1].json()["detail"]
    locked = sign_in(client, "tech.tom")
    assert locked.status_code == 423 and "account locked until" in locked.json()["detail"]
    users_of(app).unlock("tech.tom")
    assert sign_in(client, "tech.tom").status_code == 200


def test_lock_out_lasts_the_configured_time(settings: Settings, uid: str) -> None:
    users = Users(Database.for_file(settings, settings.messages_sqlite_path), max_failures=2)
    users.create_schema()
    name = f"u{uid.lower()}"
    users.add(name, PASSWORD, ["scheduler"])
    for _ in range(2):
        with pytest.raises(LoginRefused):
            users.authenticate(name, "wrong password")
    with pytest.raises(LoginRefused) as refused:
        users.authenticate(name, PASSWORD)
    assert refused.value.status == 423
    later = users.authenticate(name, PASSWORD, now=utcnow() + timedelta(minutes=16))
    assert later.failed_attempts == 0 and later.locked_until is None


def test_roles_that_need_a_second_factor_must_give_a_fresh_totp_code(app: Any, client: TestClient) -> None:
    users = users_of(app)
    users.add("ann.auditor", PASSWORD, ["auditor"])
    missing = sign_in(client, "ann.auditor")
    assert missing.status_code == 403 and "radflow users mfa ann.auditor" in missing.json()["detail"]
    secret = users.enable_mfa("ann.auditor")
    no_code = sign_in(client, "ann.auditor")
    assert (
        no_code.status_code == 401
        and "TOTP code (otp) is required for role auditor" in no_code.json()["detail"]
    )
    wrong = sign_in(client, "ann.auditor", otp="000000" if totp_now(secret) != "000000" else "111111")
    assert wrong.status_code == 401 and wrong.json()["detail"] == "invalid TOTP code"
    code = totp_now(secret)
    assert sign_in(client, "ann.auditor", otp=code).status_code == 200
    replayed = sign_in(client, "ann.auditor", otp=code)
    assert replayed.status_code == 401 and "already used" in replayed.json()["detail"]
    assert users.require("ann.auditor").failed_attempts == 1  # the replay counts towards lock-out


def test_refresh_rotates_and_a_spent_refresh_token_ends_every_session(app: Any, client: TestClient) -> None:
    users_of(app).add("dr.alice", PASSWORD, ["radiologist"])
    first = sign_in(client, "dr.alice").json()
    second = client.post("/api/auth/refresh", data={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200, second.text
    assert second.json()["refresh_token"] != first["refresh_token"] and second.json()["roles"] == [
        "radiologist"
    ]
    assert client.get("/api/exams", headers=bearer(second)).status_code == 200

    replayed = client.post("/api/auth/refresh", data={"refresh_token": first["refresh_token"]})
    assert replayed.status_code == 401 and "all sessions ended" in replayed.json()["detail"]
    revoked = client.post("/api/auth/refresh", data={"refresh_token": second.json()["refresh_token"]})
    assert revoked.status_code == 401
    assert client.post("/api/auth/refresh", data={"refresh_token": "made.up"}).status_code == 401


def test_a_role_change_takes_effect_at_the_next_refresh(app: Any, client: TestClient) -> None:
    users_of(app).add("sam", PASSWORD, ["scheduler"])
    first = sign_in(client, "sam").json()
    users_of(app).set_roles("sam", ["interface_analyst"])
    second = client.post("/api/auth/refresh", data={"refresh_token": first["refresh_token"]}).json()
    assert second["roles"] == ["interface_analyst"]
    assert (
        client.get(
            "/api/hl7/messages", headers={"Authorization": f"Bearer {second['access_token']}"}
        ).status_code
        == 200
    )


def test_expired_forged_and_malformed_tokens_are_401_with_the_reason(app: Any, client: TestClient) -> None:
    gate = app.state.gate
    expired = gate.issue("dr.alice", ["radiologist"], minutes=-1)
    answer = client.get("/api/exams", headers={"Authorization": f"Bearer {expired}"})
    assert answer.status_code == 401 and answer.json()["detail"] == "token expired"
    assert answer.headers["www-authenticate"] == "Bearer"
    from api.authz import Gate

    forged = Gate(secret=b"x" * 32).issue("mallory", ["admin"])
    answer = client.get("/api/exams", headers={"Authorization": f"Bearer {forged}"})
    assert answer.status_code == 401 and "invalid token" in answer.json()["detail"]
    assert client.get("/api/exams", headers={"Authorization": "Bearer nonsense"}).status_code == 401
    session = gate.issue("dr.alice", ["radiologist"], kind="session", sid="x")
    misused = client.get("/api/exams", headers={"Authorization": f"Bearer {session}"})
    assert misused.status_code == 401 and "not an access token" in misused.json()["detail"]


def test_the_first_start_creates_an_admin_with_a_one_time_password_that_must_be_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(data_dir=tmp_path)
    app = create_app(settings)
    printed = capsys.readouterr().err
    password = next(line.split(": ", 1)[1] for line in printed.splitlines() if "one-time password:" in line)
    secret = pyotp.parse_uri(
        next(line.split(": ", 1)[1] for line in printed.splitlines() if "otpauth://" in line)
    ).secret
    admin = users_of(app).get("admin")
    assert admin is not None and admin.must_change_password and admin.roles == {"admin"}
    assert (tmp_path / "auth.key").stat().st_mode & 0o777 == 0o600

    create_app(settings)  # the next start: admin exists, nothing new is printed
    assert "one-time password" not in capsys.readouterr().err

    with TestClient(app) as client:
        code = pyotp.TOTP(secret)
        first = sign_in(client, "admin", password, otp=code.now())
        assert first.status_code == 403 and "password change required" in first.json()["detail"]
        changed = client.post(
            "/api/auth/password",
            data={
                "username": "admin",
                "password": password,
                "new_password": PASSWORD,
                "otp": code.at(time.time() + 30),
            },
        )
        assert changed.status_code == 200, changed.text
        assert sign_in(client, "admin", password, otp=code.at(time.time() + 60)).status_code in (401, 423)
    users_of(app).unlock("admin")
    assert not users_of(app).require("admin").must_change_password
    later = utcnow() + timedelta(seconds=60)  # the next half-minute's code (this one's are spent)
    admin = users_of(app).authenticate(
        "admin", PASSWORD, code.at(later.timestamp()), mfa_roles=["admin"], now=later
    )
    assert admin.roles == {"admin"}


def test_the_web_ui_signs_in_with_an_httponly_strict_cookie_and_changes_need_the_csrf_header(
    app: Any, client: TestClient
) -> None:
    users_of(app).add("dr.alice", PASSWORD, ["radiologist", "technologist"])
    page = client.get("/ui/reading", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/ui/login?next=%2Fui%2Freading"
    form = client.get("/ui/login?next=/ui/reading")
    assert form.status_code == 200 and 'name="password"' in form.text

    refused = client.post("/ui/login", data={"username": "dr.alice", "password": "wrong password!"})
    assert refused.status_code == 401 and "invalid user name or password" in refused.text
    signed = client.post(
        "/ui/login",
        data={"username": "dr.alice", "password": PASSWORD, "next": "//evil.example/"},
        follow_redirects=False,
    )
    assert signed.status_code == 303 and signed.headers["location"] == "/ui/reading"  # never off-site
    cookie = signed.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie

    assert client.get("/ui/reading").status_code == 200
    assert client.get("/api/auth/me").json()["via"] == "cookie"
    claim = "/api/reconciliation/mpps/1.2.3/link"
    no_header = client.post(claim, json={})
    assert no_header.status_code == 403 and "X-Requested-With" in no_header.json()["detail"]
    with_header = client.post(claim, json={}, headers={"X-Requested-With": "radflow"})
    assert with_header.status_code == 422  # past the gate: the empty body is what is refused

    users_of(app).set_roles("dr.alice", ["radiologist"])  # a web session follows a role change at once
    after_change = client.post(claim, json={}, headers={"X-Requested-With": "radflow"})
    assert after_change.status_code == 403 and "needs one of operations, technologist" in after_change.text

    session = client.cookies.get(SESSION_COOKIE)
    out = client.post("/ui/logout", follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    client.cookies.set(SESSION_COOKIE, session or "")  # a copy kept after signing out is worthless
    ended = client.get("/api/exams")
    assert ended.status_code == 401 and "session ended" in ended.json()["detail"]


def test_the_web_ui_sets_the_first_password_at_sign_in(app: Any, client: TestClient) -> None:
    users_of(app).add("new.tech", "one time password 1", ["technologist"], must_change_password=True)
    asked = client.post("/ui/login", data={"username": "new.tech", "password": "one time password 1"})
    assert asked.status_code == 403 and "Choose a new password" in asked.text
    weak = client.post(
        "/ui/login", data={"username": "new.tech", "password": "one time password 1", "new_password": "short"}
    )
    assert weak.status_code == 422 and "too short" in weak.text
    done = client.post(
        "/ui/login",
        data={"username": "new.tech", "password": "one time password 1", "new_password": PASSWORD},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert sign_in(client, "new.tech").status_code == 200


def test_health_and_other_loopback_routes_refuse_a_caller_from_elsewhere(app: Any) -> None:
    with TestClient(app, client=("192.0.2.7", 40000)) as remote:
        answer = remote.get("/healthz")
    assert answer.status_code == 403 and "loopback" in answer.json()["detail"]


def test_a_route_that_declares_no_roles_is_found_and_refused(tmp_path: Path) -> None:
    bare = FastAPI()

    @bare.get("/api/forgotten")
    def forgotten() -> dict[str, str]:
        return {}

    @bare.get("/api/guarded", dependencies=[Depends(requires("operations"))])
    def guarded() -> dict[str, str]:
        return {}

    assert undeclared_routes(bare.routes) == ["GET /api/forgotten"]
    assert undeclared_routes(create_app(Settings(data_dir=tmp_path)).routes) == []
    with pytest.raises(ValueError, match="unknown or missing roles"):
        requires("superuser")


def test_the_access_audit_refuses_updates_and_deletes(settings: Settings) -> None:
    audit = AccessAudit(Database.for_file(settings, settings.messages_sqlite_path))
    audit.create_schema()
    audit.record(
        "2026-01-01T00:00:00+00:00", "u", "auditor", "127.0.0.1:1", "GET", "/r", "/r", "exam", None, None, 200
    )
    for statement in ("UPDATE access_audit SET username = 'x'", "DELETE FROM access_audit"):
        with pytest.raises(Exception, match="append-only"):
            audit.db.execute(statement)


# --- radflow users ------------------------------------------------------------------------------


def run_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *argv: str, stdin: str = "") -> int:
    import io

    monkeypatch.setenv("RADFLOW_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("RADFLOW_DATABASE_URL", raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return cli.main(list(argv))


def test_radflow_users_manages_users_and_refuses_bad_input_with_a_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(monkeypatch, tmp_path, "users", "add", "jo", "--roles", "technologist,nurse") == 2
    assert "unknown role(s) nurse" in capsys.readouterr().err
    assert (
        run_cli(
            monkeypatch,
            tmp_path,
            "users",
            "add",
            "jo",
            "--roles",
            "technologist",
            "--password-stdin",
            stdin="short\n",
        )
        == 2
    )
    assert "password too short" in capsys.readouterr().err

    assert run_cli(monkeypatch, tmp_path, "users", "add", "jo", "--roles", "technologist") == 0
    out = capsys.readouterr().out
    assert "one-time password (to be changed at first sign-in)" in out
    assert run_cli(monkeypatch, tmp_path, "users", "add", "jo", "--roles", "technologist") == 2
    assert "exists already" in capsys.readouterr().err

    assert (
        run_cli(monkeypatch, tmp_path, "users", "passwd", "jo", "--password-stdin", stdin=PASSWORD + "\n")
        == 0
    )
    assert run_cli(monkeypatch, tmp_path, "users", "roles", "jo", "--add", "auditor") == 0
    assert run_cli(monkeypatch, tmp_path, "users", "mfa", "jo", "--json") == 0
    capsys.readouterr()
    assert run_cli(monkeypatch, tmp_path, "users", "unlock", "nobody") == 2
    assert "no user 'nobody'" in capsys.readouterr().err
    assert run_cli(monkeypatch, tmp_path, "users", "list", "--json") == 0
    import json

    (jo,) = json.loads(capsys.readouterr().out)
    assert jo["roles"] == ["auditor", "technologist"] and jo["mfa"] and not jo["must_change_password"]
    users = Users(
        Database.for_file(Settings(data_dir=tmp_path), Settings(data_dir=tmp_path).messages_sqlite_path)
    )
    assert users.authenticate(
        "jo", PASSWORD, totp_now(users.require("jo").totp_secret or ""), mfa_roles=["auditor"]
    )


def test_create_app_refuses_to_start_when_a_route_declares_no_roles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi import APIRouter

    import api.app

    real = api.app.web_router

    def with_a_forgotten_route(*args: Any, **kwargs: Any) -> APIRouter:
        router = real(*args, **kwargs)
        router.add_api_route("/ui/forgotten", lambda: {}, methods=["GET"])
        return router

    monkeypatch.setattr(api.app, "web_router", with_a_forgotten_route)
    with pytest.raises(RuntimeError, match="routes without an access rule.*GET /ui/forgotten"):
        create_app(Settings(data_dir=tmp_path))
