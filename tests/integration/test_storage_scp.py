"""The Storage SCP over real associations (pynetdicom SCU -> radflow's AE on a free port) with the
storage log on SQLite and on PostgreSQL: what is durable when success arrives, the duplicate
policies, and how batches decide which exam a study belongs to. No Temporal: batches wait in
the outbox, which is what these tests read."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid
from pynetdicom import AE

from adapters.message_log import MessageLog
from adapters.settings import Settings
from adapters.sql import Database
from adapters.storage_log import StorageLog
from interfaces.dicom.mpps import AlreadyLinked, NotQueued, UnknownAccession
from interfaces.dicom.server import start_dicom_server
from interfaces.dicom.storage import Flusher, link_study, storage_service
from tests.dicom_builders import StudySpec, ct_image
from tests.dicom_scu import associate
from tests.integration.builders import orm, record


@dataclass
class Storage:
    settings: Settings
    hl7: MessageLog
    log: StorageLog
    port: int

    def order(self, accession: str, patient_id: str = "P1") -> None:
        assert (
            record(self.hl7, orm(accession, "NW", f"O-{accession}", patient_id=patient_id)).status
            == "accepted"
        )

    def cancel(self, accession: str) -> None:
        assert record(self.hl7, orm(accession, "CA", f"CA-{accession}")).status == "accepted"

    def send(self, *datasets: Dataset, calling_ae: str = "CT01") -> list[int]:
        """One association: the statuses, in order; released, so the batch is made."""
        ae = AE(ae_title=calling_ae)
        ae.add_requested_context(CTImageStorage)
        assoc = associate(ae, self.port)
        assert assoc.is_established
        try:
            statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
        finally:
            assoc.release()
        # the batch is made by the SCP after its A-RELEASE-RP went out: wait for it
        deadline = time.monotonic() + 10
        uids = [str(ds.SOPInstanceUID) for ds in datasets]
        marks = ", ".join("?" for _ in uids)
        unbatched = f"SELECT COUNT(*) AS n FROM dicom_instances WHERE batch_id IS NULL AND sop_instance_uid IN ({marks})"
        while self.log.db.query(unbatched, uids)[0]["n"]:
            assert time.monotonic() < deadline, "instances were not batched after the association ended"
            time.sleep(0.02)
        return statuses

    def batches(self, study_uid: str) -> list[dict[str, Any]]:
        rows = self.log.db.query(
            "SELECT * FROM dicom_batches WHERE study_instance_uid = ? ORDER BY id", (study_uid,)
        )
        for row in rows:
            row["commands"] = json.loads(row["commands"])
        return rows

    def queued(self, study_uid: str) -> dict[str, Any] | None:
        return next((r for r in self.log.reconciliation(True) if r["study_instance_uid"] == study_uid), None)


def _storage(url: str, data_dir: Path, duplicates: str) -> Iterator[Storage]:
    settings = Settings(data_dir=data_dir, database_url=url, dicom_duplicates=duplicates)  # type: ignore[arg-type]
    db = Database.for_file(settings, settings.messages_sqlite_path)
    log = StorageLog(db)
    log.create_schema()
    flusher = Flusher(log, on_batched=lambda: None)
    server = start_dicom_server(
        settings, [storage_service(settings, log, flusher)], port=0, association_log=log
    )
    try:
        yield Storage(settings, MessageLog(db), log, server.server_address[1])
    finally:
        server.shutdown()
        db.close()


BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="module", params=BACKENDS)
def storage(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Storage]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    yield from _storage(url, tmp_path_factory.mktemp("storage"), "keep")


def accession() -> str:
    return f"ST{generate_uid()[-10:]}"


def test_success_means_the_file_and_its_row_are_there(storage: Storage) -> None:
    study = StudySpec(accession())
    image = ct_image(study, generate_uid(), 1)
    assert storage.send(image) == [0x0000]
    row = storage.log.existing(image.SOPInstanceUID)
    assert row is not None and Path(row["path"]).stat().st_size == row["size"]
    assert row["transfer_syntax"] and row["calling_ae"] == "CT01"


def test_an_ordered_accession_of_the_same_patient_goes_to_its_exam_in_one_batch(storage: Storage) -> None:
    acc = accession()
    storage.order(acc, patient_id="P7")
    study = StudySpec(acc, patient_id="P7")
    series = generate_uid()
    assert storage.send(*(ct_image(study, series, n) for n in range(1, 4))) == [0] * 3
    [batch] = storage.batches(study.study_instance_uid)
    [entry] = batch["commands"]
    assert entry["workflow_id"] == f"exam-{acc}" and batch["instances"] == 3
    command = entry["command"]
    assert command["kind"] == "store_instances" and command["accession"] == acc
    assert [len(s["instances"]) for s in command["series"]] == [3]
    assert command["provenance"]["source"]["message_id"] == f"dicom-batch:{batch['id']}"
    assert storage.queued(study.study_instance_uid) is None


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("none", "accession {acc} was never ordered"),
        ("cancelled", "exam {acc} was cancelled"),
        ("other patient", "patient ID mismatch: exam {acc} is for P1, the images for P9"),
        ("no accession", "no accession number, and no exam has this Study Instance UID"),
    ],
)
def test_studies_no_exam_can_take_are_kept_and_queued_with_the_reason(
    storage: Storage, setup: str, reason: str
) -> None:
    acc = accession()
    if setup in ("cancelled", "other patient"):
        storage.order(acc)
    if setup == "cancelled":
        storage.cancel(acc)
    study = StudySpec("" if setup == "no accession" else acc, patient_id="P9")
    assert storage.send(ct_image(study, generate_uid(), 1)) == [0x0000]
    entry = storage.queued(study.study_instance_uid)
    assert entry is not None and entry["queued_reason"] == reason.format(acc=acc)
    [batch] = storage.batches(study.study_instance_uid)
    assert batch["commands"][0]["workflow_id"] == f"study-{study.study_instance_uid}"


def test_a_queued_study_is_linked_with_a_reason_and_later_batches_follow_it(storage: Storage) -> None:
    acc = accession()
    study = StudySpec(acc, patient_id="P3")
    series = generate_uid()
    assert storage.send(ct_image(study, series, 1)) == [0x0000]
    with pytest.raises(UnknownAccession):
        link_study(storage.log, study.study_instance_uid, acc, "late order", "jsmith")
    storage.order(acc, patient_id="P3")
    link_study(storage.log, study.study_instance_uid, acc, "late order", "jsmith")
    with pytest.raises(AlreadyLinked):
        link_study(storage.log, study.study_instance_uid, acc, "again", "jsmith")
    with pytest.raises(NotQueued):
        link_study(storage.log, generate_uid(), acc, "no such study", "jsmith")
    assert storage.send(ct_image(study, series, 2)) == [0x0000]
    link_batch, later = storage.batches(study.study_instance_uid)[1:]
    assert link_batch["commands"][0]["command"]["kind"] == "link_study"
    assert link_batch["commands"][0]["command"]["provenance"]["actor"] == "jsmith"
    assert later["commands"][0]["workflow_id"] == f"exam-{acc}"


@pytest.mark.parametrize(
    ("policy", "second_status", "rows_path_changes"),
    [("keep", 0x0000, False), ("replace", 0x0000, True), ("reject", 0x0111, False)],
)
def test_duplicate_policies(tmp_path: Path, policy: str, second_status: int, rows_path_changes: bool) -> None:
    # the policy is decided before any SQL: one backend is enough
    for storage in _storage("", tmp_path, policy):
        study = StudySpec(accession())
        image = ct_image(study, generate_uid(), 1)
        assert storage.send(image) == [0x0000]
        first = storage.log.existing(image.SOPInstanceUID)
        image.SeriesDescription = "resent with a correction"
        assert storage.send(image) == [second_status]
        second = storage.log.existing(image.SOPInstanceUID)
        assert first is not None and second is not None
        assert (second["received_at"] != first["received_at"]) is rows_path_changes
        if policy == "reject":
            failures = storage.log.failures()
            assert failures[0]["status"] == 0x0111 and "already stored" in failures[0]["reason"]
