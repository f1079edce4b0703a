"""The dry run as an analyst uses it: `radflow hl7 map FILE` in a shell and POST /api/hl7/map on
a running API. Both show the commands and the ACK, neither leaves a trace in the message log,
and usage errors get their own exit code or 400."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, Stack, make_stack
from tests.unit.hl7_builders import message, msh, obr, orc, pid, segment


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, temporal_address: str) -> Iterator[Stack]:
    """Only the HTTP API: a dry run needs neither the listener nor the worker."""
    stack = make_stack(tmp_path_factory.mktemp("dry-run"), temporal_address)
    stack.start("api")
    try:
        stack.wait_for_port(stack.http_port)
        yield stack
    finally:
        stack.stop_all()


def an_order(control_id: str, accession: str = "ACC-DRY-1") -> str:
    return message(
        msh(message_type="ORM^O01", control_id=control_id),
        pid(patient_id="MRN-DRY"),
        segment("PV1", {1: "1", 2: "O"}),
        orc("NW"),
        obr(accession=accession, procedure="CTHEAD^CT head \\T\\ neck"),
    )


def radflow(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_cli_shows_commands_and_ack_and_exits_0_for_an_accepted_message(
    api: Stack, tmp_path: Path
) -> None:
    control_id = f"DRY{uuid.uuid4().hex[:8]}"
    path = tmp_path / "order.hl7"
    path.write_bytes(an_order(control_id).encode())
    result = radflow(api, "hl7", "map", str(path))
    assert result.returncode == 0, result.stderr
    assert "place_order -> exam-ACC-DRY-1" in result.stdout
    assert f"MSA|AA|{control_id}" in result.stdout
    assert "CT head & neck" in result.stdout  # unescaped in the tree and the command
    as_json = radflow(api, "hl7", "map", str(path), "--json")
    report = json.loads(as_json.stdout)
    [command] = report["commands"]
    assert (command["kind"], command["accession"], command["workflow_id"]) == (
        "place_order",
        "ACC-DRY-1",
        "exam-ACC-DRY-1",
    )
    assert report["refusal"] is None and report["channel"] == "default"


def test_the_cli_exits_1_for_a_message_that_would_be_refused(api: Stack, tmp_path: Path) -> None:
    path = tmp_path / "no-accession.hl7"
    path.write_bytes(an_order("DRYREF", accession="").encode())
    result = radflow(api, "hl7", "map", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "REFUSED AE" in result.stdout and "OBR^1^18" in result.stdout


def test_the_cli_exits_2_on_usage_errors(api: Stack, tmp_path: Path) -> None:
    missing = radflow(api, "hl7", "map", str(tmp_path / "nothing.hl7"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    path = tmp_path / "order.hl7"
    path.write_bytes(an_order("DRYCH").encode())
    unknown = radflow(api, "hl7", "map", str(path), "--channel", "no-such-channel")
    assert unknown.returncode == 2 and "no-such-channel" in unknown.stderr


def test_post_api_hl7_map_dry_runs_without_a_trace_in_the_message_log(api: Stack) -> None:
    control_id = f"DRY{uuid.uuid4().hex[:8]}"
    text = an_order(control_id).replace("\r", "\n")  # as pasted from an editor
    response = api.post("/api/hl7/map", content=text, headers={"content-type": "text/plain"})
    assert response.status_code == 200, response.text
    report = response.json()
    assert [c["kind"] for c in report["commands"]] == ["place_order"]
    assert report["ack"].split("\n")[1].startswith(f"MSA|AA|{control_id}")
    pid_5 = next(
        f for s in report["tree"] if s["segment"] == "PID" for f in s["fields"] if f["position"] == "PID-5"
    )
    assert {"position": "PID-5.1", "value": "DOE"} in pid_5["components"]
    assert "not part of a dry run" in report["note"]
    logged = api.get("/api/hl7/messages", control_id=control_id)
    assert logged.status_code == 200 and logged.json()["messages"] == []


def test_post_api_hl7_map_answers_200_for_a_refused_message_and_400_for_bad_requests(api: Stack) -> None:
    refused = api.post(
        "/api/hl7/map",
        json={"message": message(msh(message_type="ORM^O01", control_id="R1"), pid(), orc("RP"), obr())},
    )
    assert refused.status_code == 200, refused.text
    assert refused.json()["refusal"]["code"] == "AR" and refused.json()["refusal"]["location"] == "ORC^1^1"
    empty = api.post("/api/hl7/map", content=b"", headers={"content-type": "text/plain"})
    assert empty.status_code == 400 and "empty" in empty.json()["detail"]
    unknown = api.post("/api/hl7/map", json={"message": an_order("R2"), "channel": "nope"})
    assert unknown.status_code == 400 and "nope" in unknown.json()["detail"]
    bad_json = api.post("/api/hl7/map", content=b"{", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400
