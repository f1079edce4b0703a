"""Storage SCP (C-STORE, IHE RAD-8): every instance is written byte-exact as received and made
durable (file fsync'd, directory entry fsync'd, log row committed) before the success status.

The receive path does only that. Which exam a study belongs to is decided once per batch,
when the association ends (or, for a long association, when the flusher finds instances
waiting): one batch per study goes to a workflow, never one message per instance.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydicom._uid_dict import UID_dictionary
from pydicom.dataset import Dataset
from pynetdicom import AllStoragePresentationContexts, evt, register_uid, sop_class
from pynetdicom.service_class import StorageServiceClass

from adapters.message_log import utcnow
from adapters.settings import Settings
from adapters.storage_log import PREFIX, StorageLog, StorageRecords, StoredInstance
from domain.commands import Command, LinkStudy, StoreInstances, workflow_id_for
from domain.provenance import Provenance, Source
from interfaces.dicom.header import file_meta, read_header
from interfaces.dicom.mpps import AlreadyLinked, IllegalLink, NotQueued, UnknownAccession
from interfaces.dicom.server import DicomService, association_id
from interfaces.dicom.status import status

log = logging.getLogger("radflow.dicom.storage")

SUCCESS = 0x0000
DUPLICATE_SOP_INSTANCE = 0x0111
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
BATCH_LIMIT = 1000  # instances per batch event: a 5,000-slice CT still makes a handful
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")

# every transfer syntax pynetdicom knows is accepted (the files are kept as received, never
# decoded here): uncompressed, deflate, JPEG baseline/lossless, JPEG-LS, JPEG 2000, RLE and more

STUDY_KEYS = {
    "patient_id": "PatientID",
    "patient_name": "PatientName",
    "patient_birth_date": "PatientBirthDate",
    "patient_sex": "PatientSex",
    "accession_number": "AccessionNumber",
    "study_id": "StudyID",
    "study_date": "StudyDate",
    "study_time": "StudyTime",
    "study_description": "StudyDescription",
    "referring_physician": "ReferringPhysicianName",
}
SERIES_KEYS = {
    "modality": "Modality",
    "series_number": "SeriesNumber",
    "series_description": "SeriesDescription",
    "body_part": "BodyPartExamined",
}


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


HEADER_KEYWORDS = (
    "SOPInstanceUID",
    "SOPClassUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "InstanceNumber",
    *STUDY_KEYS.values(),
    *SERIES_KEYS.values(),
)


def _uid(header: dict[str, str], keyword: str) -> str:
    value = header[keyword]
    if not value:
        raise Refused(CANNOT_UNDERSTAND, f"{keyword} is missing")
    if len(value) > 64 or not _UID.fullmatch(value):
        raise Refused(CANNOT_UNDERSTAND, f"{keyword} is not a valid UID: {value[:70]!r}")
    return value


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
DURABLE_FOLDERS_KEPT = 4096
_durable_folders: set[Path] = set()  # series folders whose entries are known to be on disk


def durable_write(path: Path, data: bytes) -> None:
    """Write, fsync, rename into place, fsync the directory, so that a crash after this returns
    still finds the file under its name. The folders are made when the open finds them
    missing, not checked before every write (four system calls per instance); a series folder
    new to this process has its own entry and its study's made durable once."""
    folder = path.parent
    partial = folder / f".{path.name}.{threading.get_ident()}.partial"
    try:
        fd = os.open(partial, _NEW_FILE, 0o644)
    except FileNotFoundError:
        folder.mkdir(parents=True, exist_ok=True)
        _durable_folders.discard(folder)  # known once, but removed since: its entry is new
        fd = os.open(partial, _NEW_FILE, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, path)
    _fsync_directory(folder)
    if folder not in _durable_folders:
        # made by this write, by another association or by an earlier run that may have
        # stopped before its fsync: the study folder holds the series' entry, the root the study's
        _fsync_directory(folder.parent)
        _fsync_directory(folder.parent.parent)
        if len(_durable_folders) >= DURABLE_FOLDERS_KEPT:
            _durable_folders.clear()  # forgetting costs two fsyncs per series, once
        _durable_folders.add(folder)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_root(root: Path) -> None:
    """The storage folder, made at start with its entry on disk: durable_write makes the
    study and series folders below it durable, not the folder itself."""
    if not root.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        _fsync_directory(root.parent)


class StorageScp:
    def __init__(self, settings: Settings, storage_log: StorageLog) -> None:
        self.root = settings.dicom_storage_dir
        durable_root(self.root)
        self.policy = settings.dicom_duplicates
        self.log = storage_log

    def handle_store(self, event: Any) -> int | Dataset:
        requestor = event.assoc.requestor
        calling_ae = str(requestor.ae_title).strip()
        request = event.request
        sop_class = str(request.AffectedSOPClassUID or "")
        sop_instance = str(request.AffectedSOPInstanceUID or "")
        assoc_id = association_id(event.assoc)
        try:
            self.store(event, calling_ae, assoc_id)
        except Refused as refused:
            log.warning(
                "c-store refused",
                extra={
                    "calling_ae": calling_ae,
                    "sop_instance_uid": sop_instance,
                    "status": hex(refused.status),
                    "reason": refused.reason,
                },
            )
            self._record_failure(
                assoc_id, calling_ae, sop_class, sop_instance, refused.status, refused.reason
            )
            return status(refused.status, refused.reason)
        except Exception as error:  # the disk or the log failed: nothing was acknowledged
            log.exception("c-store failed", extra={"sop_instance_uid": sop_instance})
            reason = f"could not store: {type(error).__name__}: {str(error)[:200]}"
            self._record_failure(assoc_id, calling_ae, sop_class, sop_instance, OUT_OF_RESOURCES, reason)
            return status(OUT_OF_RESOURCES, reason)
        return SUCCESS

    def _record_failure(
        self, assoc_id: int, calling_ae: str, sop_class: str, sop_instance: str, status: int, reason: str
    ) -> None:
        try:
            self.log.record_failure(assoc_id, calling_ae, sop_class, sop_instance, status, reason)
        except Exception:  # the refusal still goes to the modality; the log says why it is missing
            log.exception("could not record a store failure")

    def store(self, event: Any, calling_ae: str, assoc_id: int) -> None:
        request = event.request
        transfer_syntax = str(event.context.transfer_syntax)
        stream = event.encoded_dataset(include_meta=False)
        try:
            header = read_header(stream, transfer_syntax, HEADER_KEYWORDS)
        except Exception as error:
            raise Refused(
                CANNOT_UNDERSTAND, f"dataset could not be decoded: {type(error).__name__}"
            ) from error
        sop_instance = _uid(header, "SOPInstanceUID")
        sop_class = _uid(header, "SOPClassUID")
        if sop_instance != str(request.AffectedSOPInstanceUID):
            raise Refused(
                DOES_NOT_MATCH_SOP_CLASS,
                f"SOP Instance UID {sop_instance} differs from the request's {request.AffectedSOPInstanceUID}",
            )
        if sop_class != str(request.AffectedSOPClassUID):
            raise Refused(
                DOES_NOT_MATCH_SOP_CLASS,
                f"SOP Class UID {sop_class} differs from the request's {request.AffectedSOPClassUID}",
            )
        study_uid = _uid(header, "StudyInstanceUID")
        series_uid = _uid(header, "SeriesInstanceUID")
        existing = self.log.existing(sop_instance)
        if existing is not None:
            if self.policy == "reject":
                raise Refused(
                    DUPLICATE_SOP_INSTANCE, f"SOP instance {sop_instance} is already stored (policy: reject)"
                )
            if self.policy == "keep" and Path(existing["path"]).exists():
                log.info("duplicate kept", extra={"sop_instance_uid": sop_instance, "calling_ae": calling_ae})
                return
        path = self.root / study_uid / series_uid / f"{sop_instance}.dcm"
        data = file_meta(sop_class, sop_instance, transfer_syntax, calling_ae) + stream
        durable_write(path, data)
        attributes = {
            "study": {key: header[keyword] for key, keyword in STUDY_KEYS.items()},
            "series": {key: header[keyword] for key, keyword in SERIES_KEYS.items()},
            "instance_number": header["InstanceNumber"],
        }
        self.log.record_instance(
            StoredInstance(
                sop_instance_uid=sop_instance,
                sop_class_uid=sop_class,
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                transfer_syntax=transfer_syntax,
                path=str(path),
                size=len(data),
                received_at=utcnow(),
                calling_ae=calling_ae,
                association_id=assoc_id,
                attributes=attributes,
            )
        )


# --- batches: from stored instances to workflows -----------------------------------------------

ExamForStudy = Callable[[str], str | None]  # Study Instance UID -> accession of the exam that owns it


def _provenance(batch_id: int, calling_ae: str, occurred_at: str, **extra: Any) -> Provenance:
    return Provenance(
        actor=calling_ae or "storage",
        source=Source(
            kind="dicom",
            application=calling_ae,
            control_id=f"batch-{batch_id}",
            message_id=f"{PREFIX}{batch_id}",
        ),
        occurred_at=occurred_at,
        extra=extra,
    )


def _entry(command: Command) -> dict[str, Any]:
    return {"workflow_id": workflow_id_for(command), "command": command.as_dict()}


def decide_link(
    records: StorageRecords, study_uid: str, study: dict[str, str], exam_for_study: ExamForStudy
) -> tuple[str, str]:
    """(accession, "") when the study belongs to an ordered exam of the same patient, else
    ("", why it waits for a person)."""
    claimed = study.get("accession_number", "")
    accession = claimed or (exam_for_study(study_uid) or "")
    if not accession:
        return "", "no accession number, and no exam has this Study Instance UID"
    state = records.order_state(accession)
    if state is None:
        return "", f"accession {accession} was never ordered"
    if state == "cancelled":
        return "", f"exam {accession} was cancelled"
    ordered_for = records.order_patient_id(accession) or ""
    images_for = study.get("patient_id", "")
    if ordered_for and images_for and ordered_for != images_for:
        return "", f"patient ID mismatch: exam {accession} is for {ordered_for}, the images for {images_for}"
    return accession, ""


def flush_batches(
    storage_log: StorageLog,
    *,
    association: int | None = None,
    older_than: str | None = None,
    exam_for_study: ExamForStudy = lambda _uid: None,
) -> list[int]:
    """Turn instances not yet batched into batch rows (one per study, at most BATCH_LIMIT
    instances each) with their command, in one transaction; returns the new batch ids."""
    created: list[int] = []
    with storage_log.transaction() as records:
        rows = storage_log.unbatched(records.cur, association, older_than)
        by_study: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_study.setdefault(row["study_instance_uid"], []).append(row)
        for study_uid, instances in by_study.items():
            for start in range(0, len(instances), BATCH_LIMIT):
                created.append(
                    _batch(records, study_uid, instances[start : start + BATCH_LIMIT], exam_for_study)
                )
    return created


def _batch(
    records: StorageRecords, study_uid: str, instances: list[dict[str, Any]], exam_for_study: ExamForStudy
) -> int:
    attributes = [json.loads(row["attributes"]) for row in instances]
    study: dict[str, str] = {}
    for item in attributes:  # the latest non-empty value of each attribute
        study.update({k: v for k, v in item.get("study", {}).items() if v})
    known = records.study(study_uid)
    first = instances[0]
    if known is None:
        accession, reason = decide_link(records, study_uid, study, exam_for_study)
        records.cur.execute(
            "INSERT INTO dicom_studies (study_instance_uid, accession, patient_id, claimed_accession, "
            "first_received_at, queued_reason, linked_how, linked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                study_uid,
                accession or None,
                study.get("patient_id", ""),
                study.get("accession_number", ""),
                first["received_at"],
                reason or None,
                "matched" if accession else None,
                utcnow() if accession else None,
            ),
        )
        if reason:
            log.warning(
                "study queued for reconciliation", extra={"study_instance_uid": study_uid, "reason": reason}
            )
    else:
        accession = known["accession"] or ""
    row = records.cur.execute(
        "INSERT INTO dicom_batches (received_at, study_instance_uid, accession, instances) VALUES (?, ?, ?, ?) RETURNING id",
        (first["received_at"], study_uid, accession or None, len(instances)),
    ).fetchone()
    assert row is not None
    batch_id = int(row["id"])
    series: dict[str, dict[str, Any]] = {}
    for instance, item in zip(instances, attributes, strict=True):
        entry = series.setdefault(
            instance["series_instance_uid"],
            {"series_instance_uid": instance["series_instance_uid"], **item.get("series", {}), "instances": []},
        )
        entry.update({k: v for k, v in item.get("series", {}).items() if v})
        entry["instances"].append(
            {
                "sop_instance_uid": instance["sop_instance_uid"],
                "sop_class_uid": instance["sop_class_uid"],
                "instance_number": item.get("instance_number", ""),
                "transfer_syntax": instance["transfer_syntax"],
                "size": int(instance["size"]),
                "path": instance["path"],
            }
        )
    calling_ae = first["calling_ae"]
    command = StoreInstances(
        provenance=_provenance(
            batch_id, calling_ae, first["received_at"], association_id=first["association_id"]
        ),
        study_instance_uid=study_uid,
        study=study,
        series=tuple(series.values()),
        accession=accession,
        calling_ae=calling_ae,
    )
    records.cur.execute(
        "UPDATE dicom_batches SET commands = ? WHERE id = ?", (json.dumps([_entry(command)]), batch_id)
    )
    uids = [i["sop_instance_uid"] for i in instances]
    for start in range(0, len(uids), 500):
        chunk = uids[start : start + 500]
        records.cur.execute(
            f"UPDATE dicom_instances SET batch_id = ? WHERE sop_instance_uid IN ({', '.join('?' for _ in chunk)})",
            (batch_id, *chunk),
        )
    return batch_id


class Flusher:
    """Batches what an ended association stored at once, and on a timer what long (or crashed)
    associations left behind, so that images reach their exam within seconds either way."""

    def __init__(
        self,
        storage_log: StorageLog,
        on_batched: Callable[[], None],
        exam_for_study: ExamForStudy = lambda _uid: None,
        interval_s: float = 5.0,
    ) -> None:
        self._log = storage_log
        self._on_batched = on_batched
        self._exam_for_study = exam_for_study
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="storage-flusher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def association_ended(self, assoc_id: int, exchanged: dict[str, int]) -> None:
        if exchanged.get("C-STORE-RQ"):
            self._flush(association=assoc_id)

    def _flush(self, **which: Any) -> None:
        try:
            created = flush_batches(self._log, exam_for_study=self._exam_for_study, **which)
        except Exception:  # retried by the timer; the instances are durable meanwhile
            log.exception("batching failed")
            return
        if created:
            log.info("batches created", extra={"batches": len(created), **which})
            self._on_batched()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            horizon = (datetime.now(UTC) - timedelta(seconds=self._interval)).isoformat(
                timespec="microseconds"
            )
            self._flush(older_than=horizon)


def storage_sop_classes() -> list[str]:
    """Every storage SOP class pynetdicom serves, plus the retired and trial image storage
    classes pydicom's dictionary names (old ultrasound and NM modalities still send them);
    those are registered with pynetdicom's storage service so C-STORE reaches our handler."""
    current = [str(context.abstract_syntax) for context in AllStoragePresentationContexts]
    known = set(current)
    older = []
    for uid, (name, kind, *_rest) in UID_dictionary.items():
        if kind != "SOP Class" or not uid.startswith(IMAGE_STORAGE_ROOT) or "Storage" not in name or uid in known:
            continue
        keyword = "Retired" + re.sub(r"\W", "", name.title())
        if keyword not in sop_class.__dict__:
            register_uid(uid, keyword, StorageServiceClass)
        older.append(uid)
    return [*current, *older]


IMAGE_STORAGE_ROOT = "1.2.840.10008.5.1.4.1.1."


def storage_service(settings: Settings, storage_log: StorageLog, flusher: Flusher) -> DicomService:
    scp = StorageScp(settings, storage_log)
    return DicomService(
        "storage",
        storage_sop_classes(),
        [(evt.EVT_C_STORE, scp.handle_store)],
        on_association_end=flusher.association_ended,
    )


# --- reconciliation -----------------------------------------------------------------------------


def link_study(storage_log: StorageLog, study_uid: str, accession: str, reason: str, user: str) -> int:
    """Attach a queued study to an exam: a LinkStudy command goes through the outbox to the
    exam's workflow with the person and the reason in its provenance; later batches of the
    study follow it there. Returns the outbox row."""
    now = utcnow()
    with storage_log.transaction() as records:
        study = records.study(study_uid)
        if study is None or not study["queued_reason"]:
            raise NotQueued(f"study {study_uid} is not in the reconciliation queue")
        if study["accession"]:
            raise AlreadyLinked(f"study {study_uid} was already linked to exam {study['accession']}")
        state = records.order_state(accession)
        if state is None:
            raise UnknownAccession(f"no order with accession {accession}")
        if state == "cancelled":
            raise IllegalLink(f"exam {accession} was cancelled")
        row = records.cur.execute(
            "INSERT INTO dicom_batches (received_at, study_instance_uid, accession, instances) VALUES (?, ?, ?, 0) RETURNING id",
            (now, study_uid, accession),
        ).fetchone()
        assert row is not None
        batch_id = int(row["id"])
        command = LinkStudy(
            provenance=Provenance(
                actor=user,
                source=Source(
                    kind="api",
                    application="reconciliation",
                    control_id=study_uid,
                    message_id=f"{PREFIX}{batch_id}",
                ),
                occurred_at=now,
                extra={"reason": reason, "queued_because": study["queued_reason"]},
            ),
            study_instance_uid=study_uid,
            accession=accession,
            reason=reason,
        )
        records.cur.execute(
            "UPDATE dicom_batches SET commands = ? WHERE id = ?", (json.dumps([_entry(command)]), batch_id)
        )
        records.cur.execute(
            "UPDATE dicom_studies SET accession = ?, linked_how = 'reconciled', linked_by = ?, linked_at = ? "
            "WHERE study_instance_uid = ?",
            (accession, user, now, study_uid),
        )
    log.info("study linked", extra={"study_instance_uid": study_uid, "accession": accession, "user": user})
    return batch_id
