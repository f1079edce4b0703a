"""The IHE Scheduled Workflow end to end, as a department runs it: the HIS orders over MLLP, the
modality finds the order in its worklist (DCMTK findscu), reports the step started (MPPS), sends
a series (DCMTK storescu), reports the step completed with the instances it made, asks for
storage commitment, and a workstation retrieves the study (DCMTK movescu to a DCMTK storescp).

radflow runs as its own processes (worker, listen, api); every answer is checked from the
peers' side and from radflow's API.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from tests.conftest import Stack, free_port, running_stack
from tests.dicom_builders import StudySpec, write_series
from tests.e2e.mllp import exchange, order, parse_ack, wait_for_exam
from tests.e2e.test_storage import dataset_bytes
from tests.integration.mpps_builders import ended, in_progress, mpps_scu, series_item

NODELAY = {**os.environ, "TCP_NODELAY": "1"}


@pytest.fixture(scope="module")
def storescp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A DCMTK storage SCP: the reading workstation C-MOVE sends to."""
    port, folder = free_port(), tmp_path_factory.mktemp("workstation")
    process = subprocess.Popen(
        ["storescp", "-aet", "WORKSTATION", "-od", str(folder), "+uf", str(port)],
        env=NODELAY,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port, folder
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module", params=[1, 3], ids=["one-dicom-process", "three-dicom-processes"])
def radflow(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    temporal_address: str,
    storescp: tuple[int, Path],
) -> Iterator[Stack]:
    """With three processes every association of the workflow lands on another one than the
    last (they take turns): the MPPS N-SET, the commitment and the C-MOVE each find what
    another process stored."""
    with running_stack(
        tmp_path_factory.mktemp("scheduled"),
        temporal_address,
        {
            "RADFLOW_DICOM_PEERS": f"WORKSTATION=127.0.0.1:{storescp[0]}",
            "RADFLOW_DICOM_PROCESSES": str(request.param),
        },
    ) as stack:
        yield stack


def worklist_item(stack: Stack, acc: str) -> dict[str, str]:
    """findscu -W for one accession; the answer's attributes as {tag: value}."""
    keys = ["AccessionNumber=" + acc, "StudyInstanceUID", "PatientID", "PatientName", "RequestedProcedureID"]
    keys += [
        "ScheduledProcedureStepSequence[0].Modality",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
    ]
    command = ["findscu", "-W", "-v", "-aet", "CT01", "-aec", "RADFLOW", "127.0.0.1", str(stack.dicom_port)]
    for key in keys:
        command += ["-k", key]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, env=NODELAY)
    assert done.returncode == 0, done.stderr
    answer = (done.stdout + done.stderr).split("Find Response: 1 (Pending)")[-1]
    values = {tag: value.strip(" \0") for tag, value in re.findall(r"\((\w{4},\w{4})\) \w\w \[([^\]]*)\]", answer)}
    assert values.get("0008,0050") == acc, done.stdout + done.stderr
    return values


def history(stack: Stack, acc: str) -> list[dict[str, Any]]:
    response = stack.get(f"/api/exams/{acc}/history")
    response.raise_for_status()
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def commit(port: int, instances: list[tuple[str, str]], timeout: float = 20) -> Dataset:
    """Storage commitment as the modality asks for it: N-ACTION, then wait on the same
    association for the N-EVENT-REPORT."""
    reports: list[Dataset] = []
    arrived = threading.Event()

    def on_report(event: Any) -> tuple[int, None]:
        reports.append(event.event_information)
        arrived.set()
        return 0x0000, None

    ae = AE(ae_title="CT01")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate(
        "127.0.0.1", port, ae_title="RADFLOW", evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    assert assoc.is_established
    try:
        request = Dataset()
        request.TransactionUID = generate_uid()
        request.ReferencedSOPSequence = []
        for sop_class, sop_instance in instances:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            request.ReferencedSOPSequence.append(item)
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
        assert status.Status == 0x0000
        assert arrived.wait(timeout), "no N-EVENT-REPORT on the association"
    finally:
        assoc.release()
    return reports[0]


def test_order_worklist_mpps_images_commitment_and_retrieval(
    radflow: Stack, storescp: tuple[int, Path], tmp_path: Path
) -> None:
    acc = f"SWF{uuid.uuid4().hex[:8].upper()}"
    ack = parse_ack(exchange(radflow.mllp_port, order(acc, f"O-{acc}", patient_id="MRN42").encode()))
    assert ack.code == "AA", ack.raw
    wait_for_exam(radflow, acc)

    # the modality's worklist query finds the order, with the study UID radflow assigned
    item = radflow.wait_until(lambda: _try(worklist_item, radflow, acc))
    study_uid = item["0020,000d"]
    assert item["0010,0020"] == "MRN42" and study_uid.startswith("2.25.")

    # MPPS IN PROGRESS, as the modality starts the acquisition
    step = generate_uid()
    with mpps_scu(radflow.dicom_port, calling_ae="CT01") as scu:
        assert scu.create(in_progress(acc, study_uid, patient_id="MRN42"), step).status == 0x0000
    wait_for_exam(radflow, acc, "in_progress")

    # the images, over one association, with the worklist's identifiers
    study = StudySpec(acc, patient_id="MRN42", study_instance_uid=study_uid)
    files = write_series(tmp_path / "series", study, 4)
    sent = subprocess.run(
        [
            "storescu",
            "-aet",
            "CT01",
            "-aec",
            "RADFLOW",
            "127.0.0.1",
            str(radflow.dicom_port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=NODELAY,
    )
    assert sent.returncode == 0, sent.stderr
    uids = [f.stem for f in files]
    series_uid = dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID

    # MPPS COMPLETED, naming the instances it made
    with mpps_scu(radflow.dicom_port, calling_ae="CT01") as scu:
        assert scu.set(ended("COMPLETED", [series_item(series_uid, uids)]), step).status == 0x0000
    wait_for_exam(radflow, acc, "completed")

    # storage commitment: every instance is safely held
    report = commit(radflow.dicom_port, [("1.2.840.10008.5.1.4.1.1.2", uid) for uid in uids])
    committed = {i.ReferencedSOPInstanceUID for i in report.ReferencedSOPSequence}
    assert committed == set(uids) and "FailedSOPSequence" not in report

    # the exam knows its images are complete; the PACS index holds the study, linked
    radflow.wait_until(lambda: "ImagesCompleted" in [e["type"] for e in history(radflow, acc)])
    studies = radflow.get("/api/studies", accession=acc).json()["studies"]
    assert [(s["study_instance_uid"], s["instance_count"], s["patient_id"]) for s in studies] == [
        (study_uid, 4, "MRN42")
    ]

    # a workstation pulls the study: DCMTK movescu to DCMTK storescp
    port, folder = storescp
    moved = subprocess.run(
        ["movescu", "-S", "-aet", "WORKSTATION", "-aec", "RADFLOW", "-aem", "WORKSTATION",
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
         "127.0.0.1", str(radflow.dicom_port)],
        capture_output=True, text=True, timeout=60, env=NODELAY,
    )  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    received = {p.name: p for p in folder.rglob("*") if p.is_file()}
    by_uid = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in received.values()}
    assert set(uids) <= set(by_uid)
    for source in files:
        assert dataset_bytes(by_uid[source.stem]) == dataset_bytes(source)


def _try(probe: Any, *args: Any) -> Any:
    try:
        return probe(*args)
    except AssertionError:
        time.sleep(0.1)
        return None
