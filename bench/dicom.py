#!/usr/bin/env python3
"""DICOM benchmark: radflow side by side with Orthanc, same workloads, same machine, same run.

    .venv/bin/python bench/dicom.py            # or: make bench-dicom   (full run, ~12 min)
    .venv/bin/python bench/dicom.py --quick    # ~2 min: one run each, NQ=10, 3 retrieves, no stock runs
    .venv/bin/python bench/dicom.py --profile  # + py-spy on radflow's listen process (~2 min more)
    .venv/bin/python bench/dicom.py --only radflow --runs 1 --sets small --conns 1   # pieces of it

Data and tools live in $RADFLOW_BENCH_DIR (default /tmp/radflow-bench-dicom): a venv with numpy
and radflow's pydicom version for gen.py (numpy is not a radflow dependency), py-spy (with
--profile), the generated data, Orthanc's database, logs. Orthanc comes from Debian's `orthanc`
package (installed when missing, as root, services kept from starting like run_anchor.sh does).

Workloads (each against a FRESH, empty server per ingest run; DCMTK clients for both servers):
  ingest  storescu of 2,000 small (128², ~35 KB) and 200 large (512², ~525 KB) CT instances made
          by shared/bench/orthanc/gen.py, over one association and over four concurrent
          associations (the files split into 4 contiguous parts, one storescu process each):
          instances/s, MB/s, peak RSS, CPU per instance. What the server holds afterwards is
          counted (Orthanc: /statistics; radflow: `dicom_instances` in messages.sqlite, then
          `pacs_instances` in projections.sqlite once the pipeline has indexed them); a run
          whose count differs is marked failed, whatever the client's exit code said.
  stock   radflow and Orthanc with a stock DCMTK storescu (no TCP_NODELAY in the client's
          environment), 200 small instances: radflow sets TCP_NODELAY on its accepted sockets.
  flushes the same 200 instances over one association with strace on the receive path:
          fsync/fdatasync calls per instance by what they flushed (the stored file, the folder
          holding its entry, the index database). This is the durability each server buys, in
          device round trips; strace slows both, so these runs give no rate.
  query   after each small single-association run, on that server: C-ECHO (echoscu per call:
          the cost of process + association), C-FIND study level by
          PatientID (one findscu process per query, and one reused association with
          pynetdicom), Modality Worklist C-FIND (findscu -W, and a reused association) over 50
          scheduled procedures (Orthanc: 50 .wl files; radflow: 50 ORM^O01 orders over MLLP),
          5 matches per query; C-MOVE (movescu -> a DCMTK storescp) and C-GET (getscu) of
          40-instance studies, counting the files that arrive.
  profile optional (--profile), radflow only: py-spy on `radflow listen` during two more small
          ingests (on-CPU, and wall clock with waiting), during 30 echoscu calls (the cost of
          an association) and during 5 C-MOVEs and 5 C-GETs; summarised per thread by where the
          time goes (ms per instance / per association / per retrieve).

Data: gen.py's SOP Instance UIDs collide (see DEDUP below), so the small set is de-duplicated
after generation; both servers get the same 2,000 distinct instances.

Conditions: unless --no-netns, the run re-executes itself inside a private network namespace
that has only loopback (`unshare --net`, needs root), and both servers run there: Orthanc
1.10.1 listens on 0.0.0.0 with no bind option. TCP_NODELAY=1 is in the environment of Orthanc
and every DCMTK client for the main figures (Debian's DCMTK 3.6.7 keeps Nagle on otherwise).
radflow runs as `radflow up` (Temporal dev server, worker, listen, api) on a fresh temporary data
folder with free ports, RADFLOW_DICOM_PEERS pointing C-MOVE at the bench's storescp, and
RADFLOW_DICOM_PROCESSES=4 (--dicom-processes): one process per association of the
four-association workloads, as the README advises for as many modalities sending at once. Two
associations sharing a process cost about 40% more CPU per instance (their threads hand one
GIL back and forth at every system call).

Results: a table on stdout and bench/results/dicom-<timestamp>.json (+ .md). Exit 1 when a
correctness check failed on Orthanc (the harness is then suspect); radflow failures are reported
as "failed: <reason>" rows, since its pieces may still be missing.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stack import (
    RESULTS_DIR,
    ROOT,
    Stack,
    _cpu_seconds,
    machine_info,
    percentile,
    pick_ports,
    system_cpu,
)

GEN = Path(os.environ.get("RADFLOW_BENCH_GEN", ROOT.parent / "shared" / "bench" / "orthanc" / "gen.py"))
WORK = Path(os.environ.get("RADFLOW_BENCH_DIR", Path(tempfile.gettempdir()) / "radflow-bench-dicom"))
HOST = "127.0.0.1"
SCU = "BENCHSCU"
SCP_AET = "STORESCP"
ORTHANC_AET = "ORTHANC"
RADFLOW_AET = "RADFLOW"
STOCK_SUBSET_STUDIES = 5  # the stock-client (Nagle) runs send the first 5 small studies: 200 instances
NODELAY = {"TCP_NODELAY": "1"}

SETS = {
    "small": ["--n", "2000", "--studies", "50", "--series", "2", "--size", "128", "--tag", "S"],
    "large": ["--n", "200", "--studies", "5", "--series", "2", "--size", "512", "--tag", "L"],
}


def log(text: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Failed(Exception):
    """A workload that could not run or whose result is wrong; the reason goes in the table."""


# --------------------------------------------------------------------------------------------
# preparation (outside the namespace: it may need the package registries)


def bench_python() -> Path:
    return WORK / "venv" / "bin" / "python"


def ensure_tools(want_pyspy: bool) -> None:
    tools = (("orthanc", "Orthanc"), ("dcmtk", "storescu"), ("strace", "strace"))
    need = [p for p, exe in tools if shutil.which(exe) is None]
    if (
        subprocess.run(["dpkg", "-s", "orthanc"], capture_output=True).returncode != 0
        and "orthanc" not in need
    ):
        need.append("orthanc")
    if need:
        if os.geteuid() != 0:
            raise SystemExit(
                f"bench: missing {' '.join(need)} (Debian packages); run as root or install them"
            )
        log(f"apt-get install {' '.join(need)} (service start blocked via policy-rc.d)")
        policy = Path("/usr/sbin/policy-rc.d")
        made = not policy.exists()
        if made:
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
        try:
            subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
            subprocess.run(
                ["apt-get", "install", "-y", "-q", *need],
                check=True,
                stdout=subprocess.DEVNULL,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
        finally:
            if made:
                policy.unlink(missing_ok=True)
    # gen.py needs numpy, which radflow does not: a separate venv with radflow's pydicom version
    import pydicom

    py = bench_python()
    wanted = ["numpy", f"pydicom=={pydicom.__version__}"] + (["py-spy"] if want_pyspy else [])
    check = f"import numpy, pydicom; assert pydicom.__version__ == {pydicom.__version__!r}"
    ok = py.exists() and subprocess.run([py, "-c", check], capture_output=True).returncode == 0
    if want_pyspy and not (WORK / "venv" / "bin" / "py-spy").exists():
        ok = False
    if not ok:
        log(f"creating/updating {WORK / 'venv'} ({' '.join(wanted)})")
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", WORK / "venv"], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", *wanted], check=True)


def ensure_data() -> None:
    if not GEN.exists():
        raise SystemExit(f"bench: data generator not found: {GEN} (set RADFLOW_BENCH_GEN)")
    digest = hashlib.sha256(GEN.read_bytes()).hexdigest()[:16]
    for name, args in SETS.items():
        out = WORK / "data" / name
        stamp = f"{digest} {' '.join(args)} dedup-v1"
        manifest = out.with_suffix(".manifest.json")
        stamp_file = out.with_suffix(".stamp")
        if manifest.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
            continue
        log(f"generating {out} with {GEN}")
        shutil.rmtree(out, ignore_errors=True)
        manifest.unlink(missing_ok=True)
        subprocess.run([bench_python(), GEN, "--out", out, *args], check=True, stdout=sys.stderr)
        subprocess.run([bench_python(), "-c", DEDUP, out], check=True, stdout=sys.stderr)
        stamp_file.write_text(stamp)
    ensure_worklist_files()


# gen.py derives SOP Instance UIDs with pydicom's generate_uid(entropy_srcs=[..., s, se, i]), which
# joins the sources without a separator: (study 1, series 1, image 10) and (study 11, series 1,
# image 0) both hash "...sop1110". The small set holds 1,920 distinct SOP Instance UIDs in 2,000
# files. Orthanc keys an instance by patient+study+series+SOP UID and stores all 2,000; radflow
# keys it by SOP Instance UID (unique by definition) and keeps the first, answering success for
# the copy. So that both servers do the same work, every repeat gets a fresh UID here (file meta
# too), deterministically; sizes stay the same to within a few bytes.
DEDUP = """
import pathlib, sys
import pydicom
from pydicom.uid import generate_uid
root = pathlib.Path(sys.argv[1]); seen = set(); fixed = 0
for f in sorted(root.rglob("*.dcm")):
    ds = pydicom.dcmread(f)
    if ds.SOPInstanceUID in seen:
        new = generate_uid(prefix="1.2.826.0.1.3680043.8.498.", entropy_srcs=["dedup|", str(f.relative_to(root))])
        ds.SOPInstanceUID = new
        ds.file_meta.MediaStorageSOPInstanceUID = new
        ds.save_as(f, enforce_file_format=True)
        fixed += 1
    seen.add(ds.SOPInstanceUID)
print(f"{root}: {fixed} repeated SOP Instance UIDs replaced, {len(seen)} distinct")
(root.parent / (root.name + ".dedup")).write_text(str(fixed))
"""


def worklist_entry(j: int) -> dict[str, str]:
    """The 50 scheduled procedures both servers hold: CT/MR alternating, 5 dates, so every
    (modality, date) pair matches 5 entries (the same set as shared/bench/orthanc)."""
    modality = "MR" if j % 2 else "CT"
    return {
        "accession": f"WLACC{j:05d}",
        "patient_name": f"WL^PATIENT{j:04d}",
        "patient_id": f"WLPAT{j:04d}",
        "sex": "F" if j % 2 else "M",
        "study_uid": f"1.2.826.0.1.3680043.8.498.777.{j + 1}",
        "modality": modality,
        "station": f"{modality}01",
        "date": f"202402{1 + (j // 2) % 5:02d}",
        "time": f"{8 + j % 10:02d}0000",
        "rp": f"RP{j:04d}",
        "sps": f"SPS{j:04d}",
        "description": f"{modality} EXAM {j}",
    }


def ensure_worklist_files() -> None:
    folder = WORK / "data" / "worklists"
    stamp = f"v1 {shutil.which('dump2dcm')}"
    stamp_file = folder / ".stamp"
    if len(list(folder.glob("*.wl"))) == 50 and stamp_file.exists() and stamp_file.read_text() == stamp:
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for j in range(50):
        e = worklist_entry(j)
        dump = folder / "wl.dump"
        dump.write_text(
            f"""(0008,0005) CS  [ISO_IR 100]
(0008,0050) SH  [{e["accession"]}]
(0010,0010) PN  [{e["patient_name"]}]
(0010,0020) LO  [{e["patient_id"]}]
(0010,0030) DA  [19700101]
(0010,0040) CS  [{e["sex"]}]
(0020,000d) UI  [{e["study_uid"]}]
(0032,1060) LO  [{e["description"]}]
(0040,0100) SQ
(fffe,e000) -
(0008,0060) CS  [{e["modality"]}]
(0040,0001) AE  [{e["station"]}]
(0040,0002) DA  [{e["date"]}]
(0040,0003) TM  [{e["time"]}]
(0040,0006) PN  [TECH^ONE]
(0040,0007) LO  [{e["modality"]} SPS {j}]
(0040,0009) SH  [{e["sps"]}]
(fffe,e00d) -
(fffe,e0dd) -
(0040,1001) SH  [{e["rp"]}]
"""
        )
        subprocess.run(["dump2dcm", "-q", dump, folder / f"wl{j:03d}.wl"], check=True)
        dump.unlink()
    (folder / ".stamp").write_text(stamp)


@dataclass
class DataSet:
    name: str
    folder: Path
    files: list[Path]
    bytes: int
    studies: list[dict[str, Any]]

    @classmethod
    def load(cls, name: str) -> DataSet:
        folder = WORK / "data" / name
        manifest = json.loads(folder.with_suffix(".manifest.json").read_text())
        files = sorted(folder.rglob("*.dcm"))
        if len(files) != manifest["n"]:
            raise SystemExit(f"bench: {folder} holds {len(files)} files, manifest says {manifest['n']}")
        return cls(name, folder, files, sum(f.stat().st_size for f in files), manifest["studies"])

    def subset(self, studies: int) -> DataSet:
        keep = self.studies[:studies]
        folders = {self.folder / f"st{i:03d}" for i in range(studies)}
        files = [f for f in self.files if f.parent in folders]
        return DataSet(
            f"{self.name}[:{studies} studies]", self.folder, files, sum(f.stat().st_size for f in files), keep
        )

    @property
    def patients(self) -> list[str]:
        return sorted({s["PatientID"] for s in self.studies})


# --------------------------------------------------------------------------------------------
# processes and measurement helpers


def proc_status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class RssSampler:
    """Samples VmRSS of the given process groups every `interval` s; keeps the peak of each
    group's sum."""

    def __init__(self, groups: dict[str, Callable[[], Sequence[int]]], interval: float = 0.05) -> None:
        self.groups = groups
        self.interval = interval
        self.peak_kb: dict[str, int] = dict.fromkeys(groups, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pids in self.groups.items():
                total = sum(proc_status_kb(p, "VmRSS") for p in pids())
                self.peak_kb[name] = max(self.peak_kb[name], total)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    return {name: s for name, pid in pids.items() if (s := _cpu_seconds(pid)) is not None}


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.1)
    raise Failed(f"nothing listens on port {port} after {timeout:.0f} s")


def echo(aec: str, port: int, env: dict[str, str] | None = None) -> bool:
    return (
        subprocess.run(
            ["echoscu", "-aet", SCU, "-aec", aec, HOST, str(port)],
            capture_output=True,
            env={**os.environ, **(env or NODELAY)},
            timeout=30,
        ).returncode
        == 0
    )


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def error_lines(text: str, limit: int = 3) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.startswith(("E:", "F:"))]
    return " | ".join(lines[:limit]) if lines else text.strip().splitlines()[-1][:200] if text.strip() else ""


# --------------------------------------------------------------------------------------------
# the servers


class Server:
    name = "?"
    aet = "?"
    dicom_port = 0

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def stored(self) -> int:
        """Instances the server says it holds (durable)."""
        raise NotImplementedError

    def receiving(self) -> dict[str, int]:
        """The processes on the receive path (name -> pid)."""
        raise NotImplementedError

    def all_processes(self) -> dict[str, int]:
        return self.receiving()

    def wait_indexed(self, n: int, timeout: float) -> float | None:
        """Seconds until n instances are queryable (None: never within timeout)."""
        return 0.0

    def prepare_worklist(self) -> None:
        """Make the 50 scheduled procedures available to MWL queries."""

    def problems(self) -> str:
        """Server-side failures worth reporting (store failures, part restarts)."""
        return ""


class Orthanc(Server):
    name = "orthanc"
    aet = ORTHANC_AET

    def __init__(self, ports: dict[str, int], scp_port: int, logs: Path) -> None:
        self.dicom_port = ports["orthanc_dicom"]
        self.http_port = ports["orthanc_http"]
        self.scp_port = scp_port
        self.logs = logs
        self.db = WORK / "orthanc-db"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def _plugin(self, package: str, library: str) -> str:
        out = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.endswith("/" + library):
                return line
        return ""

    def _config(self) -> Path:
        plugins = [p for p in (self._plugin("orthanc", "libModalityWorklists.so"),) if p]
        config = {
            "Name": "BenchOrthanc",
            "StorageDirectory": str(self.db / "storage"),
            "IndexDirectory": str(self.db / "index"),
            "TemporaryDirectory": str(self.db / "tmp"),
            "Plugins": plugins,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": ORTHANC_AET,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomModalities": {
                "bench": {"AET": SCU, "Host": HOST, "Port": 11114},
                "storescp": [SCP_AET, HOST, self.scp_port],
            },
            "Worklists": {"Enable": True, "Database": str(WORK / "data" / "worklists")},
            # the Debian/Orthanc 1.10.1 defaults, restated (as shared/bench/orthanc does)
            "StorageCompression": False,
            "MaximumStorageCacheSize": 128,
            "SyncStorageArea": True,
            "StorageAccessOnFind": "Always",
            "MaximumPduLength": 16384,
            "DicomThreadsCount": 4,
            "ConcurrentJobs": 2,
            "SynchronousCMove": True,
            "OverwriteInstances": False,
            "StoreMD5ForAttachments": True,
            "DicomAssociationCloseDelay": 5,
        }
        path = WORK / "orthanc.json"
        path.write_text(json.dumps(config, indent=1))
        return path

    def start(self) -> None:
        if self.proc is not None:
            raise RuntimeError("Orthanc already running")
        shutil.rmtree(self.db, ignore_errors=True)
        for sub in ("storage", "index", "tmp"):
            (self.db / sub).mkdir(parents=True)
        self.starts += 1
        out = open(self.logs / f"orthanc-{self.starts}.log", "wb")  # noqa: SIM115 - child's lifetime
        self.proc = subprocess.Popen(
            ["Orthanc", str(self._config())],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **NODELAY},
            start_new_session=True,
        )
        out.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Failed(f"Orthanc exited with {self.proc.returncode}; see {self.logs}")
            with contextlib.suppress(OSError):
                self._get("/system")
                if echo(ORTHANC_AET, self.dicom_port):
                    return
            time.sleep(0.1)
        raise Failed("Orthanc not ready after 60 s")

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://{HOST}:{self.http_port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        stop_process(self.proc, 30)
        self.proc = None

    def stored(self) -> int:
        return int(self._get("/statistics")["CountInstances"])

    def receiving(self) -> dict[str, int]:
        return {"Orthanc": self.proc.pid} if self.proc is not None and self.proc.poll() is None else {}


class Radflow(Server):
    name = "radflow"
    aet = RADFLOW_AET

    def __init__(self, scp_port: int, logs: Path, keep: bool, dicom_processes: int = 1) -> None:
        self.scp_port = scp_port
        self.dicom_processes = dicom_processes
        self.logs = logs
        self.keep = keep
        self.stack: Stack | None = None
        self.starts = 0
        self.dicom_port = 0

    def start(self) -> None:
        if self.stack is not None:
            raise RuntimeError("radflow already running")
        self.starts += 1
        data_dir = Path(tempfile.mkdtemp(prefix="radflow-bench-dicom-", dir=WORK))
        stack = Stack(
            data_dir=data_dir, ports=pick_ports(), log_path=self.logs / f"radflow-{self.starts}.log"
        )
        self.stack = stack
        self.dicom_port = stack.ports["dicom"]
        stack.start(
            None,
            {
                "RADFLOW_DICOM_PEERS": f"{SCP_AET}={HOST}:{self.scp_port}",
                "RADFLOW_AE_TITLE": RADFLOW_AET,
                "RADFLOW_DICOM_PROCESSES": str(self.dicom_processes),
            },
        )
        try:
            stack.wait_healthy(180)
        except (RuntimeError, TimeoutError) as error:
            raise Failed(f"radflow did not start: {error}") from error
        # no bare TCP probe here: pynetdicom keeps a connection that never sends an A-ASSOCIATE-RQ
        # as an association thread for the ACSE timeout (30 s); C-ECHO is the probe
        deadline = time.monotonic() + 60
        while not echo(RADFLOW_AET, self.dicom_port):
            if time.monotonic() > deadline:
                raise Failed("radflow's DICOM AE does not answer C-ECHO")
            time.sleep(0.2)
        stack.remember_parts()

    def stop(self) -> None:
        if self.stack is None:
            return
        self.stack.stop()
        if not self.keep:
            shutil.rmtree(self.stack.data_dir, ignore_errors=True)
        self.stack = None

    def _count(self, db: str, sql: str) -> int:
        assert self.stack is not None
        path = self.stack.data_dir / db
        if not path.exists():
            return 0
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as con:
                return int(con.execute(sql).fetchone()[0])
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return 0
            raise

    def stored(self) -> int:
        return self._count("messages.sqlite", "SELECT COUNT(*) FROM dicom_instances")

    def indexed(self) -> int:
        return self._count("projections.sqlite", "SELECT COUNT(*) FROM pacs_instances")

    def wait_indexed(self, n: int, timeout: float) -> float | None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.indexed() >= n:
                return time.monotonic() - t0
            time.sleep(0.1)
        return None

    def receiving(self) -> dict[str, int]:
        """`radflow listen` and the DICOM receivers sharing its port."""
        parts = self.all_processes()
        return {k: v for k, v in parts.items() if k == "listen" or k.startswith("dicom-receiver")}

    def all_processes(self) -> dict[str, int]:
        if self.stack is None:
            return {}
        return {k: v for k, v in self.stack.parts().items() if k != "up"}

    def problems(self) -> str:
        if self.stack is None:
            return ""
        out = []
        failures = self._count("messages.sqlite", "SELECT COUNT(*) FROM dicom_store_failures")
        if failures:
            out.append(f"{failures} rows in dicom_store_failures")
        with contextlib.suppress(OSError):
            restarts = self.stack.log_path.read_text(errors="replace").count("part exited, restarting")
            if restarts:
                out.append(f"{restarts} part restarts")
        return "; ".join(out)

    def prepare_worklist(self) -> None:
        assert self.stack is not None
        sock = socket.create_connection((HOST, self.stack.ports["mllp"]), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        codes: Counter[str] = Counter()
        try:
            for j in range(50):
                sock.sendall(b"\x0b" + order_message(j) + b"\x1c\x0d")
                buf = b""
                while b"\x1c\x0d" not in buf:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise Failed("MLLP connection closed before the ACK")
                    buf += chunk
                m = re.search(rb"MSA\|(\w\w)", buf)
                codes[m.group(1).decode() if m else "?"] += 1
        finally:
            sock.close()
        if codes.get("AA") != 50:
            raise Failed(f"orders for the worklist were not all accepted: {dict(codes)}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            n = self._count(
                "projections.sqlite", "SELECT COUNT(*) FROM worklist WHERE accession LIKE 'WLACC%'"
            )
            if n >= 50:
                return
            time.sleep(0.2)
        raise Failed(f"only {n}/50 orders reached the worklist after 120 s")


def order_message(j: int) -> bytes:
    e = worklist_entry(j)
    when = e["date"] + e["time"]
    code = f"{e['modality']}EXAM{j}^{e['description']}^L"
    segments = [
        f"MSH|^~\\&|BENCH|GENHOSP|RADFLOW|RADIOLOGY|{datetime.now().strftime('%Y%m%d%H%M%S')}||ORM^O01^ORM_O01|"
        f"BENCHWL{os.getpid()}{time.monotonic_ns()}{j}|P|2.3.1",
        f"PID|1||{e['patient_id']}^^^GENHOSP^MR||{e['patient_name']}||19700101|{e['sex']}",
        "PV1|1|O",
        f"ORC|NW|PL{e['accession']}^BENCH|FL{e['accession']}^RADFLOW||SC||^^^{when}^^R",
        f"OBR|1|PL{e['accession']}^BENCH|FL{e['accession']}^RADFLOW|{code}|||{when}|||||||||"
        f"1234^HOUSE^GREGORY||{e['accession']}|{e['rp']}|||||{e['modality']}|||^^^{when}^^R|||||||||{when}",
    ]
    return ("\r".join(segments) + "\r").encode()


# --------------------------------------------------------------------------------------------
# workloads


@dataclass
class Results:
    raw: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    failures: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    notes: dict[str, Any] = field(default_factory=dict)

    def add(self, key: str, value: float) -> None:
        self.raw[key].append(value)

    def fail(self, key: str, reason: str) -> None:
        log(f"  FAILED {key}: {reason}")
        self.failures[key].append(reason)


def storescu_argv(server: Server, files: Sequence[Path]) -> list[str]:
    return ["storescu", "-aet", SCU, "-aec", server.aet, HOST, str(server.dicom_port), *map(str, files)]


def ingest(
    server: Server, data: DataSet, conns: int, client_env: dict[str, str], key: str, res: Results, logs: Path
) -> None:
    """One measured ingest into an already started, empty server."""
    n = len(data.files)
    size = math.ceil(n / conns)
    parts = [data.files[i : i + size] for i in range(0, n, size)]
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"} | client_env
    recv = server.receiving()
    if not recv:
        raise Failed("no receiving process found")
    everything = server.all_processes()
    cpu0, sys0 = cpu_of(everything), system_cpu()
    load = os.getloadavg()[0]
    outs = [logs / f"{server.name}-{key}-{i}.log" for i in range(len(parts))]
    with RssSampler(
        {"receiving": lambda: list(recv.values()), "all": lambda: list(everything.values())}
    ) as rss:
        t0 = time.perf_counter()
        procs = []
        for part, out in zip(parts, outs, strict=True):
            with open(out, "wb") as f:
                procs.append(
                    subprocess.Popen(storescu_argv(server, part), stdout=f, stderr=subprocess.STDOUT, env=env)
                )
        for p in procs:
            p.wait()
        wall = time.perf_counter() - t0
        client_cpu = os.times()
    cpu1, sys1 = cpu_of(everything), system_cpu()
    held = server.stored()
    codes = [p.returncode for p in procs]
    hwm = sum(proc_status_kb(pid, "VmHWM") for pid in recv.values())
    log(
        f"  {server.name} {key}: {n} inst in {wall:.2f} s = {n / wall:.0f} inst/s; holds {held}; "
        f"peak RSS recv {hwm / 1024:.0f} MB (sampled all {rss.peak_kb['all'] / 1024:.0f} MB); exit {codes}"
    )
    del client_cpu
    if held != n:
        detail = "; ".join(filter(None, (error_lines(o.read_text(errors="replace")) for o in outs)))
        raise Failed(
            f"server holds {held}/{n} instances (storescu exit {codes}) {detail[:300]} {server.problems()}"
        )
    res.add(f"{server.name}.{key}.inst_s", n / wall)
    res.add(f"{server.name}.{key}.MB_s", data.bytes / wall / 1e6)
    res.add(f"{server.name}.{key}.wall_s", wall)
    res.add(f"{server.name}.{key}.rss_recv_MB", hwm / 1024)
    res.add(f"{server.name}.{key}.rss_all_MB", rss.peak_kb["all"] / 1024)
    res.add(f"{server.name}.{key}.loadavg1", load)
    used = {k: cpu1.get(k, 0.0) - cpu0.get(k, 0.0) for k in cpu0}
    for proc_name, seconds in used.items():
        res.add(f"{server.name}.{key}.cpu_ms_inst.{proc_name}", seconds * 1000 / n)
    if sys0 and sys1:
        res.add(f"{server.name}.{key}.machine_busy_cores", (sys1["busy"] - sys0["busy"]) / wall)
    if isinstance(server, Radflow):
        took = server.wait_indexed(n, 300)
        if took is None:
            res.fail(
                f"{server.name}.{key}.indexed", f"only {server.indexed()}/{n} in pacs_instances after 300 s"
            )
        else:
            res.add(f"{server.name}.{key}.indexed_after_s", took)
            cpu2 = cpu_of(everything)
            for proc_name in cpu0:
                res.add(
                    f"{server.name}.{key}.cpu_ms_inst_until_indexed.{proc_name}",
                    (cpu2.get(proc_name, 0.0) - cpu0.get(proc_name, 0.0)) * 1000 / n,
                )


FIND_KEYS = [
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "PatientName",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedInstances",
]
MWL_SPS_KEYS = [
    "ScheduledProcedureStepStartTime",
    "ScheduledStationAETitle",
    "ScheduledProcedureStepDescription",
    "ScheduledProcedureStepID",
]
MWL_KEYS = [
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyInstanceUID",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
]


def timed_cmd(argv: list[str], pattern: str) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, env={**os.environ, **NODELAY}, timeout=120)
    ms = (time.perf_counter() - t0) * 1000
    out = (p.stdout + p.stderr).decode(errors="replace")
    return ms, out.count(pattern), out


def echo_latency(server: Server, nq: int, res: Results) -> None:
    """echoscu per call: process start + association + C-ECHO + release (the per-association cost
    that every findscu/movescu figure includes)."""
    argv = ["echoscu", "-aet", SCU, "-aec", server.aet, HOST, str(server.dicom_port)]
    for _ in range(nq):
        t0 = time.perf_counter()
        p = subprocess.run(argv, capture_output=True, env={**os.environ, **NODELAY}, timeout=60)
        ms = (time.perf_counter() - t0) * 1000
        if p.returncode != 0:
            raise Failed(
                f"echoscu exit {p.returncode}: {error_lines((p.stdout + p.stderr).decode(errors='replace'))}"
            )
        res.add(f"{server.name}.echo.ms", ms)


def findscu_queries(server: Server, data: DataSet, nq: int, res: Results) -> None:
    per_patient = len(data.studies) // len(data.patients)
    pids = data.patients
    key = f"{server.name}.cfind.findscu"
    for i in range(nq):
        argv = ["findscu", "-aet", SCU, "-aec", server.aet, "-S", "-k", "QueryRetrieveLevel=STUDY"]
        argv += ["-k", f"PatientID={pids[i % len(pids)]}"]
        for k in FIND_KEYS:
            argv += ["-k", k]
        ms, matches, out = timed_cmd([*argv, HOST, str(server.dicom_port)], "Find Response:")
        if matches != per_patient:
            raise Failed(f"C-FIND returned {matches} studies, expected {per_patient}: {error_lines(out)}")
        res.add(key + ".ms", ms)


def mwl_findscu(server: Server, nq: int, res: Results) -> None:
    key = f"{server.name}.mwl.findscu"
    for i in range(nq):
        modality = "MR" if i % 2 else "CT"
        date = f"202402{1 + (i // 2) % 5:02d}"
        argv = ["findscu", "-W", "-aet", SCU, "-aec", server.aet]
        argv += ["-k", f"ScheduledProcedureStepSequence[0].Modality={modality}"]
        argv += ["-k", f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate={date}"]
        for k in MWL_SPS_KEYS:
            argv += ["-k", f"ScheduledProcedureStepSequence[0].{k}"]
        for k in MWL_KEYS:
            argv += ["-k", k]
        ms, matches, out = timed_cmd([*argv, HOST, str(server.dicom_port)], "Find Response:")
        if matches != 5:
            raise Failed(f"MWL C-FIND returned {matches} items, expected 5: {error_lines(out)}")
        res.add(key + ".ms", ms)


_PYN_PATCHED = False


def patch_pynetdicom() -> None:
    """TCP_NODELAY on the SCU socket, and the guard for pynetdicom issue #875 (the reactor can
    take the NEXT DIMSE response off the queue once replies are sub-millisecond), as in
    shared/bench/orthanc/run_anchor.sh."""
    global _PYN_PATCHED
    if _PYN_PATCHED:
        return
    from pynetdicom import dimse, transport

    orig_cs = transport.AssociationSocket._create_socket

    def create_socket(self: Any, address: Any) -> Any:
        s = orig_cs(self, address)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    orig_get = dimse.DIMSEServiceProvider.get_msg

    def get_msg(self: Any, block: bool = False) -> Any:
        if not block and not self.assoc._reactor_checkpoint.is_set():
            return None, None
        return orig_get(self, block)

    transport.AssociationSocket._create_socket = create_socket  # type: ignore[method-assign]
    dimse.DIMSEServiceProvider.get_msg = get_msg  # type: ignore[method-assign]
    _PYN_PATCHED = True


def reused_association_queries(server: Server, data: DataSet, nq: int, res: Results) -> None:
    """C-FIND study and MWL, each query on one association kept open (pynetdicom)."""
    patch_pynetdicom()
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        ModalityWorklistInformationFind,
        StudyRootQueryRetrieveInformationModelFind,
    )

    ae = AE(ae_title=SCU)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate(HOST, server.dicom_port, ae_title=server.aet)
    if not assoc.is_established:
        raise Failed("association not established")
    accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
    per_patient = len(data.studies) // len(data.patients)
    pids = data.patients

    def run(query: Any, model: Any) -> tuple[float, int, set[int]]:
        t0 = time.perf_counter()
        n, statuses = 0, set()
        for status, _ in assoc.send_c_find(query, model):
            if status and "Status" in status:
                statuses.add(int(status.Status))
                if status.Status in (0xFF00, 0xFF01):
                    n += 1
        return (time.perf_counter() - t0) * 1000, n, statuses

    try:
        if str(StudyRootQueryRetrieveInformationModelFind) not in accepted:
            res.fail(f"{server.name}.cfind.reused", "Study Root C-FIND presentation context not accepted")
        else:
            for i in range(nq):
                q = Dataset()
                q.QueryRetrieveLevel = "STUDY"
                q.PatientID = pids[i % len(pids)]
                for k in FIND_KEYS:
                    setattr(q, k, "")
                ms, n, statuses = run(q, StudyRootQueryRetrieveInformationModelFind)
                if n != per_patient:
                    res.fail(
                        f"{server.name}.cfind.reused",
                        f"{n} matches, expected {per_patient}; statuses {statuses}",
                    )
                    break
                res.add(f"{server.name}.cfind.reused.ms", ms)
        if str(ModalityWorklistInformationFind) not in accepted:
            res.fail(f"{server.name}.mwl.reused", "MWL C-FIND presentation context not accepted")
        else:
            for i in range(nq):
                q, sps = Dataset(), Dataset()
                sps.Modality = "MR" if i % 2 else "CT"
                sps.ScheduledProcedureStepStartDate = f"202402{1 + (i // 2) % 5:02d}"
                for k in MWL_SPS_KEYS:
                    setattr(sps, k, "")
                q.ScheduledProcedureStepSequence = [sps]
                for k in MWL_KEYS:
                    setattr(q, k, "")
                ms, n, statuses = run(q, ModalityWorklistInformationFind)
                if n != 5:
                    res.fail(f"{server.name}.mwl.reused", f"{n} matches, expected 5; statuses {statuses}")
                    break
                res.add(f"{server.name}.mwl.reused.ms", ms)
    finally:
        if assoc.is_established:
            assoc.release()


def retrieve(server: Server, kind: str, studies: Sequence[dict[str, Any]], recv: Path, res: Results) -> None:
    """C-MOVE (to the bench's storescp, which writes into recv) or C-GET (getscu) per study."""
    key = f"{server.name}.{kind}"
    for study in studies:
        target = recv if kind == "cmove" else recv.parent / "get"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        expected = int(study["instances"])
        if kind == "cmove":
            argv = ["movescu", "-aet", SCU, "-aec", server.aet, "-aem", SCP_AET, "-S"]
        else:
            argv = ["getscu", "-aet", SCU, "-aec", server.aet, "-S", "-od", str(target)]
        argv += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study['StudyInstanceUID']}"]
        ms, _, out = timed_cmd([*argv, HOST, str(server.dicom_port)], "")
        files = [f for f in target.iterdir() if f.is_file()]
        if len(files) != expected:
            raise Failed(f"{len(files)}/{expected} instances arrived ({error_lines(out)})")
        size = sum(f.stat().st_size for f in files)
        res.add(key + ".ms", ms)
        res.add(key + ".inst_s", expected / (ms / 1000))
        res.add(key + ".MB_s", size / (ms / 1000) / 1e6)


def guarded(res: Results, key: str, fn: Callable[[], None]) -> bool:
    try:
        fn()
        return True
    except Failed as failure:
        res.fail(key, str(failure))
    except Exception as error:  # a missing piece must not end the run
        res.fail(key, f"{type(error).__name__}: {error}")
    return False


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        server.start()
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------
# what each server flushes to the disk per stored instance

FLUSH_CALL = re.compile(r"\b(fsync|fdatasync)\(\d+<([^>]*)>\)")
FLUSH_KINDS = ("file", "directory", "database", "other")


def flush_kind(path: str) -> str:
    """What a flushed descriptor was, from the name strace -y gave it."""
    if os.path.isdir(path):
        return "directory"
    if re.search(r"(\.sqlite|/index)(-wal|-journal)?$", path):
        return "database"  # radflow's SQLite files; Orthanc's index
    if ".dcm" in path or "/storage/" in path:
        return "file"  # radflow's <sop>.dcm (as its .partial name); Orthanc's storage area
    return "other"


def count_flushes(server: Server, data: DataSet, logs: Path, res: Results) -> None:
    """fsync(2) and fdatasync(2) calls on the receive path during an ingest over one
    association, by what they flushed: the durability each server buys per instance, and
    the device round trips it pays for it. strace slows the server: no rate is taken here."""
    trace = logs / f"strace-flushes-{server.name}.txt"
    argv = ["strace", "-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-o", str(trace)]
    for pid in server.receiving().values():
        argv += ["-p", str(pid)]
    tracer = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached to every thread by then
    try:
        ingest(server, data, 1, NODELAY, "flushes", res, logs)
        time.sleep(0.5)  # the last answer has gone out; nothing flushed after it counts anyway
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
    counts = Counter(flush_kind(m.group(2)) for m in FLUSH_CALL.finditer(trace.read_text(errors="replace")))
    if not counts:  # no server stores durably without one: strace could not attach, say so
        raise Failed(f"strace saw no fsync/fdatasync (see {trace})")
    for kind in FLUSH_KINDS:
        res.add(f"{server.name}.flushes.{kind}", counts[kind] / len(data.files))


# profiling radflow's receive path with py-spy


@contextlib.contextmanager
def spying(pid: int, raw: Path, rate: int, idle: bool) -> Iterator[None]:
    pyspy = WORK / "venv" / "bin" / "py-spy"
    if not pyspy.exists():
        raise Failed("py-spy not installed (run once with --profile outside the namespace)")
    argv = [str(pyspy), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--threads"]
    argv += ["--output", str(raw), "--nonblocking"] + (["--idle"] if idle else [])
    with open(raw.with_suffix(".log"), "wb") as spy_log:
        spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=spy_log)
    time.sleep(1.5)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()


def profile_ingest(server: Radflow, data: DataSet, logs: Path, res: Results) -> None:
    """Two more ingests of `data` over one association, py-spy on `radflow listen`: on-CPU
    samples, then wall clock (waiting included); then 30 echoscu calls (wall clock) for the
    cost of an association; then C-MOVEs and C-GETs (wall clock) and queries on a reused
    association (on-CPU)."""
    out: dict[str, Any] = {}
    res.notes["profile"] = out
    rate = 250
    for mode in ("cpu", "wall"):
        with running(server):
            raw = logs / f"pyspy-{mode}.txt"
            with spying(server.receiving()["listen"], raw, rate, idle=mode == "wall"):
                ingest(server, data, 1, NODELAY, f"profiled_{mode}", res, logs)
            wall = res.raw.get(f"radflow.profiled_{mode}.wall_s", [math.nan])[-1]
            out[mode] = summarize_pyspy(raw.read_text(errors="replace"), len(data.files), rate, wall)
    with running(server):
        raw = logs / "pyspy-assoc.txt"
        calls = 30
        argv = ["echoscu", "-aet", SCU, "-aec", server.aet, HOST, str(server.dicom_port)]
        with spying(server.receiving()["listen"], raw, 500, idle=True):
            t0 = time.perf_counter()
            for _ in range(calls):
                subprocess.run(argv, capture_output=True, env={**os.environ, **NODELAY}, timeout=60)
            wall = time.perf_counter() - t0
        out["assoc"] = summarize_assoc(raw.read_text(errors="replace"), calls, 500, wall)
    with running(server):
        small = DataSet.load("small")
        ingest(server, small, 1, NODELAY, "profiled_setup", res, logs)
        if server.wait_indexed(len(small.files), 120) is None:
            raise Failed("not indexed for the retrieve profile")
        recv = WORK / "recv" / "move"
        for kind in ("cmove", "cget"):
            raw = logs / f"pyspy-{kind}.txt"
            studies = small.studies[:5]
            scratch = Results()
            with spying(server.receiving()["listen"], raw, 250, idle=True):
                retrieve(server, kind, studies, recv, scratch)
            calls = len(studies)
            summary = summarize_top(raw.read_text(errors="replace"), calls, 250)
            summary["ms_per_call"] = round(statistics.median(scratch.raw[f"radflow.{kind}.ms"]), 1)
            out[kind] = summary
        server.prepare_worklist()
        queries = 50
        raw = logs / "pyspy-queries.txt"
        scratch = Results()
        with spying(server.receiving()["listen"], raw, 500, idle=False):
            reused_association_queries(server, small, queries, scratch)
        summary = summarize_top(raw.read_text(errors="replace"), 2 * queries, 500, top=30)
        summary["ms_per_call"] = {
            kind: round(statistics.median(scratch.raw[f"radflow.{kind}.reused.ms"]), 2)
            for kind in ("cfind", "mwl")
        }
        out["queries"] = summary


IDLE_THREADS = ("MainThread", "asyncio_", "storage-flusher", "message-log-writer", "AcceptorServer")


def summarize_top(raw: str, calls: int, rate: int, top: int = 14) -> dict[str, Any]:
    """Where the association threads spent their (wall) time during `calls` operations:
    inclusive samples per function (radflow, pynetdicom, pydicom frames) and per leaf line,
    in thread-ms per call."""
    incl: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if any(k in frames[0] for k in IDLE_THREADS) or len(frames) < 2:
            continue
        if "receive_pdu (" in stack and "wait (threading.py" in frames[-1]:
            # an acceptor thread waiting for an A-ASSOCIATE-RQ: radflow's own /healthz opens bare
            # TCP connections to the DICOM port, each leaving such a thread for 30 s
            continue
        c = int(count_text)
        total += c
        seen = set()
        for f in frames[1:]:
            if not any(m in f for m in ("interfaces/", "adapters/", "pynetdicom/", "pydicom/")):
                continue
            label = re.sub(r":\d+\)$", ")", f)
            if label not in seen:
                seen.add(label)
                incl[label] += c
        leaves[frames[-1]] += c

    def ms(count: int) -> float:
        return round(count / rate * 1000 / calls, 1)

    return {
        "calls": calls,
        "thread_ms_per_call": ms(total),
        "inclusive": [(label, ms(c)) for label, c in incl.most_common(top)],
        "leaves": [(label, ms(c)) for label, c in leaves.most_common(8)],
    }


def summarize_assoc(raw: str, calls: int, rate: int, wall_s: float) -> dict[str, Any]:
    """Samples of the association-scoped threads (pynetdicom's request thread, the association's
    thread and its DUL thread) during `calls` echoscu runs, per probe, in ms per association."""
    import pynetdicom

    pyn = Path(pynetdicom.__file__).parent
    assoc_sleep = _line_of(pyn / "association.py", "time.sleep(0.001)")
    dul_sleep = _line_of(pyn / "dul.py", "time.sleep(self._run_loop_delay)")

    def has(*marks: str) -> Callable[[list[str]], bool]:
        return lambda frames: all(any(m in f for f in frames) for m in marks)

    probe_list: list[tuple[str, Callable[[list[str]], bool]]] = [
        ("pynetdicom: deepcopy(server.contexts) per association", has("_create_association (", "deepcopy (")),
        ("ACSE negotiation (A-ASSOCIATE-RQ -> AC)", has("negotiate_association (")),
        ("association log: association_opened (SQLite commit)", has("association_opened (")),
        ("association log: association_closed (SQLite commit)", has("association_closed (")),
        ("C-ECHO handler", has("_on_echo (")),
        ("association thread: reactor sleep(1 ms) loop", lambda f: bool(f) and assoc_sleep in f[-1]),
        ("DUL thread: poll sleep loop", lambda f: bool(f) and dul_sleep in f[-1]),
    ]
    counts: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if not any(k in frames[0] for k in ("AcceptorThread", "run_reactor", "process_request_thread")):
            continue
        c = int(count_text)
        total += c
        for label, probe in probe_list:
            if probe(frames[1:]):
                counts[label] += c
    return {
        "calls": calls,
        "ms_per_echoscu": round(wall_s * 1000 / calls, 1),
        "thread_ms_per_association": round(total / rate * 1000 / calls, 1),
        "probes": [
            {"probe": label, "ms_per_association": round(counts[label] / rate * 1000 / calls, 1)}
            for label, _ in probe_list
        ],
    }


def _line_of(path: Path, text: str) -> str:
    """`file.py:N` of the first line of `path` containing `text` (py-spy names frames so)."""
    with contextlib.suppress(OSError):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if text in line:
                return f"{path.name}:{number})"
    return f"{path.name}:?)"


def probes() -> dict[str, list[tuple[str, Callable[[list[str]], bool]]]]:
    """Named, inclusive probes over a stack (outermost first), per thread role."""
    import pynetdicom

    pyn = Path(pynetdicom.__file__).parent
    storage = ROOT / "interfaces" / "dicom" / "storage.py"
    fsync_file = _line_of(storage, "os.fsync(fd)")
    fsync_dir = _line_of(storage, "os.fsync(dir_fd)")
    assoc_sleep = _line_of(pyn / "association.py", "time.sleep(0.001)")
    dul_sleep = _line_of(pyn / "dul.py", "time.sleep(self._run_loop_delay)")

    def has(mark: str) -> Callable[[list[str]], bool]:
        return lambda frames: any(mark in f for f in frames)

    def leaf(mark: str) -> Callable[[list[str]], bool]:
        return lambda frames: mark in frames[-1]

    return {
        "handler": [  # the association's own thread (pynetdicom: AcceptorThread@...), runs the handlers
            ("C-STORE handler total (StorageScp.handle_store)", has("handle_store (")),
            ("  read_header (pydicom, header only)", has("read_header (")),
            ("  existing() duplicate lookup (SQLite SELECT)", has("StorageLog.existing (")),
            ("  file_meta()", has("file_meta (")),
            ("  durable_write total", has("durable_write (")),
            ("    fsync(file)", leaf(fsync_file)),
            ("    fsync(directory)", leaf(fsync_dir)),
            ("  record_instance (SQLite INSERT+UPDATE+COMMIT, synchronous=FULL)", has("record_instance (")),
            ("    COMMIT", has("Database.transaction (")),
            ("pynetdicom: dataset bytes to the handler (encoded_dataset)", has("encoded_dataset (")),
            ("pynetdicom: C-STORE-RSP encode + hand to DUL (send_msg)", has("send_msg (")),
            ("pynetdicom: association reactor sleep(1 ms) per loop", leaf(assoc_sleep)),
            (
                "pynetdicom: waiting (Event/queue)",
                lambda f: "wait (threading.py" in f[-1] or "get (queue.py" in f[-1],
            ),
            ("association end: batching (flush_batches)", has("flush_batches (")),
        ],
        "dul": [  # pynetdicom's DUL reactor thread of the association: socket <-> PDUs
            ("DUL: poll sleep (pynetdicom's loop; radflow's has none)", leaf(dul_sleep)),
            ("DUL: waiting in select() (radflow's loop)", has("_wait_for_io (")),
            ("DUL: receive + decode PDUs (_is_transport_event)", has("_is_transport_event (")),
            ("DUL: state machine actions (do_action)", has("do_action (")),
            ("DUL: encode + send PDUs (_process_recv_primitive)", has("_process_recv_primitive (")),
            ("DUL: socket select/ready", has("AssociationSocket.ready (")),
        ],
    }


def summarize_pyspy(raw: str, n: int, rate: float, wall_s: float) -> dict[str, Any]:
    """py-spy raw stacks -> per probe: share of the thread's samples and ms per instance."""
    by_thread: dict[str, list[tuple[list[str], int]]] = defaultdict(list)
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        by_thread[frames[0]].append((frames[1:], int(count_text)))
    totals = {t: sum(c for _, c in stacks) for t, stacks in by_thread.items()}

    def busiest(mark: str) -> str | None:
        scored = {t: sum(c for f, c in st if any(mark in x for x in f)) for t, st in by_thread.items()}
        best = max(scored, key=lambda t: scored[t], default=None)
        return best if best is not None and scored[best] else None

    roles = {"handler": busiest("handle_store ("), "dul": busiest("_is_transport_event (")}
    out: dict[str, Any] = {
        "samples": sum(totals.values()),
        "rate_hz": rate,
        "instances": n,
        "ingest_wall_s": round(wall_s, 2),
        "ms_per_instance_wall": round(wall_s * 1000 / n, 3),
        "threads": {t: c for t, c in sorted(totals.items(), key=lambda kv: -kv[1])},
        "roles": {},
    }
    for role, thread in roles.items():
        if thread is None:
            continue
        stacks = by_thread[thread]
        total = totals[thread]
        rows = []
        for label, probe in probes()[role]:
            count = sum(c for frames, c in stacks if frames and probe(frames))
            rows.append(
                {
                    "probe": label,
                    "samples": count,
                    "share": round(count / total, 3) if total else 0.0,
                    "ms_per_instance": round(count / rate * 1000 / n, 3),
                }
            )
        out["roles"][role] = {"thread": thread, "samples": total, "probes": rows}
    leaves: Counter[str] = Counter()
    for thread in filter(None, roles.values()):
        for frames, c in by_thread[thread]:
            if frames:
                leaves[f"{thread.split(':')[-1].strip()} | {frames[-1]}"] += c
    out["top_leaves"] = leaves.most_common(15)
    return out


def _dedup_count(name: str) -> int:
    with contextlib.suppress(OSError, ValueError):
        return int((WORK / "data" / f"{name}.dedup").read_text())
    return -1


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    started = datetime.now(UTC)
    logs = WORK / "logs" / started.strftime("%Y%m%dT%H%M%SZ")
    logs.mkdir(parents=True, exist_ok=True)
    res = Results()
    small, large = DataSet.load("small"), DataSet.load("large")
    ports = pick_ports(("orthanc_dicom", "orthanc_http", "scp"))
    recv = WORK / "recv" / "move"
    recv.mkdir(parents=True, exist_ok=True)
    scp = subprocess.Popen(
        ["storescp", "-aet", SCP_AET, "-od", str(recv), str(ports["scp"])],
        stdout=open(logs / "storescp.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        env={**os.environ, **NODELAY},
        start_new_session=True,
    )
    servers: list[Server] = []
    if args.only in (None, "orthanc"):
        servers.append(Orthanc(ports, ports["scp"], logs))
    radflow = Radflow(ports["scp"], logs, args.keep, args.dicom_processes)
    if args.only in (None, "radflow"):
        servers.append(radflow)
    meta: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "dicom_processes": args.dicom_processes,
        "netns": "private, loopback only"
        if os.environ.get("RADFLOW_BENCH_IN_NETNS")
        else "host (plain loopback)",
        "orthanc": subprocess.run(["Orthanc", "--version"], capture_output=True, text=True).stdout.split(
            "\n"
        )[0],
        "dcmtk": subprocess.run(["storescu", "--version"], capture_output=True, text=True).stdout.split("\n")[
            0
        ],
        "radflow_commit": subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], capture_output=True, text=True
        ).stdout.strip(),
        "radflow_dirty": bool(
            subprocess.run(
                ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
            ).stdout.strip()
        ),
        "data": {
            "small": {
                "n": len(small.files),
                "bytes": small.bytes,
                "studies": len(small.studies),
                "sop_uids_replaced": _dedup_count("small"),
            },
            "large": {
                "n": len(large.files),
                "bytes": large.bytes,
                "studies": len(large.studies),
                "sop_uids_replaced": _dedup_count("large"),
            },
        },
        "config": {k: v for k, v in vars(args).items() if k not in ("in_netns",)},
        "logs": str(logs),
    }
    try:
        wait_port(ports["scp"], 10)
        # ingest: every (data set, associations) run on a fresh server; servers alternate per run
        plan: list[tuple[str, DataSet, int, dict[str, str]]] = []
        for ds in (small, large):
            if ds.name not in args.sets.split(","):
                continue
            for conns in (int(c) for c in args.conns.split(",")):
                plan.append((f"ingest.{ds.name}.{conns}", ds, conns, NODELAY))
        for r in range(args.runs):
            for key, ds, conns, env in plan:
                # alternate which server goes first, so that drift in the machine's load
                # does not always favour the same one
                for server in servers if r % 2 == 0 else servers[::-1]:
                    log(f"run {r + 1}/{args.runs}: {server.name} {key}")

                    def one(
                        server: Server = server,
                        key: str = key,
                        ds: DataSet = ds,
                        conns: int = conns,
                        env: dict[str, str] = env,
                        r: int = r,
                    ) -> None:
                        with running(server):
                            name = f"{server.name}.{key}"
                            guarded(res, name, lambda: ingest(server, ds, conns, env, key, res, logs))
                            if key == "ingest.small.1" and not args.skip_queries:
                                queries(server, small, args, recv, res, r)

                    guarded(res, f"{server.name}.{key}.start", one)
        # stock DCMTK client (Nagle on at the client), 200 small instances
        if not args.skip_stock:
            subset = small.subset(STOCK_SUBSET_STUDIES)
            for r in range(args.stock_runs):
                for server in servers:
                    log(f"stock client run {r + 1}/{args.stock_runs}: {server.name}")

                    def stock(server: Server = server) -> None:
                        with running(server):
                            ingest(server, subset, 1, {}, "ingest.stock", res, logs)

                    guarded(res, f"{server.name}.ingest.stock", stock)
        if not args.skip_flushes:
            subset = small.subset(STOCK_SUBSET_STUDIES)
            for server in servers:
                log(f"flushes per instance (strace): {server.name}")

                def flushes(server: Server = server) -> None:
                    with running(server):
                        count_flushes(server, subset, logs, res)

                guarded(res, f"{server.name}.flushes", flushes)
        if args.profile and radflow in servers:
            log("profiling radflow listen with py-spy (2 extra ingest runs)")
            guarded(res, "radflow.profile", lambda: profile_ingest(radflow, small, logs, res))
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop()
        stop_process(scp)
    meta["loadavg_at_end"] = os.getloadavg()
    meta["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return {"meta": meta, "raw": dict(res.raw), "failures": dict(res.failures), "notes": res.notes}


def queries(
    server: Server, small: DataSet, args: argparse.Namespace, recv: Path, res: Results, r: int
) -> None:
    n = len(small.files)
    took = server.wait_indexed(n, 300)
    if took is None:
        res.fail(f"{server.name}.queries", f"the index did not reach {n} instances within 300 s")
    log(f"  {server.name}: queries (NQ={args.nq})")
    guarded(res, f"{server.name}.echo", lambda: echo_latency(server, args.nq, res))
    guarded(res, f"{server.name}.cfind.findscu", lambda: findscu_queries(server, small, args.nq, res))
    ok = guarded(res, f"{server.name}.mwl.prepare", server.prepare_worklist)
    if ok:
        guarded(res, f"{server.name}.mwl.findscu", lambda: mwl_findscu(server, args.nq, res))
    guarded(res, f"{server.name}.reused", lambda: reused_association_queries(server, small, args.nq, res))
    # distinct studies per run, so no cache helps a later run more than the other server
    start = (r * args.nret) % len(small.studies)
    studies = [small.studies[(start + i) % len(small.studies)] for i in range(args.nret)]
    guarded(res, f"{server.name}.cmove", lambda: retrieve(server, "cmove", studies, recv, res))
    guarded(res, f"{server.name}.cget", lambda: retrieve(server, "cget", studies, recv, res))


# --------------------------------------------------------------------------------------------
# report


def med(values: Sequence[float] | None) -> float | None:
    return statistics.median(values) if values else None


def fmt(v: float | None, p: int = 1) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.{p}f}"


def build_report(result: dict[str, Any]) -> str:
    raw: dict[str, list[float]] = result["raw"]
    failures: dict[str, list[str]] = result["failures"]
    meta = result["meta"]
    rows: list[list[str]] = []

    def failure_for(server: str, key: str) -> str:
        """The first failure recorded for the workload this measure belongs to."""
        for k, reasons in failures.items():
            if not k.startswith(server + "."):
                continue
            base = k[len(server) + 1 :].removesuffix(".start")
            related = key.startswith((base + ".", base + "_"))
            if related or (base == "mwl.prepare" and key.startswith("mwl.")):
                return "failed: " + reasons[0][:150]
        return "-"

    def cell(server: str, key: str, p: int, kind: str = "median") -> tuple[str, float | None]:
        values = raw.get(f"{server}.{key}")
        if not values:
            return failure_for(server, key), None
        if kind in ("p50", "p95"):
            v = percentile(values, int(kind[1:]))
            return f"{fmt(v, p)} (n={len(values)})", v
        v = statistics.median(values)
        spread = (
            f" ({fmt(min(values), p)}–{fmt(max(values), p)}, n={len(values)})"
            if len(values) > 1
            else " (n=1)"
        )
        return fmt(v, p) + spread, v

    def row(label: str, key: str, p: int = 1, better: str = "higher", kind: str = "median") -> None:
        o, ov = cell("orthanc", key, p, kind)
        r, rv = cell("radflow", key, p, kind)
        ratio, verdict = "-", ""
        if ov and rv is not None:
            ratio = f"{rv / ov:.2f}"
            if better == "higher":
                verdict = "ok" if rv >= ov else "below"
            elif better == "lower":
                verdict = "ok" if rv <= ov else "slower"
            elif better == "less":
                verdict = "ok" if rv <= ov else "more"
        if o == "-" and r == "-":
            return  # a workload this run did not do
        rows.append([label, o, r, ratio, verdict])

    for ds, label in (("small", "2,000 × ~35 KB"), ("large", "200 × ~525 KB")):
        for conns in (1, 4):
            k = f"ingest.{ds}.{conns}"
            a = "1 assoc" if conns == 1 else "4 concurrent assocs"
            row(f"ingest {label}, {a}: inst/s", k + ".inst_s", 0)
            row(f"ingest {label}, {a}: MB/s", k + ".MB_s", 1)
            row(f"ingest {label}, {a}: peak RSS MB, receiving", k + ".rss_recv_MB", 0, "less")
            row(f"ingest {label}, {a}: peak RSS MB, all processes", k + ".rss_all_MB", 0, "less")
            row(f"ingest {label}, {a}: radflow indexed s after ACKs", k + ".indexed_after_s", 1, "none")
    row("ingest 200 × ~35 KB, stock storescu (Nagle on at the client): inst/s", "ingest.stock.inst_s", 1)
    for kind, what in (
        ("file", "the stored file"),
        ("directory", "folders (the file's entry)"),
        ("database", "index / log database"),
        ("other", "anything else"),
    ):
        row(
            f"flushes per instance (fsync/fdatasync, 200 × ~35 KB, 1 assoc): {what}",
            f"flushes.{kind}",
            2,
            "none",
        )
    for key, label in (
        ("echo.ms", "C-ECHO, echoscu per call (process+assoc+release) ms"),
        ("cfind.findscu.ms", "C-FIND study by PatientID, findscu per query (process+assoc) ms"),
        ("cfind.reused.ms", "C-FIND study by PatientID, one reused association ms"),
        ("mwl.findscu.ms", "MWL C-FIND modality+date (5 matches), findscu -W per query ms"),
        ("mwl.reused.ms", "MWL C-FIND, one reused association ms"),
    ):
        row(label.replace(" ms", " p50 ms"), key, 2, "lower", "p50")
        row(label.replace(" ms", " p95 ms"), key, 2, "lower", "p95")
    row("C-MOVE 40-instance study -> storescp: ms/study", "cmove.ms", 1, "lower")
    row("C-MOVE 40-instance study: inst/s", "cmove.inst_s", 0)
    row("C-GET 40-instance study (getscu): ms/study", "cget.ms", 1, "lower")

    headers = ["measure", "Orthanc median (min–max, n)", "radflow median (min–max, n)", "radflow/Orthanc", ""]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]

    m = meta["machine"]
    lines = [
        f"# radflow vs Orthanc, DICOM ({meta['started_at']})",
        "",
        f"- machine: {m['cores']} cores, {m['cpu_model']}; load average at start {fmt(m['loadavg_at_start'][0], 2)}, "
        f"at end {fmt(meta['loadavg_at_end'][0], 2)}",
        f"- network: {meta['netns']}; TCP_NODELAY=1 in Orthanc's and every DCMTK client's environment "
        "(except the stock-client row); radflow sets TCP_NODELAY on accepted sockets itself",
        f"- {meta['orthanc']}; {meta['dcmtk']}; radflow {meta['radflow_commit']}"
        + (" (+ uncommitted changes)" if meta["radflow_dirty"] else ""),
        f"- radflow: RADFLOW_DICOM_PROCESSES={meta.get('dicom_processes', 1)} (processes accepting "
        "associations on the DICOM port)",
        "- receiving processes: Orthanc = the Orthanc process; radflow = `radflow listen` (the C-STORE SCP) "
        "and its DICOM receivers. "
        "'all processes' adds radflow's temporal, worker and api (sampled sum of VmRSS every 50 ms)",
        f"- logs: {meta['logs']}",
        "",
        *out,
    ]
    # the flush counts ran under strace: their CPU and busy cores say nothing of the servers
    traced = ".flushes."
    workloads = sorted(
        {k.split(".cpu_ms_inst")[0].split(".", 1)[1] for k in raw if ".cpu_ms_inst" in k and traced not in k}
    )
    if workloads:
        lines += ["", "CPU ms per instance, median over runs (radflow: during the ingest / until indexed):"]
        for w in workloads:
            parts = []
            for server in ("orthanc", "radflow"):
                during = {
                    k.rsplit(".", 1)[1]: med(v)
                    for k, v in raw.items()
                    if k.startswith(f"{server}.{w}.cpu_ms_inst.")
                }
                until = {
                    k.rsplit(".", 1)[1]: med(v)
                    for k, v in raw.items()
                    if k.startswith(f"{server}.{w}.cpu_ms_inst_until_indexed.")
                }
                if during:
                    parts.append(
                        f"{server}: "
                        + ", ".join(
                            f"{name} {fmt(v, 2)}" + (f" / {fmt(until[name], 2)}" if name in until else "")
                            for name, v in sorted(during.items())
                        )
                    )
            lines.append(f"- {w}: " + "; ".join(parts))
    busy = sorted(k for k in raw if k.endswith("machine_busy_cores") and traced not in k)
    if busy:
        lines += ["", "Machine-wide busy cores during each ingest (ours + everyone else's), median:"]
        lines += [f"- {k}: {fmt(med(raw[k]), 2)}" for k in busy]
    if failures:
        lines += ["", "Failures:"]
        for k, reasons in failures.items():
            lines.append(f"- {k} ({len(reasons)}×): {reasons[0][:400]}")
    prof = result.get("notes", {}).get("profile")
    if prof:
        lines += [
            "",
            "py-spy on `radflow listen`, 2,000 × 35 KB over one association (profiled runs; py-spy "
            "itself costs some CPU): share of the thread's samples, ms per instance",
        ]
        for mode, p in prof.items():
            if mode in ("cmove", "cget", "queries"):
                if mode == "queries":
                    lines.append(
                        f"- C-FIND study and MWL C-FIND on one reused association, py-spy on-CPU on listen: "
                        f"p50 {p['ms_per_call']} ms per query; association threads {p['thread_ms_per_call']} "
                        "CPU-ms per query; top functions (inclusive, CPU-ms per query):"
                    )
                else:
                    lines.append(
                        f"- {mode} of a 40-instance study, py-spy wall on listen: {p['ms_per_call']} ms per call "
                        f"(movescu/getscu included); association threads {p['thread_ms_per_call']} thread-ms per "
                        "call; top functions (inclusive, thread-ms per call):"
                    )
                lines += [f"    - {label}: {v}" for label, v in p["inclusive"]]
                lines.append("  top leaf lines (thread-ms per call):")
                lines += [f"    - {label}: {v}" for label, v in p["leaves"]]
                continue
            if mode == "assoc":
                lines.append(
                    f"- association cost, {p['calls']} × echoscu (wall, waiting included): {p['ms_per_echoscu']} ms "
                    f"per echoscu; association threads {p['thread_ms_per_association']} thread-ms per association"
                )
                lines += [f"    - {r['probe']}: {r['ms_per_association']} ms/assoc" for r in p["probes"]]
                continue
            what = "on-CPU samples only" if mode == "cpu" else "wall clock (--idle: waiting included)"
            lines.append(
                f"- {mode} ({what}): ingest {p['ingest_wall_s']} s = {p['ms_per_instance_wall']} ms/instance"
            )
            for role, r in p["roles"].items():
                lines.append(f"  - {role} thread `{r['thread']}` ({r['samples']} samples)")
                for pr in r["probes"]:
                    lines.append(
                        f"    - {pr['probe']}: {100 * pr['share']:.0f}% ({pr['ms_per_instance']:.2f} ms/inst)"
                    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one run each, NQ=10, 3 retrieves, no stock runs")
    ap.add_argument("--runs", type=int, default=3, help="fresh-server ingest runs per workload (3)")
    ap.add_argument("--nq", type=int, default=50, help="queries per latency figure per run (50)")
    ap.add_argument("--nret", type=int, default=5, help="studies moved / got per run (5)")
    ap.add_argument("--stock-runs", type=int, default=2, help="stock-client runs per server (2)")
    ap.add_argument("--only", choices=("orthanc", "radflow"), help="run one server only")
    ap.add_argument("--sets", default="small,large", help="data sets to ingest (small,large)")
    ap.add_argument("--conns", default="1,4", help="associations per ingest workload (1,4)")
    ap.add_argument("--skip-queries", action="store_true")
    ap.add_argument("--skip-stock", action="store_true")
    ap.add_argument(
        "--skip-flushes", action="store_true", help="no strace count of fsync/fdatasync per instance"
    )
    ap.add_argument("--profile", action="store_true", help="py-spy the radflow listen process (2 extra runs)")
    ap.add_argument(
        "--dicom-processes",
        type=int,
        default=max(os.cpu_count() or 1, 4),
        help="RADFLOW_DICOM_PROCESSES for radflow (default: 4, one per association of the "
        "four-association workloads, or the machine's cores if more; --profile uses 1)",
    )
    ap.add_argument("--no-netns", action="store_true", help="run on the host's loopback, not a private netns")
    ap.add_argument("--keep", action="store_true", help="keep radflow's data folders")
    ap.add_argument("--no-json", action="store_true")
    ap.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.profile:  # py-spy watches the listen process: every association must land there
        args.dicom_processes = 1
    if args.quick:
        args.runs, args.nq, args.nret, args.skip_stock, args.skip_flushes = 1, 10, 3, True, True

    if not args.in_netns:
        if not (Path(sys.executable).parent / "temporal").exists() and not shutil.which("temporal"):
            print(
                "bench: run with the project's interpreter: .venv/bin/python bench/dicom.py", file=sys.stderr
            )
            return 2
        WORK.mkdir(parents=True, exist_ok=True)
        ensure_tools(args.profile)
        ensure_data()
        if not args.no_netns:
            if os.geteuid() == 0 and subprocess.run(["unshare", "--net", "true"]).returncode == 0:
                log("re-executing inside a private network namespace (loopback only)")
                inner = [sys.executable, str(Path(__file__).resolve()), *(argv or sys.argv[1:]), "--in-netns"]
                env = {**os.environ, "RADFLOW_BENCH_IN_NETNS": "1"}
                return subprocess.run(
                    ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *inner],
                    env=env,
                ).returncode
            log("cannot make a network namespace (needs root and unshare): running on the host's loopback")

    def on_term(signum: int, _: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    result = run_all(args)
    out = RESULTS_DIR / (
        "dicom-" + result["meta"]["started_at"].replace(":", "").replace("-", "").replace("+0000", "Z")
    )
    if not args.no_json:  # the data first: a report that fails to build must not lose a run
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    report = build_report(result)
    print(report)
    if not args.no_json:
        out.with_suffix(".md").write_text(report + "\n")
        print(f"\nresults: {out.with_suffix('.json')} and .md")
    orthanc_failed = any(k.startswith("orthanc.") for k in result["failures"])
    return 1 if orthanc_failed else 0


if __name__ == "__main__":
    sys.exit(main())
