"""The reading and reporting flow end to end on radflow's own processes (worker, listen, api):
an order over MLLP, MPPS over DICOM, then a radiologist over HTTP claims, drafts and signs; the
ORU^R01 reaches a python-hl7 peer, which ACKs it, and the exam is reported. Refusals (a second
claim, signing twice, a cancelled exam, an unknown one) are 4xx with a reason and change
nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import hl7
import httpx
import pytest
from pydicom.uid import generate_uid

from tests.conftest import Stack, running_stack
from tests.e2e.mllp import cancel, exchange, history_types, order, parse_ack, wait_for_exam
from tests.hl7_peer import PeerServer, destination_yaml
from tests.integration.mpps_builders import ended, in_progress, mpps_scu

FINDINGS = {
    "findings": "No acute intracranial haemorrhage.\nVentricles normal.",
    "impression": "Normal CT head.",
}


@pytest.fixture(scope="module")
def peer() -> Iterator[PeerServer]:
    with PeerServer() as server:
        yield server


@pytest.fixture(scope="module")
def radflow(
    tmp_path_factory: pytest.TempPathFactory, temporal_address: str, peer: PeerServer
) -> Iterator[Stack]:
    config = tmp_path_factory.mktemp("config")
    (config / "destinations.yaml").write_text(destination_yaml("EHR", peer.port, events=("report",)))
    (config / "reporting.yaml").write_text(
        "claim_minutes: 20\ntemplates:\n  CTHEAD:\n    technique: Axial CT of the head without contrast.\n"
    )
    with running_stack(
        tmp_path_factory.mktemp("reporting"), temporal_address, {"RADFLOW_HL7_CONFIG_DIR": str(config)}
    ) as stack:
        yield stack


def completed_exam(stack: Stack) -> str:
    acc = f"RP{uuid.uuid4().hex[:8].upper()}"
    ack = parse_ack(exchange(stack.mllp_port, order(acc, f"O-{acc}", patient_id=f"M{acc}").encode()))
    assert ack.code == "AA", ack.raw
    wait_for_exam(stack, acc)
    step = generate_uid()
    with mpps_scu(stack.dicom_port, calling_ae="CT01") as scu:
        assert scu.create(in_progress(acc, patient_id=f"M{acc}"), step).status == 0x0000
        wait_for_exam(stack, acc, "in_progress")
        assert scu.set(ended("COMPLETED", []), step).status == 0x0000
    wait_for_exam(stack, acc, "completed")
    return acc


def act(stack: Stack, method: str, path: str, **body: Any) -> httpx.Response:
    """As the radiologist `user` names (signed in; the body's `user` is ignored by the API)."""
    return stack.request(method, f"/api/exams/{path}", json=body, user=body.get("user"), timeout=40)


def reports_for(peer: PeerServer, acc: str) -> list[hl7.Message]:
    return [m for m in list(peer.received) if str(m.segment("OBR")[18]) == acc]


def test_order_to_signed_report_received_and_acked_downstream(radflow: Stack, peer: PeerServer) -> None:
    acc = completed_exam(radflow)
    claimed = act(radflow, "POST", f"{acc}/reading/claim", user="dr.alice")
    assert claimed.status_code == 200, claimed.text
    assert claimed.json()["reading"]["claimed_by"] == "dr.alice"

    second = act(radflow, "POST", f"{acc}/reading/claim", user="dr.bob")
    assert second.status_code == 409 and "claimed by dr.alice" in second.json()["detail"]

    draft = act(radflow, "PUT", f"{acc}/report/draft", user="dr.alice", sections={"findings": "No bleed."})
    assert draft.status_code == 200 and draft.json()["reading"]["status"] == "draft"
    signed = act(radflow, "POST", f"{acc}/report/final", user="dr.alice", sections=FINDINGS)
    assert signed.status_code == 200, signed.text
    assert signed.json()["state"] == "reported"

    radflow.wait_until(lambda: reports_for(peer, acc), timeout=30)
    (oru,) = reports_for(peer, acc)
    assert str(oru.segment("MSH")[9]).startswith("ORU^R01")
    assert str(oru.segment("OBR")[25]) == "F"
    text = [str(s[5]) for s in oru.segments("OBX")]
    assert "Normal CT head." in text and "Ventricles normal." in text
    wait_for_exam(radflow, acc, "reported")
    deliveries = radflow.wait_until(
        lambda: (
            (r := radflow.get(f"/api/exams/{acc}/deliveries")).status_code == 200
            and [d for d in _rows(r.json()) if d["status"] == "delivered"]
        )
    )
    assert deliveries[0]["destination"] == "EHR"

    # signed is final: a second signature and a preliminary are refused, nothing changes
    before = history_types(radflow, acc)
    again = act(radflow, "POST", f"{acc}/report/final", user="dr.alice", sections=FINDINGS)
    assert again.status_code == 409 and "already signed" in again.json()["detail"]
    edit = act(radflow, "POST", f"{acc}/report/preliminary", user="dr.alice", sections=FINDINGS)
    assert edit.status_code == 409
    assert history_types(radflow, acc) == before

    # an addendum is a new revision, sent as a corrected result after the final one
    added = act(
        radflow, "POST", f"{acc}/report/addendum", user="dr.bob", sections={"addendum": "Mild sinus disease."}
    )
    assert added.status_code == 200, added.text
    radflow.wait_until(lambda: len(reports_for(peer, acc)) == 2, timeout=30)
    assert [str(m.segment("OBR")[25]) for m in reports_for(peer, acc)] == ["F", "C"]


def _rows(body: Any) -> list[dict[str, Any]]:
    if isinstance(body, dict):
        body = body.get("deliveries", body.get("messages", []))
    return list(body)


def test_refusals_are_4xx_with_a_reason(radflow: Stack) -> None:
    acc = f"RX{uuid.uuid4().hex[:8].upper()}"
    ack = parse_ack(exchange(radflow.mllp_port, order(acc, f"O-{acc}", patient_id=f"M{acc}").encode()))
    assert ack.code == "AA"
    wait_for_exam(radflow, acc)
    not_yet = act(radflow, "POST", f"{acc}/reading/claim", user="dr.alice")
    assert not_yet.status_code == 409 and "while ordered" in not_yet.json()["detail"]

    assert (
        parse_ack(exchange(radflow.mllp_port, cancel(acc, f"C-{acc}", patient_id=f"M{acc}").encode())).code
        == "AA"
    )
    wait_for_exam(radflow, acc, "cancelled")
    cancelled = act(radflow, "POST", f"{acc}/report/final", user="dr.alice", sections=FINDINGS)
    assert cancelled.status_code == 409 and "cancelled" in cancelled.json()["detail"]
    assert "ReportIssued" not in history_types(radflow, acc)

    unknown = act(radflow, "POST", "NOSUCHEXAM/reading/claim", user="dr.alice")
    assert unknown.status_code == 404 and "NOSUCHEXAM" in unknown.json()["detail"]
    nobody = act(radflow, "POST", f"{acc}/reading/claim", user="")
    assert nobody.status_code == 422
    wrong_kind = act(radflow, "POST", f"{acc}/report/draftish", user="dr.alice", sections=FINDINGS)
    assert wrong_kind.status_code == 422


def test_a_critical_result_is_on_the_desk_list_until_acknowledged(radflow: Stack) -> None:
    acc = completed_exam(radflow)
    signed = act(radflow, "POST", f"{acc}/report/final", user="dr.alice", sections=FINDINGS, critical=True)
    assert signed.status_code == 200, signed.text
    assert signed.json()["reading"]["critical"] == "awaiting"

    def on_desk() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = radflow.get("/api/reading/critical").json()["items"]
        return [i for i in items if i["accession"] == acc]

    (item,) = radflow.wait_until(on_desk)
    assert item["level"] == 0 and item["contact"]["role"] == "referring_physician"
    assert item["contact"]["name"] == "GREGORY HOUSE (1234)"  # OBR-16 of the order
    assert item["ack_due_at"][:19] == signed.json()["reading"]["critical_due_at"][:19]  # both UTC

    ack = act(radflow, "POST", f"{acc}/report/critical/acknowledge", user="dr.house", note="patient recalled")
    assert ack.status_code == 200 and ack.json()["reading"]["critical"] == "acknowledged"
    radflow.wait_until(lambda: not on_desk())
    again = act(radflow, "POST", f"{acc}/report/critical/acknowledge", user="dr.house")
    assert again.status_code == 409 and "no critical result awaits" in again.json()["detail"]
    acknowledged = radflow.get("/api/reading/critical", state="acknowledged").json()["items"]
    assert [i["acknowledged_by"] for i in acknowledged if i["accession"] == acc] == ["dr.house"]
