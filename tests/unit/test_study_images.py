"""The Study aggregate and image completeness: batches, links, and an exam that knows whether
every instance its MPPS referenced is held."""

from __future__ import annotations

from typing import Any

import pytest
from eventsourcing.application import Application
from hypothesis import given
from hypothesis import strategies as st

from domain.commands import PerformedSeries, ReferencedInstance, StoreInstances
from domain.completeness import missing_instances, referenced_instances
from domain.errors import StudyAlreadyLinked
from domain.exam import Exam
from domain.study import Study, study_id
from tests.unit.exam_builders import place_order, provenance

CT = "1.2.840.10008.5.1.4.1.1.2"


def batch(
    study_uid: str, series: dict[str, list[str]], *, message_id: str, accession: str = ""
) -> StoreInstances:
    return StoreInstances(
        provenance=provenance(kind="dicom", message_id=message_id),
        study_instance_uid=study_uid,
        study={"patient_id": "P0001", "patient_name": "DOE^JANE", "accession_number": accession},
        series=tuple(
            {
                "series_instance_uid": uid,
                "modality": "CT",
                "instances": [
                    {"sop_instance_uid": sop, "sop_class_uid": CT, "path": f"/x/{sop}.dcm", "size": 10}
                    for sop in sops
                ],
            }
            for uid, sops in series.items()
        ),
        accession=accession,
        calling_ae="CT01",
    )


def performed(series: dict[str, list[str]]) -> tuple[PerformedSeries, ...]:
    return tuple(
        PerformedSeries(series_instance_uid=uid, instances=tuple(ReferencedInstance(CT, sop) for sop in sops))
        for uid, sops in series.items()
    )


def stored_study(*batches: StoreInstances) -> Study:
    study = Study.first_stored(batches[0])
    for item in batches:
        study.store(item)
    return study


def test_a_study_holds_its_batches_and_survives_a_rebuild() -> None:
    app: Application[Any] = Application()
    study = stored_study(
        batch("1.2.3", {"1.2.3.1": ["1.2.3.1.1", "1.2.3.1.2"]}, message_id="dicom-batch:1"),
        batch("1.2.3", {"1.2.3.2": ["1.2.3.2.1"]}, message_id="dicom-batch:2"),
    )
    app.save(study)
    rebuilt: Study = app.repository.get(study_id("1.2.3"))
    assert rebuilt.series_instances() == {"1.2.3.1": {"1.2.3.1.1", "1.2.3.1.2"}, "1.2.3.2": {"1.2.3.2.1"}}
    assert [type(e).__name__ for e in app.events.get(study_id("1.2.3"))] == [
        "StudyFirstStored",
        "InstancesStored",
        "InstancesStored",
    ]
    assert rebuilt.has_applied(provenance(kind="dicom", message_id="dicom-batch:2"))


def test_a_study_links_once_and_refuses_another_exam() -> None:
    study = stored_study(batch("1.2.4", {"s": ["i"]}, message_id="dicom-batch:3"))
    study.link("ACC1", "accession matched", provenance(message_id="m1"))
    study.link("ACC1", "again", provenance(message_id="m2"))  # the same exam: nothing new
    assert [type(e).__name__ for e in study.collect_events()].count("StudyLinkedToExam") == 1
    with pytest.raises(StudyAlreadyLinked, match="study 1.2.4: already linked to exam ACC1"):
        study.link("ACC2", "typo", provenance(message_id="m3"))


def completed_exam(series: dict[str, list[str]]) -> Exam:
    exam = Exam.place(place_order("ACC-IMG"))
    exam.start(provenance(kind="dicom"), mpps_uid="1.2.9")
    exam.complete(provenance(kind="dicom"), mpps_uid="1.2.9", series=performed(series))
    return exam


def test_an_exam_completed_before_its_images_awaits_them_then_records_them_complete() -> None:
    exam = completed_exam({"s1": ["a", "b"], "s2": ["c"]})
    assert exam.awaits_images
    exam.check_images({"s1": {"a", "b"}}, provenance(kind="dicom"), deadline_passed=False)
    assert exam.images == "awaiting"
    exam.check_images(
        {"s1": {"a", "b"}, "s2": {"c", "extra"}}, provenance(kind="dicom"), deadline_passed=False
    )
    assert exam.images == "complete"
    names = [type(e).__name__ for e in exam.collect_events()]
    assert names[-1] == "ImagesCompleted"


def test_missing_is_said_only_when_the_wait_ran_out_with_the_list_and_late_images_still_complete() -> None:
    exam = completed_exam({"s1": ["a", "b"]})
    exam.check_images({"s1": {"a"}}, provenance(kind="timer"), deadline_passed=True)
    assert exam.images == "missing"
    *_, missing = exam.collect_events()
    assert missing.missing == [{"series_instance_uid": "s1", "sop_instance_uid": "b"}]  # type: ignore[attr-defined]
    exam.check_images({"s1": {"a", "b"}}, provenance(kind="dicom"), deadline_passed=False)
    assert exam.images == "complete"


def test_an_exam_whose_mpps_referenced_nothing_has_nothing_to_await() -> None:
    exam = completed_exam({})
    assert exam.images == "" and not exam.awaits_images
    exam.check_images({}, provenance(kind="timer"), deadline_passed=True)
    assert exam.images == ""


def test_images_stored_is_a_fact_in_any_state_and_remembered_across_rebuilds() -> None:
    app: Application[Any] = Application()
    exam = Exam.place(place_order("ACC-LATE"))
    exam.cancel("ordered in error", provenance())
    exam.record_images("1.2.5", {"s": 3}, provenance(kind="dicom", message_id="dicom-batch:9"))
    app.save(exam)
    rebuilt: Exam = app.repository.get(exam.id)
    assert rebuilt.studies == ("1.2.5",)
    assert rebuilt.has_applied(provenance(kind="dicom", message_id="dicom-batch:9"))


uids = st.text(alphabet="0123456789.", min_size=1, max_size=6)
series_maps = st.dictionaries(uids, st.sets(uids, max_size=5), max_size=4)


@given(referenced=series_maps, held=series_maps)
def test_missing_is_exactly_the_referenced_instances_not_held_anywhere(
    referenced: dict[str, set[str]], held: dict[str, set[str]]
) -> None:
    performed_series = [
        {"series_instance_uid": s, "instances": [{"sop_instance_uid": i, "sop_class_uid": CT} for i in sops]}
        for s, sops in referenced.items()
    ]
    missing = missing_instances(performed_series, held)
    every_held = set().union(*held.values()) if held else set()
    expected = {(s, i) for s, i in referenced_instances(performed_series) if i not in every_held}
    assert {(m["series_instance_uid"], m["sop_instance_uid"]) for m in missing} == expected
    assert missing == sorted(missing, key=lambda m: (m["series_instance_uid"], m["sop_instance_uid"]))
