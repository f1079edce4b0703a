"""The calling-AE allow-list end to end: `radflow listen` reads RADFLOW_DICOM_CONFIG, DCMTK's
echoscu is the caller, and what radflow decided is read back from /api/dicom/associations.
A malformed configuration keeps `radflow listen` from starting, with a message naming the file."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack, make_stack

ALLOW_LIST = """\
allowed_callers:
  - ae_title: CT1
    hosts: [127.0.0.1]
  - ae_title: VIEWER
    hosts: [10.9.9.9]
"""


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory, temporal_address: str) -> Iterator[Stack]:
    """listen (the DICOM AE) and api; no worker: nothing here reaches a workflow."""
    tmp = tmp_path_factory.mktemp("allow-list")
    config = tmp / "dicom.yaml"
    config.write_text(ALLOW_LIST)
    stack = make_stack(tmp, temporal_address, {"RADFLOW_DICOM_CONFIG": str(config)})
    for part in ("listen", "api"):
        stack.start(part)
    try:
        for port in (stack.http_port, stack.dicom_port):
            stack.wait_for_port(port)
        yield stack
    finally:
        stack.stop_all()


def echoscu(stack: Stack, aet: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-v", "-aet", aet, "-aec", "RADFLOW", "127.0.0.1", str(stack.dicom_port)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "TCP_NODELAY": "1"},
    )


def associations_of(stack: Stack, aet: str) -> list[dict[str, Any]]:
    rows = stack.get("/api/dicom/associations", limit=1000).json()["associations"]
    return [a for a in rows if a["calling_ae"] == aet]


def assert_rejected(stack: Stack, aet: str, reason: str) -> None:
    result = echoscu(stack, aet)
    said = result.stdout + result.stderr
    assert result.returncode != 0, said
    assert "Association Rejected" in said, said
    assert "Calling AE Title Not Recognized" in said, said  # A-ASSOCIATE-RJ reason 3 (PS3.8 9.3.4)
    assert "Echo Response" not in said, said
    rows = stack.wait_until(lambda: associations_of(stack, aet), timeout=10)
    assert [(a["status"], a["reason"]) for a in rows] == [("rejected", reason)]
    assert rows[0]["exchanged"] == {} and rows[0]["ended_at"]


def test_an_allowed_ae_from_its_host_is_accepted(gated: Stack) -> None:
    result = echoscu(gated, "CT1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Received Echo Response (Success)" in result.stdout + result.stderr
    rows = gated.wait_until(lambda: [a for a in associations_of(gated, "CT1") if a["ended_at"]], timeout=10)
    assert rows[0]["status"] == "released" and not rows[0]["reason"]
    assert rows[0]["exchanged"] == {"C-ECHO-RQ": 1}


def test_an_ae_missing_from_the_allow_list_is_rejected_and_the_rejection_logged(gated: Stack) -> None:
    assert_rejected(gated, "INTRUDER", "calling AE 'INTRUDER' is not in the allow-list")


def test_an_allowed_ae_calling_from_another_host_is_rejected_and_the_rejection_logged(gated: Stack) -> None:
    assert_rejected(gated, "VIEWER", "calling AE 'VIEWER' is not allowed from 127.0.0.1")


def test_an_allowed_association_after_rejections_still_works(gated: Stack) -> None:
    for _ in range(2):
        assert echoscu(gated, "INTRUDER2").returncode != 0
    before = len(associations_of(gated, "CT1"))
    result = echoscu(gated, "CT1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Received Echo Response (Success)" in result.stdout + result.stderr
    gated.wait_until(lambda: len(associations_of(gated, "CT1")) == before + 1, timeout=10)
    assert gated.processes["listen"].poll() is None


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("syntax.yaml", "allowed_callers:\n  - ae_title: CT1\n\t- ae_title: CT2\n", "line 3: not valid YAML"),
        (
            "hosts.yaml",
            "allowed_callers:\n  - ae_title: CT1\n    hosts: 127.0.0.1\n",
            "allowed_callers[0].hosts",
        ),
    ],
)
def test_a_malformed_config_file_stops_listen_from_starting_with_a_message_naming_the_file(
    tmp_path: Path, temporal_address: str, name: str, content: str, says: str
) -> None:
    config = tmp_path / name
    config.write_text(content)
    stack = make_stack(tmp_path, temporal_address, {"RADFLOW_DICOM_CONFIG": str(config)})
    stack.start("listen")
    process = stack.processes["listen"]
    try:
        code = process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        stack.stop_all()
        pytest.fail(f"radflow listen kept running with a malformed config:\n{stack.log('listen')}")
    log = stack.log("listen")
    assert code != 0, log
    assert f"{config}" in log and says in log, log
    assert "Traceback" not in log, log
    # it stopped before opening anything a sender could reach
    for port in (stack.mllp_port, stack.dicom_port):
        with pytest.raises(TimeoutError):
            stack.wait_for_port(port, timeout=0.3)
