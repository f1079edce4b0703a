"""The Study Instance UID radflow assigns to an order that carries none: derived from the
accession, so a retried or replayed order hands the modality the same study."""

from __future__ import annotations

import re
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from domain.exam import Exam
from tests.unit.exam_builders import in_memory_application, place_order

UID = re.compile(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))*")


@given(accession=st.text(min_size=1, max_size=16))
def test_an_order_without_a_study_uid_gets_a_valid_uid_that_is_the_same_every_time(accession: str) -> None:
    first = Exam.place(place_order(accession)).order["study_instance_uid"]
    again = Exam.place(place_order(accession)).order["study_instance_uid"]
    assert first == again
    assert first.startswith("2.25.") and UID.fullmatch(first) and len(first) <= 64


def test_different_accessions_get_different_uids() -> None:
    uids = {Exam.place(place_order(f"ACC{n:04d}")).order["study_instance_uid"] for n in range(200)}
    assert len(uids) == 200


def test_an_order_that_carries_a_study_uid_keeps_it() -> None:
    command = replace(place_order("ACC0001"), study_instance_uid="1.2.840.113619.2.1")
    assert Exam.place(command).order["study_instance_uid"] == "1.2.840.113619.2.1"


def test_the_assigned_uid_is_recorded_in_the_ordered_event_and_read_back_from_the_store() -> None:
    app = in_memory_application()
    exam = Exam.place(place_order("ACC0002"))
    app.save(exam)
    stored: Exam = app.repository.get(exam.id)
    assert stored.order["study_instance_uid"] == exam.order["study_instance_uid"]
    assert stored.order["study_instance_uid"].startswith("2.25.")
