"""An order sent as framed bytes over a real socket becomes an exam visible over HTTP."""

from __future__ import annotations

from tests.conftest import Stack
from tests.e2e.mllp import EXAMPLES, exchange


def test_an_order_over_mllp_is_acknowledged_and_appears_in_the_worklist_with_its_history(
    stack: Stack,
) -> None:
    ack = exchange(stack.mllp_port, (EXAMPLES / "orm_o01_new_order.hl7").read_bytes())
    assert b"MSA|AA|ORM0001" in ack
    exam = stack.wait_until(
        lambda: stack.get("/api/exams/ACC1001").status_code == 200 and stack.get("/api/exams/ACC1001").json()
    )
    assert exam["state"] == "ordered"
    assert exam["priority"] == "STAT"
    assert exam["patient"] == {"id": "MRN1001", "issuer": "GENHOSP", "name": "DOE^JANE^Q"}
    assert exam["procedure"] == {"code": "CTHEAD", "text": "CT head without contrast"}
    assert exam["modality"] == "CT"
    history = stack.get("/api/exams/ACC1001/history").json()["events"]
    assert [e["type"] for e in history] == ["ExamOrdered"]
    assert history[0]["source"]["control_id"] == "ORM0001"
    assert history[0]["actor"] == "HIS"

    cancel = exchange(stack.mllp_port, (EXAMPLES / "orm_o01_cancel.hl7").read_bytes())
    assert b"MSA|AA|ORM0002" in cancel
    stack.wait_until(lambda: stack.get("/api/exams/ACC1001").json()["state"] == "cancelled")
    history = stack.get("/api/exams/ACC1001/history").json()["events"]
    assert [e["type"] for e in history] == ["ExamOrdered", "ExamCancelled"]
    assert history[1]["data"]["reason"] == "Ordered in error"
