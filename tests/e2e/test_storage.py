"""Storage SCP end to end: DCMTK's storescu as the modality, radflow's processes (worker,
listen, api) as subprocesses; what radflow holds is read from its files, its logs and its API.

The stack is shared by the module; every test uses its own accessions and UIDs.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config

from tests.conftest import Stack, running_stack
from tests.dicom_builders import StudySpec, ct_image, write_series
from tests.dicom_scu import associate
from tests.e2e.mllp import exchange, history_types, order, parse_ack, wait_for_exam


@pytest.fixture(scope="module")
def radflow(tmp_path_factory: pytest.TempPathFactory, temporal_address: str) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("storage"), temporal_address) as stack:
        yield stack


def accession(tag: str) -> str:
    return f"{tag}{uuid.uuid4().hex[:8].upper()}"


def place(stack: Stack, acc: str, patient_id: str = "MRN1") -> None:
    ack = parse_ack(exchange(stack.mllp_port, order(acc, f"O-{acc}", patient_id=patient_id).encode()))
    assert ack.code == "AA", ack.raw


def storescu(
    stack: Stack, files: list[Path], *, nodelay: bool = True, aet: str = "STORESCU"
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return subprocess.run(
        ["storescu", "-aet", aet, "-aec", "RADFLOW", "127.0.0.1", str(stack.dicom_port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def query(stack: Stack, database: str, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    path = stack.data_dir / database
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql, params).fetchall()]


def indexed(stack: Stack, study_uid: str) -> int:
    try:
        rows = query(
            stack,
            "projections.sqlite",
            "SELECT instance_count FROM pacs_studies WHERE study_instance_uid = ?",
            (study_uid,),
        )
    except sqlite3.OperationalError:
        return 0
    return int(rows[0]["instance_count"]) if rows else 0


def dataset_bytes(path: Path) -> bytes:
    """A Part-10 file's data set as encoded: what follows the preamble and the meta group."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM", path
    # (0002,0000) UL, explicit VR little endian: tag 4, VR 2, length 2, value 4
    group_length = struct.unpack("<I", data[140:144])[0]
    return data[144 + group_length :]


def test_an_ordered_exams_series_is_stored_byte_exact_indexed_and_attached_once_per_batch(
    radflow: Stack, tmp_path: Path
) -> None:
    acc = accession("ST")
    place(radflow, acc)
    wait_for_exam(radflow, acc)
    study = StudySpec(acc)
    files = write_series(tmp_path / "a", study, 3) + write_series(tmp_path / "b", study, 2)

    result = storescu(radflow, files)
    assert result.returncode == 0, result.stderr

    radflow.wait_until(lambda: indexed(radflow, study.study_instance_uid) == 5)
    for source in files:
        sop = source.stem
        rows = query(
            radflow, "messages.sqlite", "SELECT * FROM dicom_instances WHERE sop_instance_uid = ?", (sop,)
        )
        assert len(rows) == 1
        stored = Path(rows[0]["path"])
        assert stored.parent.parent.name == study.study_instance_uid
        assert stored.name == f"{sop}.dcm"
        assert dataset_bytes(stored) == dataset_bytes(source)
    # one association, one study: one batch and one ImagesStored, not five
    radflow.wait_until(lambda: "ImagesStored" in history_types(radflow, acc))
    assert history_types(radflow, acc).count("ImagesStored") == 1
    batches = query(
        radflow,
        "messages.sqlite",
        "SELECT * FROM dicom_batches WHERE study_instance_uid = ?",
        (study.study_instance_uid,),
    )
    assert [(b["instances"], b["accession"]) for b in batches] == [(5, acc)]
    studies = radflow.get("/api/studies", patient_id="MRN1").json()["studies"]
    mine = [s for s in studies if s["study_instance_uid"] == study.study_instance_uid]
    assert mine and mine[0]["linked_accession"] == acc and mine[0]["series_count"] == 2
    associations = radflow.get("/api/dicom/associations").json()["associations"]
    assert any(
        a["calling_ae"] == "STORESCU" and a["exchanged"].get("C-STORE-RQ") == 5 and a["status"] == "released"
        for a in associations
    )


def test_a_study_for_an_accession_nobody_ordered_waits_for_reconciliation_and_a_link_attaches_it(
    radflow: Stack, tmp_path: Path
) -> None:
    typo, acc = accession("TY"), accession("RC")
    study = StudySpec(typo, patient_id="MRN7")
    assert storescu(radflow, write_series(tmp_path, study, 2)).returncode == 0
    radflow.wait_until(lambda: indexed(radflow, study.study_instance_uid) == 2)

    def queued() -> dict[str, Any] | None:
        items = radflow.get("/api/reconciliation/studies").json()["items"]
        return next((i for i in items if i["study_instance_uid"] == study.study_instance_uid), None)

    entry = radflow.wait_until(queued)
    assert entry["reason"] == f"accession {typo} was never ordered"
    assert entry["instances"] == 2 and entry["patient"]["id"] == "MRN7"

    refused = radflow.post(
        f"/api/reconciliation/studies/{study.study_instance_uid}/link",
        json={"accession": acc, "reason": "typo at the modality"},
    )
    assert refused.status_code == 422, refused.text  # no such order yet

    place(radflow, acc, patient_id="MRN7")
    linked = radflow.post(
        f"/api/reconciliation/studies/{study.study_instance_uid}/link",
        json={"accession": acc, "reason": "typo at the modality"},
        user="jsmith",
        roles=("technologist",),
    )
    assert linked.status_code == 202, linked.text
    radflow.wait_until(lambda: "ImagesStored" in history_types(radflow, acc))
    radflow.wait_until(
        lambda: (
            query(
                radflow,
                "projections.sqlite",
                "SELECT linked_accession FROM pacs_studies WHERE study_instance_uid = ?",
                (study.study_instance_uid,),
            )[0]["linked_accession"]
            == acc
        )
    )
    again = radflow.post(
        f"/api/reconciliation/studies/{study.study_instance_uid}/link",
        json={"accession": acc, "reason": "twice"},
    )
    assert again.status_code == 409
    assert queued() is None  # linked studies leave the queue


def test_a_study_that_came_before_its_order_is_linked_when_the_order_arrives(
    radflow: Stack, tmp_path: Path
) -> None:
    """The HIS sent the order late: once its exam exists, radflow links the queued study itself
    (same accession, same patient), with the reason in the history; nobody has to reconcile."""
    acc = accession("LO")
    study = StudySpec(acc, patient_id="MRN8")
    assert storescu(radflow, write_series(tmp_path, study, 2)).returncode == 0
    radflow.wait_until(
        lambda: any(
            i["study_instance_uid"] == study.study_instance_uid
            for i in radflow.get("/api/reconciliation/studies").json()["items"]
        )
    )
    place(radflow, acc, patient_id="MRN8")
    radflow.wait_until(lambda: "ImagesStored" in history_types(radflow, acc), timeout=30)
    stored = [
        e for e in radflow.get(f"/api/exams/{acc}/history").json()["events"] if e["type"] == "ImagesStored"
    ]
    assert stored[0]["actor"] == "radflow" and "arrived after" in stored[0]["context"]["reason"]
    assert not [
        i
        for i in radflow.get("/api/reconciliation/studies").json()["items"]
        if i["study_instance_uid"] == study.study_instance_uid
    ]


def test_a_patient_id_mismatch_is_kept_and_queued_not_attached(radflow: Stack, tmp_path: Path) -> None:
    acc = accession("PM")
    place(radflow, acc, patient_id="MRN1")
    study = StudySpec(acc, patient_id="OTHER9")
    assert storescu(radflow, write_series(tmp_path, study, 1)).returncode == 0
    radflow.wait_until(lambda: indexed(radflow, study.study_instance_uid) == 1)
    items = radflow.wait_until(
        lambda: [
            i
            for i in radflow.get("/api/reconciliation/studies").json()["items"]
            if i["study_instance_uid"] == study.study_instance_uid
        ]
    )
    assert items[0]["reason"] == f"patient ID mismatch: exam {acc} is for MRN1, the images for OTHER9"
    assert "ImagesStored" not in history_types(radflow, acc)


def test_bad_instances_get_a_failure_status_with_a_reason_and_the_ae_keeps_serving(
    radflow: Stack, tmp_path: Path
) -> None:
    study = StudySpec(accession("BAD"))
    no_study = ct_image(study, generate_uid(), 1)
    del no_study.StudyInstanceUID
    traversal = ct_image(study, "../../etc", 3)
    # a file whose meta names another instance than its data set: the request (built from the
    # meta by pynetdicom's chunked sender) and the payload disagree, as with a confused modality
    confused = ct_image(study, generate_uid(), 2)
    confused.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    confused_path = tmp_path / "confused.dcm"
    confused.preamble = b"\0" * 128
    confused.save_as(confused_path, enforce_file_format=False)

    ae = AE(ae_title="BADSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = associate(ae, radflow.dicom_port)
    assert assoc.is_established
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    try:
        status = assoc.send_c_store(no_study)
        assert status.Status == 0xC000 and "StudyInstanceUID is missing" in status.ErrorComment
        assert assoc.send_c_store(traversal).Status == 0xC000
        _config.STORE_SEND_CHUNKED_DATASET = True
        assert assoc.send_c_store(confused_path).Status == 0xA900
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        assoc.release()
    failures = radflow.get("/api/dicom/store-failures").json()["failures"]
    assert {f["status"] for f in failures if f["calling_ae"] == "BADSCU"} == {0xC000, 0xA900}
    assert all(f["reason"] for f in failures)
    assert not [p for p in radflow.data_dir.rglob("*") if p.name == "etc"]
    # the AE still stores good instances
    assoc = associate(ae, radflow.dicom_port)
    try:
        assert assoc.send_c_store(ct_image(study, generate_uid(), 4)).Status == 0x0000
    finally:
        assoc.release()


def test_duplicates_are_kept_once_by_default(radflow: Stack, tmp_path: Path) -> None:
    acc = accession("DU")
    place(radflow, acc)
    study = StudySpec(acc)
    files = write_series(tmp_path, study, 2)
    assert storescu(radflow, files).returncode == 0
    assert storescu(radflow, files[:1]).returncode == 0
    radflow.wait_until(lambda: indexed(radflow, study.study_instance_uid) == 2)
    rows = query(
        radflow,
        "messages.sqlite",
        "SELECT COUNT(*) AS n FROM dicom_instances WHERE study_instance_uid = ?",
        (study.study_instance_uid,),
    )
    assert rows[0]["n"] == 2


def test_a_stock_dcmtk_client_with_nagle_on_still_stores_fast(radflow: Stack, tmp_path: Path) -> None:
    """radflow sets TCP_NODELAY on the accepted socket, so the client's Nagle has no delayed
    ACK to wait for: with both ends on Nagle each C-STORE costs ~88 ms on loopback."""
    study = StudySpec(accession("NG"))
    files = write_series(tmp_path, study, 40)
    started = time.monotonic()
    result = storescu(radflow, files, nodelay=False)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    radflow.wait_until(lambda: indexed(radflow, study.study_instance_uid) == 40)
    assert elapsed < 40 * 0.088 * 0.75, f"40 stores took {elapsed:.2f} s: Nagle is back"


def test_a_monitor_polling_healthz_does_not_use_up_the_aes_associations(
    radflow: Stack, tmp_path: Path
) -> None:
    """The DICOM part of /healthz is a C-ECHO: a bare TCP probe held an association slot for
    pynetdicom's 30 s ACSE timeout, and 40 probes locked modalities out (A-ASSOCIATE-RJ)."""
    for _ in range(40):
        health = radflow.get("/healthz").json()
        assert health["parts"]["dicom"]["ok"], health
    result = storescu(radflow, write_series(tmp_path, StudySpec(accession("HZ")), 1))
    assert result.returncode == 0, result.stderr
