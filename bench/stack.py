"""Shared pieces of radflow's benchmarks: percentiles, free ports, the embedded stack under test
(`radflow up` on a fresh data folder), its processes (CPU, memory) and the machine.

Used by bench/hl7_ingest.py and bench/dicom.py (run as scripts, so `bench/` is on sys.path).
"""

from __future__ import annotations

import math
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
# every role radflow has but those RADFLOW_MFA_ROLES asks a TOTP code of by default
BENCH_ROLES = "radiologist,technologist,scheduler,billing,interface_analyst,operations"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------
# statistics


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


def summary_ms(latencies_s: Sequence[float]) -> dict[str, float]:
    ms = [v * 1000.0 for v in latencies_s]
    return {
        "count": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p95_ms": round(percentile(ms, 95), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3) if ms else math.nan,
        "mean_ms": round(sum(ms) / len(ms), 3) if ms else math.nan,
    }


# --------------------------------------------------------------------------------------------
# the stack under test


def _bindable(port: int) -> socket.socket | None:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    return s


def pick_ports(extra: Sequence[str] = ()) -> dict[str, int]:
    """Free ports for HTTP, MLLP, DICOM and Temporal (whose HTTP port is TEMPORAL_PORT+1, so
    that one must be free too), plus one per name in `extra`. All are held while choosing, so
    they differ from each other."""
    held: list[socket.socket] = []
    try:
        ports: dict[str, int] = {}
        for _ in range(200):
            s = _bindable(0)
            if s is None:
                continue
            port = s.getsockname()[1]
            nxt = _bindable(port + 1) if port < 65535 else None
            if nxt is None:
                held.append(s)  # keep it out of the next draws; it is not used
                continue
            held += [s, nxt]
            ports["temporal"] = port
            break
        else:
            raise RuntimeError("no free port pair for Temporal (port, port+1)")
        for name in ("http", "mllp", "dicom", *extra):
            s = _bindable(0)
            assert s is not None
            held.append(s)
            ports[name] = s.getsockname()[1]
        return ports
    finally:
        for s in held:
            s.close()


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    kids += [int(x) for x in f.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return kids


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for kid in _children(todo.pop()):
            out.append(kid)
            todo.append(kid)
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _part_name(argv: list[str]) -> str:
    if not argv:
        return "?"
    if Path(argv[0]).name == "temporal":
        return "temporal"
    if any("multiprocessing.spawn" in a for a in argv):
        return "dicom-receiver"  # RADFLOW_DICOM_PROCESSES > 1: a receiver sharing listen's port
    if "api.cli" in argv:
        return argv[argv.index("api.cli") + 1] if argv.index("api.cli") + 1 < len(argv) else "cli"
    return Path(argv[0]).name


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


@dataclass
class Stack:
    data_dir: Path
    ports: dict[str, int]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    known: dict[int, list[str]] = field(default_factory=dict)  # pid -> argv, for cleanup
    headers: dict[str, str] = field(default_factory=dict)  # the bench user's token (sign_in)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    def start(self, log_level: str | None, extra_env: dict[str, str] | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RADFLOW_")}
        env.update(
            {
                "RADFLOW_DATA_DIR": str(self.data_dir),
                "RADFLOW_HTTP_PORT": str(self.ports["http"]),
                "RADFLOW_MLLP_PORT": str(self.ports["mllp"]),
                "RADFLOW_DICOM_PORT": str(self.ports["dicom"]),
                "RADFLOW_TEMPORAL_PORT": str(self.ports["temporal"]),
                "RADFLOW_TEMPORAL_ADDRESS": "",  # embedded dev server
                "RADFLOW_DATABASE_URL": "",  # embedded SQLite files
                "RADFLOW_ACCESS_TOKEN_MINUTES": "240",  # one sign-in lasts the whole run
                "PYTHONPATH": str(ROOT),
            }
        )
        if log_level:
            env["RADFLOW_LOG_LEVEL"] = log_level
        env.update(extra_env or {})
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.process = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "up"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def sign_in(self) -> dict[str, str]:
        """A bench user with the roles that need no second factor, added the way an admin would
        (`radflow users add`), signed in: the API answers no anonymous call. Sets `headers`."""
        password = secrets.token_urlsafe(18)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RADFLOW_")}
        env.update({"RADFLOW_DATA_DIR": str(self.data_dir), "PYTHONPATH": str(ROOT)})
        added = subprocess.run(
            [
                sys.executable,
                "-m",
                "api.cli",
                "users",
                "add",
                "bench",
                "--roles",
                BENCH_ROLES,
                "--password-stdin",
            ],
            input=password.encode(),
            cwd=ROOT,
            env=env,
            capture_output=True,
        )
        if added.returncode != 0:
            raise RuntimeError(f"radflow users add failed: {added.stderr.decode(errors='replace')[-300:]}")
        answer = httpx.post(
            self.base_url + "/api/auth/token", data={"username": "bench", "password": password}, timeout=30
        )
        answer.raise_for_status()
        self.headers = {"Authorization": f"Bearer {answer.json()['access_token']}"}
        return self.headers

    def wait_healthy(self, timeout: float) -> float:
        assert self.process is not None
        started = time.monotonic()
        last = ""
        with httpx.Client(timeout=5) as http:
            while time.monotonic() - started < timeout:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"`radflow up` exited with {self.process.returncode}; see {self.log_path}"
                    )
                try:
                    r = http.get(self.base_url + "/healthz")
                    if r.status_code == 200:
                        self.remember_parts()
                        return time.monotonic() - started
                    last = r.text[:300]
                except httpx.HTTPError as error:
                    last = type(error).__name__
                time.sleep(0.25)
        raise TimeoutError(f"/healthz not 200 after {timeout:.0f} s (last: {last}); see {self.log_path}")

    def remember_parts(self) -> None:
        if self.process is not None:
            for pid in descendants(self.process.pid):
                self.known.setdefault(pid, _cmdline(pid))

    def parts(self) -> dict[str, int]:
        """part name -> pid of the stack's processes still alive (supervisor included)."""
        out = {}
        if self.process is not None and self.process.poll() is None:
            out["up"] = self.process.pid
            for pid in descendants(self.process.pid):
                name = _part_name(_cmdline(pid))
                out[name if name not in out else f"{name}-{pid}"] = pid
        return out

    def cpu_snapshot(self) -> dict[str, float]:
        snap = {}
        for name, pid in self.parts().items():
            seconds = _cpu_seconds(pid)
            if seconds is not None:
                snap[name] = seconds
        return snap

    def stop(self, timeout: float = 75.0) -> None:
        """SIGTERM the supervisor (it stops its parts, Temporal last); SIGKILL only what we
        started and what is still running after `timeout`."""
        if self.process is None:
            return
        self.remember_parts()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"bench: `radflow up` did not stop in {timeout:.0f} s, killing it", file=sys.stderr)
                self.process.kill()
                self.process.wait()
        for pid, argv in self.known.items():  # parts orphaned by a killed supervisor
            if argv and _cmdline(pid) == argv:
                try:
                    os.kill(pid, signal.SIGTERM)
                    time.sleep(2)
                    if _cmdline(pid) == argv:
                        os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def system_cpu() -> dict[str, float]:
    """Machine-wide busy and steal seconds from /proc/stat (all cores)."""
    try:
        with open("/proc/stat") as f:
            values = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return {}
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return {
        "busy": (user + nice + system + irq + softirq) / CLK_TCK,
        "steal": steal / CLK_TCK,
        "iowait": iowait / CLK_TCK,
    }


def snapshot(stack: Stack) -> dict[str, Any]:
    return {
        "parts": stack.cpu_snapshot(),
        "bench": bench_cpu(),
        "system": system_cpu(),
        "t": time.perf_counter(),
    }


def cpu_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Cores busy per part of the stack, for this bench client, for everything else on the
    machine ("other": load that is not ours and skews the figures), and steal/iowait."""
    wall = after["t"] - before["t"]

    def entry(used: float) -> dict[str, float]:
        return {"cpu_s": round(used, 2), "cores": round(used / wall, 2) if wall > 0 else math.nan}

    out = {}
    ours = 0.0
    for name in sorted(set(before["parts"]) | set(after["parts"])):
        used = after["parts"].get(name, 0.0) - before["parts"].get(name, 0.0)
        ours += used
        out[name] = entry(used)
    out["bench-client"] = entry(after["bench"] - before["bench"])
    ours += after["bench"] - before["bench"]
    if before["system"] and after["system"]:
        out["other"] = entry(max(0.0, after["system"]["busy"] - before["system"]["busy"] - ours))
        out["steal"] = entry(after["system"]["steal"] - before["system"]["steal"])
        out["iowait"] = entry(after["system"]["iowait"] - before["system"]["iowait"])
    return out


def bench_cpu() -> float:
    t = os.times()
    return t.user + t.system


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": model,
        "memory_gb": mem_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "hostname": platform.node(),
        "loadavg_at_start": os.getloadavg(),
    }
