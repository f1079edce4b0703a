"""Small, valid DICOM Part-10 files for tests: CT images of a given study/series, written with
pydicom (an independent encoder), so that storage tests never depend on radflow's own code."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


@dataclass
class StudySpec:
    accession: str
    patient_id: str = "MRN1"
    patient_name: str = "DOE^JANE"
    study_instance_uid: str = field(default_factory=generate_uid)
    study_date: str = "20261128"


def ct_image(
    study: StudySpec, series_uid: str, number: int, *, modality: str = "CT", side: int = 16
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = study.patient_id
    ds.PatientName = study.patient_name
    ds.PatientBirthDate = "19710304"
    ds.PatientSex = "F"
    ds.AccessionNumber = study.accession
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyID = "1"
    ds.StudyDate = study.study_date
    ds.StudyTime = "101500"
    ds.StudyDescription = "CT head"
    ds.ReferringPhysicianName = "HOUSE^GREGORY"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = "axial"
    ds.Modality = modality
    ds.InstanceNumber = number
    ds.Rows = ds.Columns = side
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes((number + i) % 256 for i in range(side * side * 2))
    return ds


def write_series(folder: Path, study: StudySpec, count: int, series_uid: str | None = None) -> list[Path]:
    """`count` CT images of one series as files; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    paths = []
    for number in range(1, count + 1):
        ds = ct_image(study, series_uid, number)
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
