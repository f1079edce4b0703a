"""MPPS end to end: orders over MLLP, a pynetdicom SCU as the modality, radflow's processes
(worker, listen, api) as subprocesses, answers read over HTTP.

The stack is shared by the module (starting one takes seconds); every test uses its own
accessions and instance UIDs.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.conftest import ROOT, Stack, free_port, make_stack, running_stack
from tests.e2e.mllp import assert_still_serves, cancel, exchange, order, parse_ack, wait_for_exam
from tests.integration.mpps_builders import ended, in_progress, mpps_scu, series_item

DVTK = Path("dicom") / "dvtk" / "mpps"


@pytest.fixture(scope="module")
def radflow(tmp_path_factory: pytest.TempPathFactory, temporal_address: str) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("mpps"), temporal_address) as stack:
        yield stack


def accession(tag: str) -> str:
    return f"{tag}{uuid.uuid4().hex[:8].upper()}"  # SH: at most 16 characters


def place(stack: Stack, accession: str) -> None:
    """An order over MLLP; the MPPS may follow at once: the ACK means the log knows it."""
    ack = parse_ack(exchange(stack.mllp_port, order(accession, f"O-{accession}").encode()))
    assert ack.code == "AA", ack.raw


def history(stack: Stack, accession: str) -> list[dict[str, Any]]:
    response = stack.get(f"/api/exams/{accession}/history")
    response.raise_for_status()
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def mpps_rows(stack: Stack, uid: str) -> list[dict[str, Any]]:
    path = stack.data_dir / "messages.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT * FROM mpps_messages WHERE sop_instance_uid = ? ORDER BY id", (uid,)
        ).fetchall()
    return [dict(r) for r in rows]


def test_in_progress_then_completed_moves_the_exam_and_its_history_carries_the_dicom_provenance(
    radflow: Stack,
) -> None:
    acc, step = accession("MP"), generate_uid()
    series, images = generate_uid(), [generate_uid(), generate_uid(), generate_uid()]
    place(radflow, acc)

    with mpps_scu(radflow.dicom_port, calling_ae="CT01") as scu:
        assert scu.create(in_progress(acc), step).status == 0x0000
        wait_for_exam(radflow, acc, "in_progress")
        assert scu.set(ended("COMPLETED", [series_item(series, images)]), step).status == 0x0000
    wait_for_exam(radflow, acc, "completed")

    ordered, started, completed = history(radflow, acc)
    assert [e["type"] for e in (ordered, started, completed)] == [
        "ExamOrdered",
        "ExamStarted",
        "ExamCompleted",
    ]
    rows = mpps_rows(radflow, step)
    for event, row in zip((started, completed), rows, strict=True):
        assert event["actor"] == "CT01"
        assert event["source"] == {
            "kind": "dicom",
            "application": "CT01",
            "facility": "",
            "control_id": step,
            "message_id": f"mpps:{row['id']}",
        }
    assert started["occurred_at"] == "2026-11-28T10:15:00"
    assert started["data"]["mpps_uid"] == step
    assert (started["data"]["performed_station_ae"], started["data"]["modality"]) == ("CT01", "CT")
    assert completed["data"]["ended_at"] == "2026-11-28T10:30:00"
    [performed] = completed["data"]["series"]
    assert performed["series_instance_uid"] == series
    assert [i["sop_instance_uid"] for i in performed["instances"]] == images
    rows = radflow.wait_until(
        lambda: (r := mpps_rows(radflow, step)) and all(x["applied_status"] for x in r) and r
    )
    assert [(r["dimse"], r["outcome"], r["applied_status"]) for r in rows] == [
        ("N-CREATE", "accepted", "applied"),
        ("N-SET", "accepted", "applied"),
    ]
    assert all(r["relayed_at"] for r in rows)


def test_discontinued_discontinues_the_exam_with_the_reason_the_modality_gave(radflow: Stack) -> None:
    acc, step = accession("MD"), generate_uid()
    place(radflow, acc)
    with mpps_scu(radflow.dicom_port) as scu:
        assert scu.create(in_progress(acc), step).status == 0x0000
        reason = ("110526", "Resource failure", "DCM")
        assert scu.set(ended("DISCONTINUED", reason=reason), step).status == 0x0000
    wait_for_exam(radflow, acc, "discontinued")
    discontinued = history(radflow, acc)[-1]
    assert discontinued["type"] == "ExamDiscontinued"
    assert discontinued["data"]["reason"] == "110526^Resource failure^DCM"


def test_each_refusal_reaches_the_modality_with_its_status_and_comment_and_moves_no_exam(
    radflow: Stack,
) -> None:
    done, cancelled, busy = accession("RD"), accession("RC"), accession("RB")
    for acc in (done, cancelled, busy):
        place(radflow, acc)
    assert parse_ack(exchange(radflow.mllp_port, cancel(cancelled, f"CA-{cancelled}").encode())).code == "AA"
    done_step, busy_step = generate_uid(), generate_uid()
    incomplete = in_progress(busy)
    del incomplete.PerformedProcedureStepStartDate

    with mpps_scu(radflow.dicom_port) as scu:
        assert scu.create(in_progress(done), done_step).status == 0x0000
        assert scu.set(ended("COMPLETED"), done_step).status == 0x0000
        assert scu.create(in_progress(busy), busy_step).status == 0x0000
        replies = {
            "unknown instance": scu.set(ended("COMPLETED"), generate_uid()),
            "after completed": scu.set(ended("DISCONTINUED"), done_step),
            "duplicate instance": scu.create(in_progress(busy), busy_step),
            "missing attribute": scu.create(incomplete, generate_uid()),
            "cancelled exam": scu.create(in_progress(cancelled), generate_uid()),
            "second step": scu.create(in_progress(busy), generate_uid()),
        }

    assert {name: (r.status, r.comment, r.error_id) for name, r in replies.items()} == {
        "unknown instance": (0x0112, "no such MPPS instance", None),
        "after completed": (0x0110, "Performed Procedure Step Object may no longer be updated", 0xA710),
        "duplicate instance": (0x0111, "instance exists (IN PROGRESS)", None),
        "missing attribute": (0x0120, "missing (0040,0244)", None),
        "cancelled exam": (0x0110, f"exam {cancelled}: cannot start while cancelled", None),
        "second step": (0x0110, f"exam {busy}: cannot start while in_progress", None),
    }
    wait_for_exam(radflow, done, "completed")
    wait_for_exam(radflow, cancelled, "cancelled")
    wait_for_exam(radflow, busy, "in_progress")
    assert [e["type"] for e in history(radflow, done)] == ["ExamOrdered", "ExamStarted", "ExamCompleted"]
    assert_still_serves(radflow, "mpps")


def _from_corpus(path: Path, accession: str | None = None) -> Dataset:
    """A DVTk dataset as its file holds it, with its accession pointed at our order. Group
    lengths (gggg,0000) go: they would lie once the accession changes length, and PS3.5 7.2
    lets an encoder leave them out."""
    ds = dcmread(path)
    for dataset in [ds, *(item for elem in ds.iterall() if elem.VR == "SQ" for item in elem.value)]:
        for tag in [element.tag for element in dataset if element.tag.element == 0]:
            del dataset[tag]
    if accession is not None:
        ds.ScheduledStepAttributesSequence[0].AccessionNumber = accession
    return ds


def test_the_dvtk_mpps_datasets_drive_exams_when_pointed_at_our_orders(
    radflow: Stack, corpus_dir: Path
) -> None:
    folder = corpus_dir / DVTK
    files = {p.name: p for p in sorted(folder.glob("*.dcm"))}
    assert set(files) == {
        "mpps-inprogress1.dcm",
        "mpps-inprogress2.dcm",
        "mpps-completed1.dcm",
        "mpps-discontinued1.dcm",
    }
    step = str(
        dcmread(files["mpps-inprogress1.dcm"]).file_meta.MediaStorageSOPInstanceUID
    )  # all four share it
    first, second = accession("DV"), accession("DW")
    place(radflow, first)
    place(radflow, second)
    second_step = generate_uid()
    report: list[tuple[str, str, int, str]] = []

    with mpps_scu(radflow.dicom_port, calling_ae="DVT") as scu:

        def send(name: str, what: str, reply: Any) -> int:
            report.append((name, what, reply.status, reply.comment))
            return int(reply.status)

        results = [
            send(
                "mpps-inprogress1.dcm",
                f"N-CREATE {first}",
                scu.create(_from_corpus(files["mpps-inprogress1.dcm"], first), step),
            ),
            send(
                "mpps-inprogress2.dcm",
                "N-CREATE same UID",
                scu.create(_from_corpus(files["mpps-inprogress2.dcm"], first), step),
            ),
            send("mpps-completed1.dcm", "N-SET", scu.set(_from_corpus(files["mpps-completed1.dcm"]), step)),
            send(
                "mpps-discontinued1.dcm",
                "N-SET after COMPLETED",
                scu.set(_from_corpus(files["mpps-discontinued1.dcm"]), step),
            ),
            send(
                "mpps-inprogress2.dcm",
                f"N-CREATE {second}, new UID",
                scu.create(_from_corpus(files["mpps-inprogress2.dcm"], second), second_step),
            ),
            send(
                "mpps-discontinued1.dcm",
                "N-SET on the new UID",
                scu.set(_from_corpus(files["mpps-discontinued1.dcm"]), second_step),
            ),
        ]
    print("\nDVTk MPPS datasets against radflow:")
    for name, what, status, comment in report:
        print(f"  {name:<24} {what:<32} 0x{status:04X} {comment}")

    assert results == [0x0000, 0x0111, 0x0000, 0x0110, 0x0000, 0x0000]
    wait_for_exam(radflow, first, "completed")
    wait_for_exam(radflow, second, "discontinued")
    started, completed = history(radflow, first)[1:]
    assert (started["data"]["performed_station_ae"], started["data"]["modality"]) == ("DVT", "DX")
    assert started["data"]["started_at"] == "2006-07-19T13:49:37"
    assert started["data"]["study_instance_uid"] == "1.2.826.1153309373.966.3"
    [series] = completed["data"]["series"]
    assert series["series_instance_uid"] == "1.2.826.670589.26.9999132.22.20060719.134912.1"
    assert series["protocol_name"] == "DEMO_Hand"
    assert [i["sop_instance_uid"] for i in series["instances"]] == [
        "1.2.826.670589.26.9999132.25.20060719.134942.1605.0",
        "1.2.826.670589.26.9999132.25.20060719.135059.1606.0",
    ]
    assert completed["data"]["ended_at"] == "2006-07-19T13:54:46"


def test_an_mpps_for_an_unknown_accession_is_queued_and_linked_to_an_exam_with_a_reason(
    radflow: Stack,
) -> None:
    typo, real, step = accession("TY"), accession("RL"), generate_uid()
    with mpps_scu(radflow.dicom_port, calling_ae="MR01") as scu:
        assert scu.create(in_progress(typo), step).status == 0x0000
        assert (
            scu.set(ended("COMPLETED", [series_item(generate_uid(), [generate_uid()])]), step).status
            == 0x0000
        )

    queue = radflow.get("/api/reconciliation/mpps").json()["items"]
    [entry] = [e for e in queue if e["sop_instance_uid"] == step]
    assert (entry["reason"], entry["claimed_accession"]) == (f"unknown accession {typo}", typo)
    assert (entry["status"], entry["calling_ae"], entry["series"], entry["instances"]) == (
        "COMPLETED",
        "MR01",
        1,
        1,
    )
    assert entry["linked"] is None
    listed = subprocess.run(
        [sys.executable, "-m", "api.cli", "reconcile", "list"],
        env=radflow.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert listed.returncode == 0, listed.stderr
    assert step in listed.stdout and f"unknown accession {typo}" in listed.stdout

    url = f"/api/reconciliation/mpps/{step}/link"
    place(radflow, real)
    assert radflow.post(url, json={"accession": real}).status_code == 422
    assert radflow.post(url, json={"accession": real, "reason": "  "}).status_code == 422
    unknown = radflow.post(url, json={"accession": accession("NO"), "reason": "typo"})
    assert unknown.status_code == 422 and "no order with accession" in unknown.json()["detail"]
    reason = "technologist mistyped the accession"
    linked = radflow.post(url, json={"accession": real, "reason": reason}, user="jsmith", roles=("technologist",))
    assert linked.status_code == 202, linked.text
    assert radflow.post(url, json={"accession": real, "reason": reason}).status_code == 409

    wait_for_exam(radflow, real, "completed")
    events = history(radflow, real)
    assert [e["type"] for e in events] == ["ExamOrdered", "ExamStarted", "ExamCompleted"]
    for event, message_id in zip(events[1:], linked.json()["message_ids"], strict=True):
        assert (event["actor"], event["source"]["kind"], event["source"]["control_id"]) == (
            "jsmith",
            "api",
            step,
        )
        assert event["source"]["message_id"] == message_id
        assert event["context"]["reason"] == reason
        assert event["context"]["mpps_calling_ae"] == "MR01"
    assert step not in {
        e["sop_instance_uid"] for e in radflow.get("/api/reconciliation/mpps").json()["items"]
    }
    everything = radflow.get("/api/reconciliation/mpps", include_linked="true").json()["items"]
    [done] = [e for e in everything if e["sop_instance_uid"] == step]
    assert (
        done["linked"]["accession"] == real
        and done["linked"]["reason"] == reason
        and done["linked"]["by"] == "jsmith"
    )


def test_an_mpps_that_came_before_its_order_is_linked_when_the_order_arrives(radflow: Stack) -> None:
    """The modality began before the HIS's order arrived: queued as unknown, then linked by
    radflow once the exam exists (same accession, same patient); a step for the same accession
    but another patient stays queued for a person."""
    early, other, step, stranger = accession("LO"), accession("LP"), generate_uid(), generate_uid()
    with mpps_scu(radflow.dicom_port, calling_ae="CT02") as scu:
        assert scu.create(in_progress(early, patient_id="MRN1"), step).status == 0x0000
        assert scu.set(ended("COMPLETED", []), step).status == 0x0000
        assert scu.create(in_progress(other, patient_id="SOMEONE-ELSE"), stranger).status == 0x0000
    queued = {e["sop_instance_uid"] for e in radflow.get("/api/reconciliation/mpps").json()["items"]}
    assert {step, stranger} <= queued

    place(radflow, early)  # patient MRN1, as the step said
    place(radflow, other)
    wait_for_exam(radflow, early, "completed", timeout=30)
    started = [e for e in history(radflow, early) if e["type"] == "ExamStarted"][0]
    assert started["actor"] == "radflow" and "arrived after" in started["context"]["reason"]
    wait_for_exam(radflow, other, "ordered")
    remaining = {e["sop_instance_uid"] for e in radflow.get("/api/reconciliation/mpps").json()["items"]}
    assert stranger in remaining and step not in remaining


def test_an_acknowledged_mpps_is_delivered_after_the_listener_is_killed_before_relaying_it(
    tmp_path: Path, temporal_address: str
) -> None:
    """Invariant 1 for DICOM: success is sent only once the row is durable, so a listener killed
    with SIGKILL before its relay reached Temporal loses nothing."""
    stack = make_stack(tmp_path, temporal_address)
    stack.env["RADFLOW_TEMPORAL_ADDRESS"] = f"127.0.0.1:{free_port()}"  # the relay can reach nothing
    acc, step = accession("KL"), generate_uid()
    try:
        stack.start("listen")
        stack.wait_for_port(stack.mllp_port)
        stack.wait_for_port(stack.dicom_port)
        place(stack, acc)
        with mpps_scu(stack.dicom_port) as scu:
            assert scu.create(in_progress(acc), step).status == 0x0000
            assert scu.set(ended("COMPLETED"), step).status == 0x0000
        stack.stop("listen", kill=True)
        assert [r["relayed_at"] for r in mpps_rows(stack, step)] == [None, None]

        stack.env["RADFLOW_TEMPORAL_ADDRESS"] = temporal_address
        for part in ("worker", "listen", "api"):
            stack.start(part)
        stack.wait_for_port(stack.http_port)
        wait_for_exam(stack, acc, "completed")
        assert [e["type"] for e in history(stack, acc)] == ["ExamOrdered", "ExamStarted", "ExamCompleted"]
    finally:
        stack.stop_all()
