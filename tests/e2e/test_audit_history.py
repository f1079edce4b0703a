"""The auditor's exam history end to end on radflow's own processes: an order over MLLP, MPPS
over DICOM, a report signed over HTTP and delivered as ORU^R01 to a peer that ACKs it; then
`GET /api/audit/exams/{accession}` holds the events, the raw messages, the delivery with its
ACK, Temporal's summary, who viewed the exam and an intact chain. The same run's logs never
contain the patient's name or the report's text."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from adapters.settings import Settings
from api.auth import signing_key
from api.authz import Gate
from tests.conftest import Stack, make_stack, running_stack
from tests.e2e.mllp import exchange, order, parse_ack
from tests.hl7_peer import PeerServer, destination_yaml
from tests.integration.mpps_builders import ended, in_progress, mpps_scu

FAMILY, GIVEN = "QUILLBRACKET", "ODALINDE"  # nowhere else in radflow or its tests
FINDINGS = {
    "findings": "Subtle zygomatic arch fracture with adjacent soft tissue swelling.",
    "impression": "Undisplaced zygomatic arch fracture.",
}


@pytest.fixture(scope="module")
def peer() -> Iterator[PeerServer]:
    with PeerServer() as server:
        yield server


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ],
)
def radflow(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    temporal_address: str,
    peer: PeerServer,
) -> Iterator[Stack]:
    config = tmp_path_factory.mktemp("config")
    (config / "destinations.yaml").write_text(destination_yaml("EHR", peer.port, events=("report",)))
    env = {"RADFLOW_HL7_CONFIG_DIR": str(config)}
    if request.param == "postgres":
        env["RADFLOW_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    if request.param == "sqlite":
        with running_stack(tmp_path_factory.mktemp("audit"), temporal_address, env) as stack:
            yield stack
        return
    # on a fresh PostgreSQL database the three processes creating their tables at once collide
    # (pg_type unique violations in CREATE TABLE IF NOT EXISTS): the worker creates them first
    stack = make_stack(tmp_path_factory.mktemp("audit"), temporal_address, env)
    try:
        stack.start("worker")
        stack.wait_until(lambda: "worker started" in stack.log("worker"), timeout=30)
        for part in ("listen", "api"):
            stack.start(part)
        for port in (stack.mllp_port, stack.http_port, stack.dicom_port):
            stack.wait_for_port(port)
        yield stack
    finally:
        stack.stop_all()


def bearer(stack: Stack, username: str, *roles: str) -> dict[str, str]:
    """A token signed with the stack's own key (as POST /api/auth/token would issue it)."""
    token = Gate(secret=signing_key(Settings(data_dir=stack.data_dir))).issue(username, roles)
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Reported:
    accession: str
    auditor: dict[str, str]
    radiologist: dict[str, str]


@pytest.fixture(scope="module")
def reported(radflow: Stack, peer: PeerServer) -> Reported:
    acc = f"AU{uuid.uuid4().hex[:8].upper()}"
    radiologist = bearer(radflow, "dr.alice", "radiologist")
    auditor = bearer(radflow, "ann.auditor", "auditor")
    mrn = f"M{acc}"
    ack = parse_ack(
        exchange(radflow.mllp_port, order(acc, f"O-{acc}", patient_id=mrn, name=f"{FAMILY}^{GIVEN}").encode())
    )
    assert ack.code == "AA", ack.raw

    def state() -> str | None:
        response = httpx.get(f"{radflow.base_url}/api/exams/{acc}", headers=radiologist, timeout=10)
        return response.json()["state"] if response.status_code == 200 else None

    radflow.wait_until(lambda: state() == "ordered")
    step = generate_uid()
    with mpps_scu(radflow.dicom_port, calling_ae="CT01") as scu:
        started = in_progress(acc, patient_id=mrn)
        started.PatientName = f"{FAMILY}^{GIVEN}"
        assert scu.create(started, step).status == 0x0000
        radflow.wait_until(lambda: state() == "in_progress")
        assert scu.set(ended("COMPLETED", []), step).status == 0x0000
    radflow.wait_until(lambda: state() == "completed")
    for method, path, body in (
        ("POST", "reading/claim", {"user": "dr.alice"}),
        ("POST", "report/final", {"user": "dr.alice", "sections": FINDINGS}),
    ):
        answer = httpx.request(
            method, f"{radflow.base_url}/api/exams/{acc}/{path}", json=body, headers=radiologist, timeout=40
        )
        assert answer.status_code == 200, answer.text
    radflow.wait_until(lambda: any(str(m.segment("OBR")[18]) == acc for m in list(peer.received)), timeout=30)
    return Reported(acc, auditor, radiologist)


def history(stack: Stack, reported: Reported, **params: str) -> httpx.Response:
    return httpx.get(
        f"{stack.base_url}/api/audit/exams/{reported.accession}",
        params=params,
        headers=reported.auditor,
        timeout=30,
    )


def test_the_exam_history_holds_events_messages_deliveries_workflow_viewers_and_chain(
    radflow: Stack, reported: Reported
) -> None:
    acc = reported.accession

    def settled() -> dict[str, Any] | None:
        body: dict[str, Any] = history(radflow, reported).json()
        delivered = [d for d in body["deliveries"] if d["status"] == "delivered"]
        chained = body["chain"]["links"] >= len(body["events"]) - sum(
            e["aggregate"] == "study" for e in body["events"]
        )
        return body if delivered and chained and body["chain"]["intact"] else None

    body = radflow.wait_until(settled, timeout=30)
    body = history(radflow, reported).json()  # a second look sees the first among the viewers

    types = [e["type"] for e in body["events"]]
    for expected in (
        "ExamOrdered",
        "ExamStarted",
        "ExamCompleted",
        "ReadingClaimed",
        "ReportIssued",
        "ExamReported",
    ):
        assert expected in types
    ordered = body["events"][types.index("ExamOrdered")]
    assert ordered["source"]["kind"] == "hl7" and ordered["message_href"]
    issued = body["events"][types.index("ReportIssued")]
    assert issued["actor"] == "dr.alice" and issued["aggregate"] == "report"

    (orm,) = [m for m in body["inbound"]["hl7"] if m["control_id"] == f"O-{acc}"]
    assert orm["raw"]["text"].startswith("MSH|") and "ORM^O01" in orm["raw"]["text"]
    assert "MSA|AA" in orm["ack"]["text"]
    assert {m["dimse"] for m in body["inbound"]["mpps"]} >= {"N-CREATE", "N-SET"}
    assert all(m["calling_ae"] == "CT01" for m in body["inbound"]["mpps"])

    (oru,) = [d for d in body["deliveries"] if d["message_type"].startswith("ORU")]
    assert oru["destination"] == "EHR" and oru["status"] == "delivered"
    assert "MSA|AA" in oru["last_ack"]["text"]

    workflow = body["workflow"]
    assert workflow["available"] is True, workflow
    assert workflow["workflow_id"] == f"exam-{acc}" and workflow["status"] == "RUNNING"
    kinds = [e["type"] for e in workflow["history"]]
    assert kinds[0] == "WORKFLOW_EXECUTION_STARTED"
    assert "WORKFLOW_EXECUTION_SIGNALED" in kinds and "ACTIVITY_TASK_COMPLETED" in kinds
    assert any(e.get("name") == "apply_command" for e in workflow["history"])

    viewers = {(v["username"], v["route"]) for v in body["viewers"]}
    assert ("dr.alice", "/api/exams/{accession}") in viewers  # the radiologist's reads
    assert ("ann.auditor", "/api/audit/exams/{accession}") in viewers  # and the auditor's own
    assert body["chain"]["intact"] is True and body["chain"]["head"]

    download = history(radflow, reported, format="json")
    assert download.status_code == 200
    assert download.headers["content-disposition"] == f'attachment; filename="radflow-audit-{acc}.json"'
    assert json.loads(download.content)["accession"] == acc

    page = httpx.get(f"{radflow.base_url}/ui/audit/exams/{acc}", headers=reported.auditor, timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "Chain intact" in page.text and "@media print" in page.text and f"O-{acc}" in page.text

    refused = httpx.get(f"{radflow.base_url}/api/audit/exams/{acc}", headers=reported.radiologist, timeout=10)
    assert refused.status_code == 403


def test_auditors_query_the_access_audit_by_exam_user_patient_and_time(
    radflow: Stack, reported: Reported
) -> None:
    def query(**params: Any) -> dict[str, Any]:
        response = httpx.get(
            f"{radflow.base_url}/api/audit/access", params=params, headers=reported.auditor, timeout=10
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    by_exam = query(accession=reported.accession)["entries"]
    assert by_exam and all(e["accession"] == reported.accession for e in by_exam)
    by_user = query(user="dr.alice", accession=reported.accession)["entries"]
    assert by_user and {e["username"] for e in by_user} == {"dr.alice"}
    assert query(patient=f"M{reported.accession}")["entries"]
    first = query(accession=reported.accession, limit=1)
    second = query(accession=reported.accession, limit=1, after=first["next"])
    assert first["next"] is not None and second["entries"][0]["id"] > first["entries"][0]["id"]
    assert query(accession=reported.accession, since="2999-01-01")["entries"] == []
    assert (
        httpx.get(
            f"{radflow.base_url}/api/audit/access", params={"since": "yesterday"}, headers=reported.auditor
        ).status_code
        == 422
    )

    dicom = httpx.get(
        f"{radflow.base_url}/api/audit/dicom", params={"calling_ae": "CT01"}, headers=reported.auditor
    )
    assert dicom.status_code == 200
    assert dicom.json()["associations"] and all(
        a["calling_ae"] == "CT01" for a in dicom.json()["associations"]
    )


def test_the_logs_of_the_run_hold_neither_the_patients_name_nor_the_report_text(
    radflow: Stack, reported: Reported
) -> None:
    assert (
        history(radflow, reported).status_code == 200
    )  # the audit views render both; they must not log them
    logs = sorted(radflow.data_dir.glob("*.log"))
    assert {p.name for p in logs} >= {"worker.log", "listen.log", "api.log"}
    secrets = [FAMILY, GIVEN, *FINDINGS.values(), "zygomatic"]
    for path in logs:
        text = path.read_text(errors="replace").lower()
        leaked = [s for s in secrets if s.lower() in text]
        assert not leaked, f"{path.name} holds {leaked}"
