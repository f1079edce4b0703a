"""A PACS index filled the real way for Query/Retrieve tests: pydicom writes small CT files,
`StoreInstances` commands record them on `Study` aggregates in the event store, and the PACS index
projection is built from those events by a `ProjectionRunner`."""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from adapters.event_store import EventStore
from adapters.sql import Database
from domain.commands import StoreInstances
from domain.provenance import Provenance, Source
from domain.study import Study
from projections.pacs_index import PacsIndexProjection
from projections.runner import ProjectionRunner
from tests.dicom_builders import StudySpec, ct_image


@dataclass
class SeriesSpec:
    count: int
    modality: str = "CT"
    description: str = "axial"
    series_instance_uid: str = field(default_factory=generate_uid)


@dataclass
class StoredStudy:
    spec: StudySpec
    series: list[SeriesSpec]
    files: dict[str, Path]  # SOP Instance UID -> file

    @property
    def uid(self) -> str:
        return self.spec.study_instance_uid


def dataset_bytes(path: Path) -> bytes:
    """A Part-10 file's data set as encoded: what follows the preamble and the meta group."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM", path
    (group_length,) = struct.unpack("<I", data[140:144])  # (0002,0000) UL, explicit VR LE
    return data[144 + group_length :]


def store_study(
    store: EventStore,
    folder: Path,
    spec: StudySpec,
    series: list[SeriesSpec],
    *,
    description: str = "CT head",
    syntax: str = ExplicitVRLittleEndian,
    write_files: bool = True,
) -> StoredStudy:
    """Write the study's files and save its Study aggregate with one StoreInstances batch."""
    files: dict[str, Path] = {}
    series_entries: list[dict[str, Any]] = []
    for number, item in enumerate(series, start=1):
        instances = []
        for index in range(1, item.count + 1):
            ds = ct_image(spec, item.series_instance_uid, index, modality=item.modality, side=8)
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.SeriesNumber = number
            ds.SeriesDescription = item.description
            ds.StudyDescription = description
            ds.file_meta.TransferSyntaxUID = UID(syntax)
            path = folder / spec.study_instance_uid / item.series_instance_uid / f"{ds.SOPInstanceUID}.dcm"
            if write_files:
                path.parent.mkdir(parents=True, exist_ok=True)
                ds.save_as(path, enforce_file_format=True)
            files[ds.SOPInstanceUID] = path
            instances.append(
                {
                    "sop_instance_uid": ds.SOPInstanceUID,
                    "sop_class_uid": ds.SOPClassUID,
                    "instance_number": str(index),
                    "transfer_syntax": syntax,
                    "size": path.stat().st_size if write_files else 0,
                    "path": str(path),
                }
            )
        series_entries.append(
            {
                "series_instance_uid": item.series_instance_uid,
                "modality": item.modality,
                "series_number": str(number),
                "series_description": item.description,
                "body_part": "HEAD",
                "instances": instances,
            }
        )
    batch = uuid.uuid4().hex
    command = StoreInstances(
        provenance=Provenance(
            actor="MODALITY",
            source=Source(kind="dicom", application="MODALITY", control_id=batch, message_id=f"qr-{batch}"),
            occurred_at="2026-11-28T10:15:00",
        ),
        study_instance_uid=spec.study_instance_uid,
        study={
            "patient_id": spec.patient_id,
            "patient_name": spec.patient_name,
            "patient_birth_date": "19710304",
            "patient_sex": "F",
            "accession_number": spec.accession,
            "study_id": "1",
            "study_date": spec.study_date,
            "study_time": "101500",
            "study_description": description,
            "referring_physician": "HOUSE^GREGORY",
        },
        series=tuple(series_entries),
        accession=spec.accession,
        calling_ae="MODALITY",
    )
    study = Study.first_stored(command)
    study.store(command)
    store.save(study)
    return StoredStudy(spec, series, files)


def build_pacs_index(store: EventStore, db: Database) -> ProjectionRunner:
    """The PACS index projection, caught up with everything stored so far."""
    runner = ProjectionRunner(store, db, PacsIndexProjection())
    runner.create_schema()
    runner.catch_up()
    return runner
