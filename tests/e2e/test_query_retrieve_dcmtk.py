"""Query/Retrieve as DCMTK sees it: `findscu`, `movescu` and `getscu` (Patient Root and Study Root)
against radflow's Q/R SCP serving a PACS index built from stored events, and a DCMTK `storescp`
as the C-MOVE destination. Every DCMTK run goes once with Nagle on (Debian's default) and once
with `TCP_NODELAY=1` (the fast peer that would bring out pynetdicom #875)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from adapters.dicom_config import DicomConfig, Peer
from adapters.event_store import open_event_store
from adapters.settings import Settings
from adapters.sql import Database
from adapters.storage_log import StorageLog
from interfaces.dicom.query_retrieve import query_retrieve_service
from interfaces.dicom.server import start_dicom_server
from tests.conftest import Stack, free_port
from tests.dicom_builders import StudySpec
from tests.qr_pacs import SeriesSpec, StoredStudy, build_pacs_index, dataset_bytes, store_study

pytestmark = pytest.mark.skipif(shutil.which("findscu") is None, reason="DCMTK is not installed")

NODELAY = [pytest.param(False, id="nagle"), pytest.param(True, id="nodelay")]
PATIENT = "DCMTK-P1"


@dataclass
class Pacs:
    settings: Settings
    db: Database
    studies: list[StoredStudy]  # two of PATIENT (CT 3+2, MR 1), one of another, one of 40


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    folder = tmp_path_factory.mktemp("qr-dcmtk")
    settings = Settings(data_dir=folder / "var", database_url="")
    store = open_event_store(settings)
    db = Database.for_file(settings, settings.projections_sqlite_path)
    studies = [
        store_study(store, folder, StudySpec("DA1", PATIENT, "DOE^JANE"), [SeriesSpec(3), SeriesSpec(2)]),
        store_study(
            store,
            folder,
            StudySpec("DA2", PATIENT, "DOE^JANE", study_date="20250301"),
            [SeriesSpec(1, modality="MR")],
        ),
        store_study(store, folder, StudySpec("DA3", "DCMTK-P2", "ROE^RICHARD"), [SeriesSpec(2)]),
        store_study(store, folder, StudySpec("DA4", "DCMTK-P3", "POE^EDGAR"), [SeriesSpec(40)]),
    ]
    build_pacs_index(store, db)
    try:
        yield Pacs(settings, db, studies)
    finally:
        db.close()
        store.close()


@dataclass
class Running:
    port: int
    storescp_dir: Path
    log: StorageLog  # associations and what each retrieve sent

    def retrieved(self, operation: str, study_uid: str) -> list[dict[str, object]]:
        return self.log.db.query(
            "SELECT r.*, a.calling_ae FROM dicom_retrievals r JOIN dicom_associations a "
            "ON a.id = r.association_id WHERE r.operation = ? AND r.study_instance_uid = ? ORDER BY r.id",
            (operation, study_uid),
        )


@pytest.fixture
def radflow(pacs: Pacs, tmp_path: Path) -> Iterator[Running]:
    """radflow's Q/R SCP, with a DCMTK storescp (bit-preserving) registered as STORESCP."""
    received = tmp_path / "storescp"
    received.mkdir()
    store_port = free_port()
    storescp = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "+B", "-od", str(received), str(store_port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    config = DicomConfig(peers={"STORESCP": Peer("STORESCP", "127.0.0.1", store_port)})
    port = free_port()
    log = StorageLog(Database.for_file(pacs.settings, tmp_path / "messages.sqlite"))
    log.create_schema()
    server = start_dicom_server(
        pacs.settings,
        [query_retrieve_service(pacs.settings, config, pacs.db, retrievals=log)],
        port=port,
        association_log=log,
    )
    try:
        Stack(tmp_path, {}, 0, 0, 0).wait_for_port(store_port)
        yield Running(port, received, log)
    finally:
        server.shutdown()
        log.db.close()
        storescp.terminate()
        storescp.wait(10)


def dcmtk(
    tool: str, radflow: Running, args: list[str], *, nodelay: bool, cwd: Path
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return subprocess.run(
        [tool, "-aet", "DCMTKSCU", "-aec", "RADFLOW", *args, "127.0.0.1", str(radflow.port)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
    )


def keys(**values: str) -> list[str]:
    return [
        arg for keyword, value in values.items() for arg in ("-k", f"{keyword}={value}" if value else keyword)
    ]


def findscu(radflow: Running, model: str, tmp: Path, *, nodelay: bool = True, **values: str) -> list[Dataset]:
    """The responses as findscu extracted them (rsp0001.dcm, ...)."""
    out = tmp / f"find-{time.monotonic_ns()}"
    out.mkdir()
    result = dcmtk(
        "findscu", radflow, [model, "-X", "-od", str(out), *keys(**values)], nodelay=nodelay, cwd=out
    )
    assert result.returncode == 0, result.stderr
    return [dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


@pytest.mark.parametrize("nodelay", NODELAY)
def test_findscu_patient_root_answers_at_every_level(
    radflow: Running, pacs: Pacs, tmp_path: Path, nodelay: bool
) -> None:
    ct = pacs.studies[0]
    patients = findscu(
        radflow,
        "-P",
        tmp_path,
        nodelay=nodelay,
        QueryRetrieveLevel="PATIENT",
        PatientID=PATIENT,
        PatientName="",
        NumberOfPatientRelatedStudies="",
        NumberOfPatientRelatedInstances="",
    )
    assert [
        (p.PatientID, p.PatientName, p.NumberOfPatientRelatedStudies, p.NumberOfPatientRelatedInstances)
        for p in patients
    ] == [(PATIENT, "DOE^JANE", 2, 6)]

    studies = findscu(
        radflow,
        "-P",
        tmp_path,
        nodelay=nodelay,
        QueryRetrieveLevel="STUDY",
        PatientID=PATIENT,
        StudyInstanceUID="",
    )
    assert {s.StudyInstanceUID for s in studies} == {ct.uid, pacs.studies[1].uid}

    series = findscu(
        radflow,
        "-P",
        tmp_path,
        nodelay=nodelay,
        QueryRetrieveLevel="SERIES",
        PatientID=PATIENT,
        StudyInstanceUID=ct.uid,
        SeriesInstanceUID="",
        NumberOfSeriesRelatedInstances="",
    )
    assert [(s.SeriesInstanceUID, s.NumberOfSeriesRelatedInstances) for s in series] == [
        (ct.series[0].series_instance_uid, 3),
        (ct.series[1].series_instance_uid, 2),
    ]

    images = findscu(
        radflow,
        "-P",
        tmp_path,
        nodelay=nodelay,
        QueryRetrieveLevel="IMAGE",
        PatientID=PATIENT,
        StudyInstanceUID=ct.uid,
        SeriesInstanceUID=ct.series[1].series_instance_uid,
        SOPInstanceUID="",
    )
    assert {i.SOPInstanceUID for i in images} == {
        sop for sop, path in ct.files.items() if path.parent.name == ct.series[1].series_instance_uid
    }


@pytest.mark.parametrize("nodelay", NODELAY)
def test_findscu_study_root_answers_at_every_level(
    radflow: Running, pacs: Pacs, tmp_path: Path, nodelay: bool
) -> None:
    ct = pacs.studies[0]
    studies = findscu(
        radflow,
        "-S",
        tmp_path,
        nodelay=nodelay,
        QueryRetrieveLevel="STUDY",
        PatientID=PATIENT,
        StudyInstanceUID="",
        ModalitiesInStudy="",
        NumberOfStudyRelatedInstances="",
        StudyDate="",
    )
    assert {(s.StudyInstanceUID, s.ModalitiesInStudy, s.NumberOfStudyRelatedInstances) for s in studies} == {
        (ct.uid, "CT", 5),
        (pacs.studies[1].uid, "MR", 1),
    }
    assert all(s.RetrieveAETitle == "RADFLOW" for s in studies)

    series = findscu(
        radflow,
        "-S",
        tmp_path,
        nodelay=nodelay,
        QueryRetrieveLevel="SERIES",
        StudyInstanceUID=ct.uid,
        SeriesInstanceUID="",
        Modality="",
    )
    assert [s.SeriesInstanceUID for s in series] == [s.series_instance_uid for s in ct.series]

    images = findscu(
        radflow,
        "-S",
        tmp_path,
        nodelay=nodelay,
        QueryRetrieveLevel="IMAGE",
        StudyInstanceUID=ct.uid,
        SeriesInstanceUID=ct.series[0].series_instance_uid,
        SOPInstanceUID="",
        InstanceNumber="",
    )
    assert [i.InstanceNumber for i in images] == [1, 2, 3]


def test_findscu_hears_why_a_query_without_the_study_uid_is_refused(radflow: Running, tmp_path: Path) -> None:
    result = dcmtk(
        "findscu",
        radflow,
        ["-S", "-d", *keys(QueryRetrieveLevel="SERIES", SeriesInstanceUID="")],
        nodelay=True,
        cwd=tmp_path,
    )

    assert "0xa900" in result.stderr, result.stderr
    assert "StudyInstanceUID is required" in result.stderr


def received_files(folder: Path) -> dict[str, Path]:
    """The files storescp / getscu wrote, by the SOP Instance UID in their meta group."""
    found = {}
    for path in folder.iterdir():
        if path.is_file() and not path.name.startswith("."):
            try:
                meta = dcmread(path, stop_before_pixels=True).file_meta
            except Exception:  # still being written
                continue
            found[str(meta.MediaStorageSOPInstanceUID)] = path
    return found


@pytest.mark.parametrize("nodelay", NODELAY)
@pytest.mark.parametrize("model", ["-P", "-S"])
def test_movescu_sends_a_study_to_storescp_byte_identical(
    radflow: Running, pacs: Pacs, tmp_path: Path, nodelay: bool, model: str
) -> None:
    ct = pacs.studies[0]
    above = {"PatientID": PATIENT} if model == "-P" else {}

    result = dcmtk(
        "movescu",
        radflow,
        [model, "-aem", "STORESCP", *keys(QueryRetrieveLevel="STUDY", StudyInstanceUID=ct.uid, **above)],
        nodelay=nodelay,
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    wait_for_files(radflow.storescp_dir, len(ct.files))
    received = received_files(radflow.storescp_dir)
    assert set(received) == set(ct.files)
    for sop, path in ct.files.items():
        assert dataset_bytes(received[sop]) == dataset_bytes(path)
    # the audit knows what left the PACS, on the association that asked for it
    sent = radflow.retrieved("c-move", ct.uid)
    assert {r["sop_instance_uid"] for r in sent} == set(ct.files)
    assert {(r["destination"], r["outcome"], r["calling_ae"]) for r in sent} == {
        ("STORESCP", "sent", "DCMTKSCU")
    }


def test_movescu_to_an_unknown_destination_hears_a801(radflow: Running, pacs: Pacs, tmp_path: Path) -> None:
    result = dcmtk(
        "movescu",
        radflow,
        [
            "-S",
            "-d",
            "-aem",
            "NOWHERE",
            *keys(QueryRetrieveLevel="STUDY", StudyInstanceUID=pacs.studies[1].uid),
        ],
        nodelay=True,
        cwd=tmp_path,
    )

    assert re.search(r"0xa801", result.stderr.lower()), result.stderr
    assert received_files(radflow.storescp_dir) == {}


@pytest.mark.parametrize("nodelay", NODELAY)
def test_movescu_of_forty_instances_to_storescp(
    radflow: Running, pacs: Pacs, tmp_path: Path, nodelay: bool
) -> None:
    big = pacs.studies[3]
    started = time.perf_counter()
    result = dcmtk(
        "movescu",
        radflow,
        ["-S", "-aem", "STORESCP", *keys(QueryRetrieveLevel="STUDY", StudyInstanceUID=big.uid)],
        nodelay=nodelay,
        cwd=tmp_path,
    )
    elapsed = time.perf_counter() - started

    assert result.returncode == 0, result.stderr
    wait_for_files(radflow.storescp_dir, 40)
    assert set(received_files(radflow.storescp_dir)) == set(big.files)
    print(f"\nmovescu 40 instances ({'TCP_NODELAY=1' if nodelay else 'Nagle'}): {elapsed * 1000:.0f} ms")
    assert elapsed < 10


@pytest.mark.parametrize("nodelay", NODELAY)
@pytest.mark.parametrize("model", ["-P", "-S"])
def test_getscu_receives_a_study_on_its_own_association(
    radflow: Running, pacs: Pacs, tmp_path: Path, nodelay: bool, model: str
) -> None:
    ct = pacs.studies[0]
    above = {"PatientID": PATIENT} if model == "-P" else {}
    out = tmp_path / "get"
    out.mkdir()

    result = dcmtk(
        "getscu",
        radflow,
        [model, "+B", "-od", str(out), *keys(QueryRetrieveLevel="STUDY", StudyInstanceUID=ct.uid, **above)],
        nodelay=nodelay,
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    received = received_files(out)
    assert set(received) == set(ct.files)
    for sop, path in ct.files.items():
        assert dataset_bytes(received[sop]) == dataset_bytes(path)
    sent = radflow.retrieved("c-get", ct.uid)
    assert {r["sop_instance_uid"] for r in sent} == set(ct.files)
    assert {(r["destination"], r["outcome"]) for r in sent} == {("DCMTKSCU", "sent")}


def test_a_stock_getscu_with_nagle_on_still_receives_forty_instances_fast(
    radflow: Running, pacs: Pacs, tmp_path: Path
) -> None:
    """getscu without TCP_NODELAY writes each C-STORE response in two pieces and holds the
    second until the first is acknowledged: with a delayed ACK that was ~45 ms per instance
    (1.9 s for these 40). radflow acknowledges at once (TCP_QUICKACK before every read)."""
    big = pacs.studies[3]
    out = tmp_path / "get"
    out.mkdir()
    started = time.perf_counter()
    result = dcmtk(
        "getscu",
        radflow,
        ["-S", "-od", str(out), *keys(QueryRetrieveLevel="STUDY", StudyInstanceUID=big.uid)],
        nodelay=False,
        cwd=tmp_path,
    )
    elapsed = time.perf_counter() - started

    assert result.returncode == 0, result.stderr
    assert set(received_files(out)) == set(big.files)
    assert elapsed < 40 * 0.040 * 0.5, f"40 C-GET stores took {elapsed:.2f} s: delayed ACKs are back"


def wait_for_files(folder: Path, count: int, timeout: float = 10.0) -> None:
    """storescp may still be writing the last file when movescu has its final response."""
    deadline = time.monotonic() + timeout
    while len(received_files(folder)) < count and time.monotonic() < deadline:
        time.sleep(0.02)
