"""C-FIND matching rules (PS3.4 C.2.2.2) and the worklist entity they run on: the keys come from
outside (any modality may send anything), so the rules are checked against independent
oracles (fnmatch, datetime) over generated input, and malformed keys must fail cleanly."""

from __future__ import annotations

import fnmatch
import string
from datetime import date, time, timedelta
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from interfaces.dicom.matching import InvalidQuery, compile_condition, compile_query, normalise_name
from interfaces.dicom.worklist import (
    REQUESTED_PROCEDURE_CODE_SEQUENCE,
    SCHEDULED_PROCEDURE_STEP_SEQUENCE,
    SCHEMA,
    character_set,
    select,
    worklist_item,
    xcn_to_pn,
)

TEXT = st.text(alphabet=string.ascii_letters + string.digits + " ^.-+()[]{}|\\$", min_size=1, max_size=20).map(
    str.strip
).filter(bool)


def matches(vr: str, key: Any, value: str) -> bool:
    """Whether one key (compiled as a modality would send it) selects one value."""
    condition = compile_condition(0x00100020, vr, key)
    return True if condition is None else condition.matches(value)


def row(**overrides: Any) -> dict[str, Any]:
    base = {
        "accession": "ACC1", "patient_name": "DOE^JANE", "patient_id": "P1", "patient_issuer": "HOSP",
        "patient_birth_date": "19800102", "patient_sex": "F", "study_instance_uid": "1.2.3",
        "referring_physician": "1234^HOUSE^GREGORY", "procedure_code": "CTHEAD",
        "procedure_text": "CT head", "requested_procedure_id": "RP1", "priority": "STAT",
        "placer_order_number": "PL1", "filler_order_number": "FL1", "modality": "CT",
        "scheduled_station_ae": "", "scheduled_date": "20240316", "scheduled_time": "090000",
        "scheduled_procedure_step_id": "RP1",
    }
    return {**base, **overrides}


def query(step: dict[str, Any] | None = None, **keys: Any) -> Dataset:
    dataset = Dataset()
    for keyword, value in keys.items():
        setattr(dataset, keyword, value)
    if step is not None:
        item = Dataset()
        for keyword, value in step.items():
            setattr(item, keyword, value)
        dataset.ScheduledProcedureStepSequence = [item]
    return dataset


# --- wildcards, single values, universal matching ---------------------------------------------


@given(text=TEXT, data=st.data())
def test_a_value_with_wildcards_matches_every_text_it_was_cut_from(text: str, data: st.DataObject) -> None:
    chars = list(text)
    for index in data.draw(st.sets(st.integers(0, len(chars) - 1), max_size=3)):
        chars[index] = "?"
    start = data.draw(st.integers(0, len(chars)))
    stop = data.draw(st.integers(start, len(chars)))
    pattern = "".join(chars[:start]) + "*" + "".join(chars[stop:])
    assert matches("LO", pattern, text)


@given(pattern=st.text(alphabet="ab*?", min_size=1, max_size=8), text=st.text(alphabet="ab", max_size=8))
def test_wildcard_matching_agrees_with_fnmatch(pattern: str, text: str) -> None:
    assume(pattern.strip("*"))  # a lone run of '*' is universal matching, even for empty values
    assert matches("SH", pattern, text) == fnmatch.fnmatchcase(text, pattern)


@given(key=TEXT, value=TEXT)
def test_a_value_without_wildcards_matches_only_itself(key: str, value: str) -> None:
    assume("*" not in key and "?" not in key)
    assert matches("LO", key, value) == (key == value)
    assert matches("LO", key, key)


@given(family=st.text(alphabet="abcdeéüßøDOE", min_size=1, max_size=8), given_name=st.text(alphabet="janeJÄ", max_size=6))
def test_person_names_match_without_regard_to_case_or_trailing_empty_components(family: str, given_name: str) -> None:
    name = f"{family}^{given_name}" if given_name else family
    assert matches("PN", name.upper(), name)
    assert matches("PN", name.lower() + "^^", name)
    assert matches("PN", f"{family[:1]}*", name)
    assert normalise_name(f"{name}^^ ") == name


def test_a_bare_family_name_is_no_prefix_of_a_longer_name() -> None:
    assert not matches("PN", "DOE", "DOE^JANE")
    assert matches("PN", "DOE*", "DOE^JANE")
    assert not matches("CS", "ct", "CT")  # only person names ignore case


@pytest.mark.parametrize("vr", ["PN", "LO", "SH", "CS", "AE", "DA", "TM", "UI"])
@pytest.mark.parametrize("key", ["", " ", None])
def test_an_empty_key_is_universal_matching(vr: str, key: Any) -> None:
    assert compile_condition(0x00100020, vr, key) is None


@pytest.mark.parametrize("vr", ["PN", "LO", "SH", "CS", "AE"])
def test_a_lone_asterisk_is_universal_matching_even_for_entities_without_a_value(vr: str) -> None:
    assert compile_condition(0x00100020, vr, "*") is None
    assert compile_condition(0x00100020, vr, "***") is None


def test_a_pair_of_double_quotes_selects_entities_without_a_value() -> None:
    assert matches("LO", '""', "")
    assert not matches("LO", '""', "X")


def test_a_uid_list_matches_any_of_its_uids() -> None:
    assert matches("UI", ["1.2.3", "1.2.4"], "1.2.4")
    assert not matches("UI", ["1.2.3", "1.2.4"], "1.2.5")


# --- dates and times --------------------------------------------------------------------------

DATES = st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31))


def da(day: date) -> str:
    return day.strftime("%Y%m%d")


@given(value=DATES, low=st.none() | DATES, high=st.none() | DATES)
def test_date_ranges_match_exactly_the_dates_between_their_bounds(value: date, low: date | None, high: date | None) -> None:
    assume(low is not None or high is not None)
    key = f"{da(low) if low else ''}-{da(high) if high else ''}"
    inside = (low is None or low <= value) and (high is None or value <= high)
    assert matches("DA", key, da(value)) == inside


@given(value=DATES, other=DATES)
def test_a_single_date_matches_that_day_only(value: date, other: date) -> None:
    assert matches("DA", da(value), da(value))
    assert matches("DA", da(value), da(other)) == (value == other)


TIMES = st.times().map(lambda t: t.replace(microsecond=0))


def span(text: str) -> tuple[time, time]:
    """The first and last second a partial time (HH, HHMM, HHMMSS) stands for."""
    padded_low = text.ljust(6, "0")
    last = {2: "5959", 4: "59", 6: ""}[len(text)]
    padded_high = text + last
    return (
        time(int(padded_low[:2]), int(padded_low[2:4]), int(padded_low[4:6])),
        time(int(padded_high[:2]), int(padded_high[2:4]), int(padded_high[4:6])),
    )


@given(value=TIMES, low=TIMES, high=TIMES, low_digits=st.sampled_from([2, 4, 6]), high_digits=st.sampled_from([2, 4, 6]))
def test_time_ranges_cover_the_whole_span_of_partial_bounds(value: time, low: time, high: time, low_digits: int, high_digits: int) -> None:
    low_text, high_text = low.strftime("%H%M%S")[:low_digits], high.strftime("%H%M%S")[:high_digits]
    inside = span(low_text)[0] <= value <= span(high_text)[1]
    assert matches("TM", f"{low_text}-{high_text}", value.strftime("%H%M%S")) == inside
    assert matches("TM", f"{low_text}-", value.strftime("%H%M")) == (span(low_text)[0] <= value.replace(second=0))


def test_a_time_with_fractions_and_an_acr_nema_time_compare_by_their_values() -> None:
    assert matches("TM", "0900-0930", "091500.123")
    assert matches("TM", "09:00-09:30", "0930")
    assert not matches("TM", "0900-0930", "093100")
    assert matches("TM", "09", "095959.999999")


@pytest.mark.parametrize(
    ("vr", "key"),
    [("DA", "2026-12-03"), ("DA", "202612"), ("DA", "2026120"), ("DA", "-"), ("DA", "20261203-20261204-20261205"),
     ("TM", "9"), ("TM", "0960x"), ("TM", "12.5"), ("DT", "2026-12-03T10:00")],
)
def test_malformed_dates_and_times_are_refused_naming_the_key(vr: str, key: str) -> None:
    with pytest.raises(InvalidQuery) as refused:
        compile_condition(0x00400002, vr, key)
    assert refused.value.tag == 0x00400002
    assert key.split("-")[0] in str(refused.value) or "range" in str(refused.value)


@given(value=st.dates(min_value=date(2000, 1, 1), max_value=date(2030, 1, 1)), days=st.integers(0, 3))
def test_datetime_ranges_compare_by_their_values_ignoring_a_utc_offset(value: date, days: int) -> None:
    low = value.strftime("%Y%m%d") + "0000"
    high = (value + timedelta(days=days)).strftime("%Y%m%d") + "2359-0500"
    assert matches("DT", f"{low}-{high}", value.strftime("%Y%m%d") + "120000")
    assert not matches("DT", f"{low}-{high}", (value - timedelta(days=1)).strftime("%Y%m%d") + "120000")


@given(vr=st.sampled_from(["DA", "TM", "DT", "PN", "CS", "UI", "LO", "AE"]), key=st.text(max_size=30), value=st.text(max_size=20))
def test_any_text_as_a_key_compiles_or_is_refused_and_never_breaks_matching(vr: str, key: str, value: str) -> None:
    try:
        condition = compile_condition(0x00400002, vr, key)
    except InvalidQuery:
        return
    if condition is not None:
        assert condition.matches(value) in (True, False)


# --- identifiers against worklist entities ----------------------------------------------------

KEYWORDS = ["AccessionNumber", "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
            "RequestedProcedureID", "RequestedProcedurePriority", "MedicalAlerts", "ReferringPhysicianName"]
STEP_KEYWORDS = ["Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
                 "ScheduledProcedureStepStartTime", "ScheduledProcedureStepID", "ScheduledStationName"]
KEY_TEXT = st.text(alphabet=string.printable + "ÄÖÜäöüßΠαЖ", max_size=24)


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.filterwarnings("ignore:The value length")
@given(keys=st.dictionaries(st.sampled_from(KEYWORDS), KEY_TEXT), step_keys=st.none() | st.dictionaries(st.sampled_from(STEP_KEYWORDS), KEY_TEXT))
def test_any_identifier_a_modality_sends_is_answered_or_refused_but_never_breaks_the_handler(
    keys: dict[str, str], step_keys: dict[str, str] | None
) -> None:
    identifier = query(step_keys, **keys)
    try:
        compiled = compile_query(identifier, SCHEMA)
    except InvalidQuery as refused:
        assert refused.tag in {0x00100030, 0x00400002, 0x00400003}
        return
    entity = worklist_item(row())
    if compiled.matches(entity):
        response = compiled.respond(entity)
        assert {e.tag for e in response} == {e.tag for e in identifier}
    select(compiled)



def test_keys_inside_the_step_sequence_select_entities_whose_step_matches_them_all() -> None:
    entity = worklist_item(row())
    assert compile_query(query({"Modality": "CT", "ScheduledProcedureStepStartDate": "20240301-20240331"}), SCHEMA).matches(entity)
    assert not compile_query(query({"Modality": "CT", "ScheduledProcedureStepStartDate": "20240401-"}), SCHEMA).matches(entity)
    assert not compile_query(query({"Modality": "MR"}), SCHEMA).matches(entity)
    assert compile_query(query({"ScheduledStationAETitle": "*"}), SCHEMA).matches(entity)
    assert not compile_query(query({"ScheduledStationAETitle": "CT01"}), SCHEMA).matches(entity)


def test_a_station_list_matches_when_any_of_the_steps_stations_matches() -> None:
    entity = worklist_item(row(scheduled_station_ae="CT01\\CT02"))
    assert compile_query(query({"ScheduledStationAETitle": "CT02"}), SCHEMA).matches(entity)
    assert not compile_query(query({"ScheduledStationAETitle": "MR01"}), SCHEMA).matches(entity)


def test_a_sequence_key_with_two_items_is_refused() -> None:
    identifier = query(PatientName="")
    identifier.ScheduledProcedureStepSequence = [Dataset(), Dataset()]
    with pytest.raises(InvalidQuery) as refused:
        compile_query(identifier, SCHEMA)
    assert refused.value.tag == SCHEDULED_PROCEDURE_STEP_SEQUENCE


def test_a_step_key_with_an_empty_item_returns_the_whole_step() -> None:
    identifier = query(PatientName="")
    identifier.ScheduledProcedureStepSequence = [Dataset()]
    response = compile_query(identifier, SCHEMA).respond(worklist_item(row()))
    [step] = response.ScheduledProcedureStepSequence
    assert (step.Modality, step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepID) == ("CT", "20240316", "RP1")
    assert step.ScheduledProtocolCodeSequence[0].CodeValue == "CTHEAD"
    assert step.ScheduledProcedureStepStatus == "SCHEDULED"


def test_the_response_holds_the_requested_keys_only_with_unknown_ones_empty() -> None:
    identifier = query({"Modality": "", "ScheduledStationName": ""}, PatientName="", MedicalAlerts="", AccessionNumber="ACC1")
    response = compile_query(identifier, SCHEMA).respond(worklist_item(row()))
    assert [e.keyword for e in response] == ["AccessionNumber", "PatientName", "MedicalAlerts", "ScheduledProcedureStepSequence"]
    assert response.MedicalAlerts in ("", None)
    assert [e.keyword for e in response.ScheduledProcedureStepSequence[0]] == ["Modality", "ScheduledStationName"]


def test_without_a_procedure_code_the_code_sequences_are_absent_not_empty() -> None:
    identifier = query({"ScheduledProtocolCodeSequence": []}, RequestedProcedureCodeSequence=[], PatientName="")
    response = compile_query(identifier, SCHEMA).respond(worklist_item(row(procedure_code="")))
    assert REQUESTED_PROCEDURE_CODE_SEQUENCE not in response
    assert "ScheduledProtocolCodeSequence" not in response.ScheduledProcedureStepSequence[0]


def test_a_key_on_an_attribute_the_worklist_does_not_hold_is_ignored_and_reported() -> None:
    compiled = compile_query(query({"ScheduledStationName": "A2"}, MedicalAlerts="", PatientComments="x"), SCHEMA)
    assert compiled.matches(worklist_item(row()))
    assert sorted(compiled.all_unsupported()) == [0x00104000, 0x00400010]


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # pydicom frowns on wildcards in CS
def test_the_worklist_pushes_only_decided_keys_into_sql_and_keeps_the_date_range() -> None:
    sql, params = select(compile_query(query({"Modality": "CT", "ScheduledProcedureStepStartDate": "20240301-"}, PatientID="P1"), SCHEMA))
    assert "modality = ?" in sql and "patient_id = ?" in sql and "scheduled_date >= ?" in sql
    assert params[-3:] == ["P1", "CT", "20240301"]
    sql, _ = select(compile_query(query({"Modality": "C?"}, PatientName="DOE*"), SCHEMA))
    assert "modality" not in sql.split("ORDER BY")[0] and "patient" not in sql


# --- the worklist entity ----------------------------------------------------------------------


@pytest.mark.parametrize(("priority", "expected"), [("STAT", "STAT"), ("ASAP", "HIGH"), ("ROUTINE", "ROUTINE"), ("", "ROUTINE")])
def test_order_priorities_become_requested_procedure_priorities(priority: str, expected: str) -> None:
    assert worklist_item(row(priority=priority))[0x00401003] == expected


def test_an_order_without_a_requested_procedure_id_borrows_its_accession() -> None:
    assert worklist_item(row(requested_procedure_id=""))[0x00401001] == "ACC1"


@pytest.mark.parametrize(
    ("xcn", "pn"), [("1234^HOUSE^GREGORY", "HOUSE^GREGORY"), ("^SMITH", "SMITH"), ("", ""), ("9^A^B^C^JR^DR", "A^B^C")]
)
def test_the_ordering_provider_becomes_a_person_name_without_its_id(xcn: str, pn: str) -> None:
    assert xcn_to_pn(xcn) == pn


def names(*values: str) -> Dataset:
    dataset = Dataset()
    dataset.PatientName = values[0]
    if len(values) > 1:
        dataset.RequestedProcedureDescription = values[1]
    return dataset


@pytest.mark.parametrize(
    ("requested", "values", "expected"),
    [
        ([], ("DOE^JANE",), None),
        (["ISO_IR 100"], ("DOE^JANE",), "ISO_IR 100"),
        (["ISO_IR 192"], ("MÜLLER^JÜRGEN",), "ISO_IR 192"),
        (["ISO_IR 100"], ("MÜLLER^JÜRGEN",), "ISO_IR 100"),
        ([], ("MÜLLER^JÜRGEN",), "ISO_IR 100"),
        (["ISO_IR 100"], ("ΠΑΠΑΔΟΠΟΥΛΟΣ^ΓΙΑΝΝΗΣ",), "ISO_IR 192"),
        (["ISO_IR 126"], ("ΠΑΠΑΔΟΠΟΥΛΟΣ^ΓΙΑΝΝΗΣ",), "ISO_IR 126"),
        (["ISO_IR 144"], ("MÜLLER", "Рентген"), "ISO_IR 192"),
        (["", "ISO 2022 IR 87"], ("山田^太郎",), "ISO_IR 192"),
    ],
)
def test_the_answer_keeps_the_query_character_set_when_it_can_else_latin1_else_utf8(
    requested: list[str], values: tuple[str, ...], expected: str | None
) -> None:
    assert character_set(requested, names(*values)) == expected
