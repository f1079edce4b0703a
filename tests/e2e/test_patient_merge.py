"""An A40 merge over real MLLP moves every exam of the prior patient to the survivor, as events.

Runs the whole stack (listener, message log, Temporal worker, API). The study part of the fan-out
is covered at the message-log level (tests/integration/test_patient_links.py); storing DICOM here
would double the run time for no new path.
"""

from __future__ import annotations

from tests.conftest import Stack
from tests.e2e.mllp import exchange, log_rows, order, parse_ack


def admit(control_id: str, patient_id: str, name: str) -> str:
    return (
        "\r".join(
            [
                f"MSH|^~\\&|HIS|GENHOSP|RADFLOW|RADIOLOGY|20261128091500||ADT^A01^ADT_A01|{control_id}|P|2.5.1",
                "EVN|A01|20261128091500",
                f"PID|1||{patient_id}^^^GENHOSP^MR||{name}||19710304|F",
                "PV1|1|E|ED^01^A",
            ]
        )
        + "\r"
    )


def merge(control_id: str, survivor: str, prior: str) -> str:
    """ADT^A40 built by hand: PID names the survivor, MRG-1 the prior identifier."""
    return (
        "\r".join(
            [
                f"MSH|^~\\&|HIS|GENHOSP|RADFLOW|RADIOLOGY|20261128110000||ADT^A40^ADT_A39|{control_id}|P|2.5.1",
                "EVN|A40|20261128110000",
                f"PID|1||{survivor}^^^GENHOSP^MR||SMITH^ANNA||19710304|F",
                f"MRG|{prior}^^^GENHOSP^MR",
            ]
        )
        + "\r"
    )


def accepted(stack: Stack, payload: str) -> None:
    ack = parse_ack(exchange(stack.mllp_port, payload.encode()))
    assert ack.code == "AA", (ack.raw, ack.err)


def test_a40_moves_every_exam_of_the_prior_patient_and_later_orders_land_on_the_survivor(
    stack: Stack,
) -> None:
    accepted(stack, admit("MA1", "MRN-SURV", "SMITH^ANNA"))
    accepted(stack, admit("MA2", "MRN-PRIOR", "SMYTH^ANNA"))
    for n, acc in enumerate(["MACC1", "MACC2"]):
        accepted(stack, order(acc, f"MO{n}", patient_id="MRN-PRIOR", name="SMYTH^ANNA"))
    for acc in ["MACC1", "MACC2"]:
        stack.wait_until(lambda acc=acc: stack.get(f"/api/exams/{acc}").status_code == 200)

    accepted(stack, merge("MM1", "MRN-SURV", "MRN-PRIOR"))
    merge_row = log_rows(stack, "control_id = ?", ("MM1",))[0]
    for acc in ["MACC1", "MACC2"]:
        exam = stack.wait_until(
            lambda acc=acc: (e := stack.get(f"/api/exams/{acc}").json())["patient"]["id"] == "MRN-SURV" and e
        )
        assert exam["patient"]["name"] == "SMITH^ANNA"
        history = stack.get(f"/api/exams/{acc}/history").json()["events"]
        assert [e["type"] for e in history] == ["ExamOrdered", "ExamPatientChanged"]
        assert history[1]["source"]["control_id"] == "MM1"
        assert history[1]["source"]["message_id"] == f"hl7:{merge_row['id']}"

    # A later order on the prior identifier is resolved to the survivor before the domain sees it.
    accepted(stack, order("MACC3", "MO3", patient_id="MRN-PRIOR", name="SMYTH^ANNA"))
    exam3 = stack.wait_until(
        lambda: stack.get("/api/exams/MACC3").status_code == 200 and stack.get("/api/exams/MACC3").json()
    )
    assert exam3["patient"]["id"] == "MRN-SURV"

    # A repeated A40 is accepted and changes nothing.
    accepted(stack, merge("MM2", "MRN-SURV", "MRN-PRIOR"))
    repeat = stack.wait_until(lambda: log_rows(stack, "control_id = ?", ("MM2",))[0]["applied_status"])
    assert repeat == "duplicate"
    for acc in ["MACC1", "MACC2"]:
        history = stack.get(f"/api/exams/{acc}/history").json()["events"]
        assert [e["type"] for e in history] == ["ExamOrdered", "ExamPatientChanged"]
