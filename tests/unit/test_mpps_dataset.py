"""Reading MPPS datasets: required attributes, what an N-CREATE and an N-SET say, DICOM dates
and times as ISO 8601, and the DVTk datasets from the corpus read as they are."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from interfaces.dicom.mpps_dataset import (
    Missing,
    ended_at,
    iso_datetime,
    missing_on_create,
    missing_when_final,
    read_create,
    read_set,
    tag_path,
)
from tests.integration.mpps_builders import ended, in_progress, series_item

DVTK = Path("dicom") / "dvtk" / "mpps"


@pytest.mark.parametrize(
    ("date", "time", "iso"),
    [
        ("20060719", "134937", "2006-07-19T13:49:37"),
        ("20060719", "134937.25", "2006-07-19T13:49:37.25"),
        ("20060719", "1349", "2006-07-19T13:49:00"),
        ("20060719", "13", "2006-07-19T13:00:00"),
        ("20060719", "", "2006-07-19"),
        ("20060719", "1x", "2006-07-19"),
        ("", "134937", ""),
        ("2006-07-19", "134937", ""),
    ],
)
def test_dicom_dates_and_times_become_iso_8601_without_guessing_what_is_missing(date: str, time: str, iso: str) -> None:
    assert iso_datetime(date, time) == iso


def test_a_complete_n_create_misses_nothing() -> None:
    assert not missing_on_create(in_progress("ACC1"))


def test_absent_and_empty_required_attributes_are_told_apart_down_to_the_scheduled_step() -> None:
    ds = in_progress("ACC1")
    del ds.Modality
    ds.PerformedStationAETitle = ""
    ds.ScheduledStepAttributesSequence[0].StudyInstanceUID = ""
    missing = missing_on_create(ds)
    assert missing.absent == ("Modality",)
    assert missing.empty == ("PerformedStationAETitle", "ScheduledStepAttributesSequence[0].StudyInstanceUID")
    assert missing.comment == "missing (0008,0060); no value in (0040,0241), (0040,0270)[0](0020,000D)"
    assert missing.detail == (
        "missing Modality; no value in PerformedStationAETitle, ScheduledStepAttributesSequence[0].StudyInstanceUID"
    )


def test_an_empty_scheduled_step_sequence_is_a_missing_value() -> None:
    ds = in_progress("ACC1")
    ds.ScheduledStepAttributesSequence = []
    assert missing_on_create(ds) == Missing((), ("ScheduledStepAttributesSequence",))


def test_an_n_create_is_read_into_the_step_radflow_keeps() -> None:
    step = read_create(in_progress("ACC1", study_uid="1.2.3", patient_id="P9"))
    assert step["status"] == "IN PROGRESS"
    assert (step["accessions"], step["study_instance_uid"], step["patient_id"]) == (["ACC1"], "1.2.3", "P9")
    assert (step["station_ae"], step["step_id"], step["modality"]) == ("CT01", "PPS1", "CT")
    assert (step["start_date"], step["start_time"], step["end_date"]) == ("20261128", "101500", "")
    assert step["series"] == []


def test_several_scheduled_steps_name_each_accession_once() -> None:
    ds = in_progress("ACC1")
    again, other, blank = (Dataset() for _ in range(3))
    again.AccessionNumber, other.AccessionNumber, blank.AccessionNumber = "ACC1", "ACC2", ""
    ds.ScheduledStepAttributesSequence = [*ds.ScheduledStepAttributesSequence, again, other, blank]
    assert read_create(ds)["accessions"] == ["ACC1", "ACC2"]


def test_an_n_set_reads_only_what_it_may_change() -> None:
    ds = ended("COMPLETED", [series_item("1.2.3", ["1.2.3.1"])])
    ds.PatientID = "SOMEONE-ELSE"  # fixed by the N-CREATE: not taken from an N-SET
    changes = read_set(ds)
    assert set(changes) == {"status", "end_date", "end_time", "series"}
    [series] = changes["series"]
    assert (series["series_instance_uid"], series["protocol_name"], series["retrieve_ae_title"]) == ("1.2.3", "HEAD", "RADFLOW")
    assert series["instances"] == [{"sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "sop_instance_uid": "1.2.3.1"}]


def test_a_discontinuation_reason_reads_as_value_meaning_and_scheme() -> None:
    changes = read_set(ended("DISCONTINUED", reason=("110514", "Incorrect worklist entry selected", "DCM")))
    assert changes["discontinuation_reason"] == "110514^Incorrect worklist entry selected^DCM"


def test_a_final_step_needs_its_end_date_and_time() -> None:
    assert missing_when_final({"end_date": "20261128", "end_time": ""}).empty == ("PerformedProcedureStepEndTime",)
    assert not missing_when_final({"end_date": "20261128", "end_time": "1030"})


def test_tag_paths_follow_nested_sequences() -> None:
    assert tag_path("ScheduledStepAttributesSequence[2].AccessionNumber") == "(0040,0270)[2](0008,0050)"


def test_the_dvtk_datasets_read_as_their_files_hold_them(corpus_dir: Path) -> None:
    folder = corpus_dir / DVTK
    created = dcmread(folder / "mpps-inprogress1.dcm")
    assert not missing_on_create(created)
    step = read_create(created)
    assert (step["accessions"], step["station_ae"], step["modality"], step["step_id"]) == (["113425301"], "DVT", "DX", "1605.0")
    assert (step["study_instance_uid"], step["patient_id"]) == ("1.2.826.1153309373.966.3", "PA2")

    completed = read_set(dcmread(folder / "mpps-completed1.dcm"))
    assert completed["status"] == "COMPLETED"
    assert ended_at(completed) == "2006-07-19T13:54:46"
    [series] = completed["series"]
    assert len(series["instances"]) == 2
    assert completed["discontinuation_reason"] == ""  # the sequence is present but empty
    discontinued = read_set(dcmread(folder / "mpps-discontinued1.dcm"))
    assert discontinued["status"] == "DISCONTINUED"
    assert discontinued["series"] == completed["series"]
