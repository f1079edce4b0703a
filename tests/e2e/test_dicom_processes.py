"""RADFLOW_DICOM_PROCESSES: the listen process hands accepted DICOM connections to receiver
processes in turn. Associations from DCMTK storescu land on every process, a receiver that dies
is started again while the port keeps answering, and a killed listen process leaves no
receiver behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import Stack, running_stack
from tests.dicom_builders import StudySpec, write_series
from tests.e2e.test_storage import query, storescu

PROCESSES = 3


@pytest.fixture
def radflow(tmp_path: Path, temporal_address: str) -> Iterator[Stack]:
    with running_stack(tmp_path, temporal_address, {"RADFLOW_DICOM_PROCESSES": str(PROCESSES)}) as stack:
        stack.wait_until(lambda: len(receivers(stack)) == PROCESSES - 1)
        yield stack


def receivers(stack: Stack) -> list[int]:
    """Pids of the listen process's receivers (its spawned children, not the resource tracker)."""
    listen = stack.processes["listen"].pid
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        parent = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:"))
        if parent == listen and "spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def accepted_by(stack: Stack) -> Counter[str]:
    """How many associations each process logged as accepted."""
    counts: Counter[str] = Counter()
    for line in stack.log("listen").splitlines():
        if line.startswith("{") and '"association accepted"' in line:
            counts[json.loads(line)["process"]] += 1
    return counts


def send_study(stack: Stack, folder: Path, count: int = 3) -> tuple[str, subprocess.CompletedProcess[str]]:
    study = StudySpec(f"PROC{uuid.uuid4().hex[:8].upper()}")
    files = write_series(folder, study, count)
    return study.study_instance_uid, storescu(stack, files)


def stored(stack: Stack, study_uid: str) -> int:
    rows = query(
        stack,
        "messages.sqlite",
        "SELECT COUNT(*) AS n FROM dicom_instances WHERE study_instance_uid = ?",
        (study_uid,),
    )
    return int(rows[0]["n"])


def test_concurrent_associations_are_served_by_every_process(radflow: Stack, tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda n: send_study(radflow, tmp_path / f"s{n}"), range(6)))

    for study_uid, sent in results:
        assert sent.returncode == 0, sent.stderr
        assert stored(radflow, study_uid) == 3
    by_process = radflow.wait_until(lambda: (c := accepted_by(radflow)) and sum(c.values()) >= 6 and c)
    assert set(by_process) == {"listen", "listen-dicom-1", "listen-dicom-2"}, by_process
    # the studies reached the PACS index whichever process stored them: the relay was woken
    for study_uid, _ in results:
        radflow.wait_until(lambda uid=study_uid: radflow.get(f"/api/studies/{uid}").status_code == 200)


def test_a_receiver_that_dies_is_started_again_and_the_port_keeps_answering(
    radflow: Stack, tmp_path: Path
) -> None:
    first, second = receivers(radflow)
    os.kill(first, signal.SIGKILL)
    for n in range(PROCESSES):  # every turn, the dead receiver's included, is answered
        study_uid, sent = send_study(radflow, tmp_path / f"during{n}", count=1)
        assert sent.returncode == 0, sent.stderr
        assert stored(radflow, study_uid) == 1
    now = radflow.wait_until(
        lambda: (pids := receivers(radflow)) and len(pids) == 2 and first not in pids and pids
    )
    assert second in now
    assert '"dicom receiver died, starting it again"' in radflow.log("listen")
    for n in range(PROCESSES):
        study_uid, sent = send_study(radflow, tmp_path / f"after{n}", count=1)
        assert sent.returncode == 0, sent.stderr
        assert stored(radflow, study_uid) == 1


def test_a_killed_listen_process_leaves_no_receiver_holding_connections(radflow: Stack) -> None:
    pids = receivers(radflow)
    assert len(pids) == PROCESSES - 1
    radflow.stop("listen", kill=True)
    deadline = time.monotonic() + 15
    while any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in pids):
        assert time.monotonic() < deadline, "receivers outlived the listen process"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        state = next(
            line.split()[1]
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("State:")
        )
    except (OSError, StopIteration):
        return False
    return state != "Z"
