"""The Modality Worklist SCP end to end: orders over MLLP, then DICOM C-FIND from peer tools
nobody here wrote (DCMTK `findscu -W`, pynetdicom's SCU), against a whole radflow stack.

Two stacks per module: one holding exactly the ten worklist entries of the DCMTK / orthanc-tests
vectors (their universal queries must see nothing else), one for radflow's own cases.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification  # type: ignore[attr-defined]

from tests.conftest import ROOT, Stack, make_stack
from tests.e2e.mllp import MllpConnection, cancel, exam, parse_ack
from tests.e2e.mwl import SPS, Find, Order, findscu, order_from_worklist, place_orders, read_worklist_dump

VECTORS = "dicom/orthanc-tests/mwl-vectors"
DCMTK_QUERIES = "dicom/dcmtk/wlistqry"
QUERIES = range(13)
ENTRIES = range(1, 11)
VECTOR_NAMES = [f"all-{q}" for q in QUERIES] + [f"single-{e}-{q}" for e in ENTRIES for q in QUERIES]
# what no HL7 order gives a worklist entry, by tag, with the reason
GAPS = {
    "0010,2000": "Medical Alerts: radflow's ORM mapping keeps no alerts (OBX/AL1 are not mapped)",
    "0010,2110": "Contrast Allergies: HL7 AL1 segments are not mapped into the order",
    "0040,1003": "Requested Procedure Priority LOW: HL7 table 0027 has no low priority; the order is routine",
}
# answer tags the comparison leaves out, as orthanc-tests' Run.py does: the character set is the
# SCP's choice; the others are nested and never printed at the top level anyway
IGNORED = {"0008,0005", "0040,0004", "0040,0005", "0040,0020"}


def start_stack(tmp: Path, temporal_address: str) -> Stack:
    stack = make_stack(tmp, temporal_address)
    for part in ("worker", "listen", "api"):
        stack.start(part)
    try:
        stack.wait_for_port(stack.mllp_port)
        stack.wait_for_port(stack.http_port)
        stack.wait_for_port(stack.dicom_port)
    except TimeoutError:
        stack.stop_all()
        raise
    return stack


# --- the DCMTK / orthanc-tests vectors --------------------------------------------------------


@pytest.fixture(scope="module")
def vector_entries(corpus_dir: Path) -> dict[int, dict[str, str]]:
    folder = corpus_dir / VECTORS / "Database"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent from the corpus")
    return {n: read_worklist_dump(folder / f"wklist{n}.dump") for n in ENTRIES}


@pytest.fixture(scope="module")
def vectors(
    tmp_path_factory: pytest.TempPathFactory, temporal_address: str, vector_entries: dict[int, dict[str, str]]
) -> Iterator[Stack]:
    """A stack whose worklist holds the orders equivalent to the ten vector entries, only."""
    stack = start_stack(tmp_path_factory.mktemp("mwl-vectors"), temporal_address)
    try:
        place_orders(stack, [order_from_worklist(e) for e in vector_entries.values()], "VEC")
        yield stack
    finally:
        stack.stop_all()


@pytest.fixture(scope="module")
def vector_answers(
    vectors: Stack,
    vector_entries: dict[int, dict[str, str]],
    corpus_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Find]:
    """Every vector's query run once by findscu, eight at a time (each run is a new association).
    A vector against one entry alone is its query narrowed to that entry's accession number; the
    accession is then dropped from the answers unless the query asked for it."""
    folder = tmp_path_factory.mktemp("mwl-vector-queries")
    files = {}
    for q in QUERIES:
        files[q] = folder / f"wlistqry{q}.dcm"
        source = corpus_dir / VECTORS / "Queries" / f"wlistqry{q}.dump"
        subprocess.run(
            ["dump2dcm", "--write-xfer-little", str(source), str(files[q])], check=True, capture_output=True
        )

    def run(name: str) -> Find:
        parts = name.split("-")
        query = int(parts[-1])
        if parts[0] == "all":
            return findscu(vectors.dicom_port, files[query])
        accession = vector_entries[int(parts[1])]["0008,0050"]
        found = findscu(vectors.dicom_port, "-k", f"0008,0050={accession}", files[query])
        if 0x00080050 not in dcmread(files[query]):
            found.answers = [[line for line in a if tag_of(line) != "0008,0050"] for a in found.answers]
        return found

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(VECTOR_NAMES, pool.map(run, VECTOR_NAMES), strict=True))


def tag_of(line: str) -> str:
    return line[1:10].lower()


def compare(expected: list[list[str]], actual: list[list[str]]) -> tuple[set[str], bool]:
    """The tags on which the answers differ, and whether they agree once those are left out.
    Answers compare as a multiset: C-FIND promises no order."""

    def keyed(answers: list[list[str]], without: set[str]) -> list[tuple[str, ...]]:
        return sorted(tuple(line for line in a if tag_of(line) not in without | IGNORED) for a in answers)

    differing = {
        tag_of(line)
        for e, a in zip(keyed(expected, set()), keyed(actual, set()), strict=False)
        for line in set(e) ^ set(a)
    }
    return differing, keyed(expected, differing) == keyed(actual, differing)


def gaps_for(query: int, entries: list[dict[str, str]]) -> set[str]:
    """Where the answers must differ from a vector: requested keys whose data no order carries
    (queries 1 and 11 ask for alerts, allergies and priority; the others ask for none)."""
    if query not in (1, 11):
        return set()
    low = any(e.get("0040,1003") == "LOW" for e in entries)
    return {"0010,2000", "0010,2110"} | ({"0040,1003"} if low else set())


@pytest.mark.corpus
@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_each_orthanc_tests_vector_gets_the_expected_answers_apart_from_data_no_order_carries(
    vector_answers: dict[str, Find], vector_entries: dict[int, dict[str, str]], corpus_dir: Path, name: str
) -> None:
    parts = name.split("-")
    query = int(parts[-1])
    entries = list(vector_entries.values()) if parts[0] == "all" else [vector_entries[int(parts[1])]]
    expected = json.loads((corpus_dir / VECTORS / "Expected" / f"{name}.json").read_text())
    found = vector_answers[name]

    assert found.returncode == 0 and "Success" in found.final, found.log[-2000:]
    assert len(found.answers) == len(expected), found.log[-3000:]
    differing, equal_elsewhere = compare(expected, found.answers)
    assert equal_elsewhere, f"answers differ beyond the tags {sorted(differing)}"
    assert differing == gaps_for(query, entries), {t: GAPS.get(t, "unexplained") for t in differing}


# which of the ten entries DCMTK's sample queries select, decided from the entries' own values:
# queries 2, 6-9 and 12 ask for stations AA2 / AA4 (no entry is scheduled there, and radflow's
# steps have no station yet), 4 for modality DD, 5 for a start time from 12:00 on
DCMTK_SELECTS: dict[int, Any] = {
    **{q: (lambda e: True) for q in (0, 1, 3, 10, 11)},
    **{q: (lambda e: False) for q in (2, 4, 6, 7, 8, 9, 12)},
    5: lambda e: e[f"{SPS}/0040,0003"] >= "120000",
}
# the entries name their procedures by description only, so the orders carry no code and the
# code sequences (type 1C) are absent from the answers rather than empty
NO_CODE = {0x00321064, 0x00400008}
# attributes an order carries, as (top-level tag, nested tag or None) -> entry key
CARRIED = {
    (0x00080050, None): "0008,0050",
    (0x00100010, None): "0010,0010",
    (0x00100020, None): "0010,0020",
    (0x00100030, None): "0010,0030",
    (0x00100040, None): "0010,0040",
    (0x0020000D, None): "0020,000d",
    (0x00321032, None): "0032,1032",
    (0x00321060, None): "0032,1060",
    (0x00401001, None): "0040,1001",
    (0x00400100, 0x00080060): f"{SPS}/0008,0060",
    (0x00400100, 0x00400002): f"{SPS}/0040,0002",
    (0x00400100, 0x00400003): f"{SPS}/0040,0003",
}


@pytest.mark.corpus
@pytest.mark.parametrize("query", QUERIES)
def test_dcmtk_sample_query_files_sent_with_findscu_get_the_requested_keys_of_the_right_entries(
    vectors: Stack, vector_entries: dict[int, dict[str, str]], corpus_dir: Path, tmp_path: Path, query: int
) -> None:
    """DCMTK's own query files, sent as they are; the answers are read back as DICOM files
    (`findscu -X`) and checked down into the scheduled step."""
    path = corpus_dir / DCMTK_QUERIES / f"wlistqry{query}.dcm"
    if not path.is_file():
        pytest.skip(f"{path} is absent from the corpus")
    request = dcmread(path)
    found = findscu(vectors.dicom_port, "-X", "-od", tmp_path, path)
    answers = [dcmread(p) for p in sorted(tmp_path.glob("rsp*.dcm"))]

    assert found.returncode == 0 and "Success" in found.final, found.log[-2000:]
    selected = [e for e in vector_entries.values() if DCMTK_SELECTS[query](e)]
    assert len(answers) == len(selected)
    requested = {int(e.tag) for e in request} - {0x00080005} - NO_CODE
    for answer in answers:
        assert {int(e.tag) for e in answer} - {0x00080005} == requested
    step_keys = {int(e.tag) for e in request[0x00400100].value[0]} if 0x00400100 in request else set()
    if step_keys:  # a step item with keys returns those keys only
        assert all(
            {int(e.tag) for e in a.ScheduledProcedureStepSequence[0]} == step_keys - NO_CODE for a in answers
        )

    def carried(answer: Dataset) -> tuple[str, ...]:
        values = []
        for (outer, inner), _ in CARRIED.items():
            element: DataElement | None = answer.get(outer)  # None when absent
            if inner is not None and element is not None:
                element = element.value[0].get(inner) if element.value else None
            values.append("" if element is None or element.value is None else str(element.value))
        return tuple(values)

    def expected(entry: dict[str, str], answer: Dataset) -> tuple[str, ...]:
        values = []
        for (outer, inner), key in CARRIED.items():
            asked = outer in request and (inner is None or not step_keys or inner in step_keys)
            values.append(entry.get(key, "") if asked and outer in answer else "")
        return tuple(values)

    assert sorted(carried(a) for a in answers) == sorted(
        expected(e, a) for e, a in zip(selected, answers, strict=True)
    )


# --- radflow's own cases ----------------------------------------------------------------------

LATIN = Order(
    "MWL-L1",
    patient_id="P-L1",
    name="MÜLLER^JÜRGEN",
    modality="MR",
    scheduled="20261201083000",
    priority="S",
    code="MRBRAIN",
    text="MR brain",
    requested_procedure_id="RP-L1",
)
GREEK = Order(
    "MWL-U1",
    patient_id="P-U1",
    name="ΠΑΠΑΔΟΠΟΥΛΟΣ^ΓΙΑΝΝΗΣ",
    modality="CT",
    scheduled="20261202140000",
    priority="A",
    study_uid="1.2.826.0.1.3680043.10.543.1",
    charset="UNICODE UTF-8",
    requested_procedure_id="RP-U1",
)
DATED = [
    Order(
        f"MWL-D{n}",
        patient_id="P-D",
        name="ROE^RICHARD",
        modality="US",
        scheduled=when,
        requested_procedure_id=f"RP-D{n}",
    )
    for n, when in ((1, "20261203090000"), (2, "20261204090000"), (3, "20261205150000"))
]
ROUTINE = Order("MWL-R1", patient_id="P-R", name="ROE^ROSA", modality="DX", scheduled="20261130120000")
CANCELLED = Order("MWL-C1", patient_id="P-C", name="POE^CARL", modality="CT", scheduled="20261130100000")
MANY = [
    Order(f"MWL-X{n:02d}", patient_id="P-X", name="XU^XIN", modality="XA", scheduled="20261130080000")
    for n in range(200)
]


@pytest.fixture(scope="module")
def worklist(tmp_path_factory: pytest.TempPathFactory, temporal_address: str) -> Iterator[Stack]:
    """A stack with radflow's own orders, one of them cancelled again."""
    stack = start_stack(tmp_path_factory.mktemp("mwl-own"), temporal_address)
    try:
        place_orders(stack, [LATIN, GREEK, *DATED, ROUTINE, CANCELLED, *MANY], "OWN")
        with MllpConnection(stack.mllp_port) as conn:
            ack = parse_ack(
                conn.request(cancel(CANCELLED.accession, "OWN-CANCEL", patient_id="P-C").encode())
            )
            assert ack.code == "AA", ack.raw
        stack.wait_until(
            lambda: (e := exam(stack, CANCELLED.accession)) is not None and e["state"] == "cancelled"
        )
        yield stack
    finally:
        stack.stop_all()


@pytest.fixture
def scu(worklist: Stack) -> Iterator[Association]:
    """An association from pynetdicom's SCU, as a modality opens one."""
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", worklist.dicom_port, ae_title="RADFLOW")
    assert assoc.is_established
    try:
        yield assoc
    finally:
        assoc.release()


def c_find(assoc: Association, identifier: Dataset) -> tuple[list[Dataset], Dataset]:
    """(answers, final status) of one C-FIND; every intermediate status must be pending."""
    answers: list[Dataset] = []
    for status, answer in assoc.send_c_find(identifier, ModalityWorklistInformationFind):
        if status.Status in (0xFF00, 0xFF01):
            assert answer is not None  # a pending status carries an identifier
            answers.append(answer)
            continue
        return answers, status
    raise AssertionError("no final status")


def step(**keys: Any) -> Dataset:
    item = Dataset()
    for keyword, value in keys.items():
        setattr(item, keyword, value)
    return item


def identifier(step_item: Dataset | None = None, **keys: Any) -> Dataset:
    query = step(**keys)
    if step_item is not None:
        query.ScheduledProcedureStepSequence = [step_item]
    return query


def accessions(answers: list[Dataset]) -> list[str]:
    return sorted(a.AccessionNumber for a in answers)


def test_an_order_without_a_study_uid_gets_one_derived_from_its_accession_that_survives_a_rebuild(
    worklist: Stack, tmp_path: Path
) -> None:
    def uid_of(accession: str) -> str:
        found = findscu(
            worklist.dicom_port, "-k", f"0008,0050={accession}", "-k", "0020,000d", "-X", "-od", tmp_path
        )
        [answer] = [dcmread(p) for p in tmp_path.glob("rsp*.dcm")]
        for p in tmp_path.glob("rsp*.dcm"):
            p.unlink()
        assert "Success" in found.final
        return str(answer.StudyInstanceUID)

    assigned = uid_of(LATIN.accession)
    assert re.fullmatch(r"2\.25\.(0|[1-9]\d*)", assigned) and len(assigned) <= 64
    assert assigned != uid_of(ROUTINE.accession)
    assert uid_of(GREEK.accession) == GREEK.study_uid  # a UID the order carries is kept
    history = worklist.get(f"/api/exams/{LATIN.accession}/history").json()["events"]
    assert history[0]["data"]["order"]["study_instance_uid"] == assigned  # recorded, not computed on read

    rebuilt = subprocess.run(
        [sys.executable, "-m", "api.cli", "projections", "rebuild", "worklist"],
        env=worklist.env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert uid_of(LATIN.accession) == assigned


def test_a_cancelled_order_is_no_longer_on_the_worklist(worklist: Stack, scu: Association) -> None:
    answers, status = c_find(scu, identifier(AccessionNumber=CANCELLED.accession, PatientName=""))
    assert status.Status == 0x0000
    assert answers == []
    answers, _ = c_find(scu, identifier(AccessionNumber=ROUTINE.accession, PatientName=""))
    assert [a.PatientName for a in answers] == ["ROE^ROSA"]


def test_only_the_requested_keys_come_back_with_the_values_of_the_order(
    worklist: Stack, scu: Association
) -> None:
    query = identifier(
        step(Modality="", ScheduledProcedureStepID=""),
        AccessionNumber=LATIN.accession,
        PatientID="",
        RequestedProcedurePriority="",
        RequestedProcedureID="",
    )
    [answer], status = c_find(scu, query)
    assert status.Status == 0x0000
    assert {e.keyword for e in answer} == {
        "AccessionNumber",
        "PatientID",
        "ScheduledProcedureStepSequence",
        "RequestedProcedureID",
        "RequestedProcedurePriority",
    }  # no character set either: nothing answered needs one
    assert {e.keyword for e in answer.ScheduledProcedureStepSequence[0]} == {
        "Modality",
        "ScheduledProcedureStepID",
    }
    assert (answer.PatientID, answer.RequestedProcedureID, answer.RequestedProcedurePriority) == (
        "P-L1",
        "RP-L1",
        "STAT",
    )
    assert answer.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID == "RP-L1"


def test_priorities_map_to_stat_high_routine_and_an_order_without_ids_borrows_its_accession(
    worklist: Stack, scu: Association
) -> None:
    query = identifier(
        step(ScheduledProcedureStepID=""),
        AccessionNumber="MWL-?1",
        RequestedProcedurePriority="",
        RequestedProcedureID="",
    )
    answers, _ = c_find(scu, query)
    found = {
        a.AccessionNumber: (
            a.RequestedProcedurePriority,
            a.RequestedProcedureID,
            a.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID,
        )
        for a in answers
    }
    assert found == {
        "MWL-L1": ("STAT", "RP-L1", "RP-L1"),
        "MWL-U1": ("HIGH", "RP-U1", "RP-U1"),
        "MWL-D1": ("ROUTINE", "RP-D1", "RP-D1"),
        "MWL-R1": ("ROUTINE", "MWL-R1", "MWL-R1"),
    }  # MWL-C1 also fits MWL-?1, but it was cancelled


def test_patient_name_wildcards_match_without_regard_to_case_and_a_bare_family_name_is_not_a_prefix(
    worklist: Stack, scu: Association
) -> None:
    answers, _ = c_find(scu, identifier(PatientName="r?e^ric*", AccessionNumber=""))
    assert accessions(answers) == ["MWL-D1", "MWL-D2", "MWL-D3"]
    answers, _ = c_find(scu, identifier(PatientName="ROE", AccessionNumber=""))
    assert answers == []
    answers, _ = c_find(scu, identifier(PatientName="roe^rosa", AccessionNumber=""))
    assert accessions(answers) == ["MWL-R1"]


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # pydicom frowns on wildcards in CS
def test_date_and_time_ranges_and_modality_inside_the_step_select_the_steps_they_cover(
    worklist: Stack, scu: Association
) -> None:
    def steps(**keys: Any) -> list[str]:
        answers, status = c_find(scu, identifier(step(**keys), AccessionNumber=""))
        assert status.Status == 0x0000
        return accessions(answers)

    assert steps(ScheduledProcedureStepStartDate="20261203-20261204") == ["MWL-D1", "MWL-D2"]
    assert steps(ScheduledProcedureStepStartDate="20261204-") == ["MWL-D2", "MWL-D3"]
    assert steps(ScheduledProcedureStepStartDate="-20261201", Modality="MR") == ["MWL-L1"]
    assert steps(
        ScheduledProcedureStepStartDate="20261201-20261205", ScheduledProcedureStepStartTime="1400-1600"
    ) == ["MWL-D3", "MWL-U1"]
    assert steps(Modality="US") == ["MWL-D1", "MWL-D2", "MWL-D3"]
    assert steps(Modality="U?") == ["MWL-D1", "MWL-D2", "MWL-D3"]
    assert steps(Modality="US", ScheduledProcedureStepStartDate="20261205") == ["MWL-D3"]


def test_a_station_ae_title_key_finds_no_step_while_radflow_assigns_no_stations(
    worklist: Stack, scu: Association
) -> None:
    answers, _ = c_find(
        scu, identifier(step(ScheduledStationAETitle="CT01"), AccessionNumber=ROUTINE.accession)
    )
    assert answers == []
    answers, _ = c_find(scu, identifier(step(ScheduledStationAETitle="*"), AccessionNumber=ROUTINE.accession))
    assert accessions(answers) == ["MWL-R1"]


def test_a_key_on_an_attribute_radflow_does_not_hold_is_ignored_with_the_pending_warning_ff01(
    worklist: Stack, scu: Association
) -> None:
    query = identifier(step(ScheduledStationName="A2"), AccessionNumber=ROUTINE.accession, MedicalAlerts="")
    statuses = [s.Status for s, _ in scu.send_c_find(query, ModalityWorklistInformationFind)]
    assert statuses == [0xFF01, 0x0000]


def name_bytes_answered(stack: Stack, tmp_path: Path, query: Dataset) -> tuple[str, bytes]:
    """Send a query file built with pydicom through findscu; the one answer's character set and
    the patient name's bytes exactly as they came over the wire."""
    query.is_little_endian, query.is_implicit_VR = True, False
    path = tmp_path / "query.dcm"
    query.save_as(path, enforce_file_format=False)
    out = tmp_path / "answers"
    out.mkdir()
    found = findscu(stack.dicom_port, "-X", "-od", out, path)
    assert "Success" in found.final, found.log[-2000:]
    [answer] = [dcmread(p) for p in out.glob("rsp*.dcm")]
    raw = answer.get_item(0x00100010).value  # not yet decoded by pydicom
    return str(answer.SpecificCharacterSet), bytes(raw).rstrip(b" ")


def test_a_latin1_name_is_found_by_an_iso_ir_100_query_and_answered_in_latin1(
    worklist: Stack, scu: Association, tmp_path: Path
) -> None:
    query = identifier(SpecificCharacterSet="ISO_IR 100", PatientName="müller^j*", AccessionNumber="")
    [answer], _ = c_find(scu, query)
    assert (answer.SpecificCharacterSet, answer.PatientName) == ("ISO_IR 100", LATIN.name)
    assert name_bytes_answered(worklist, tmp_path, query) == ("ISO_IR 100", LATIN.name.encode("latin-1"))


def test_iso_ir_192_names_round_trip_from_a_utf8_order_to_a_utf8_query(
    worklist: Stack, scu: Association, tmp_path: Path
) -> None:
    query = identifier(SpecificCharacterSet="ISO_IR 192", PatientName="παπαδ*", AccessionNumber="")
    [answer], _ = c_find(scu, query)
    assert (answer.SpecificCharacterSet, answer.PatientName) == ("ISO_IR 192", GREEK.name)
    assert name_bytes_answered(worklist, tmp_path, query) == ("ISO_IR 192", GREEK.name.encode("utf-8"))
    # a query in the default repertoire still gets each name, in a set that can hold it
    [answer], _ = c_find(scu, identifier(PatientID="P-U1", PatientName=""))
    assert (answer.SpecificCharacterSet, answer.PatientName) == ("ISO_IR 192", GREEK.name)
    [answer], _ = c_find(scu, identifier(PatientID="P-L1", PatientName=""))
    assert (answer.SpecificCharacterSet, answer.PatientName) == ("ISO_IR 100", LATIN.name)


def test_a_c_cancel_from_a_pynetdicom_scu_ends_the_answers_with_the_cancel_status(
    worklist: Stack, scu: Association
) -> None:
    """A C-CANCEL races the answers (an SCP that finishes first answers success, PS3.7 9.3.2.3):
    the SCU cancels after the first answer until one lands mid-way; every run must end in one
    of the two legal ways."""
    query = identifier(step(Modality="XA"), AccessionNumber="")
    outcomes = []
    for _ in range(40):
        responses = scu.send_c_find(query, ModalityWorklistInformationFind, msg_id=7)
        first, _ = next(responses)
        assert first.Status == 0xFF00
        scu.send_c_cancel(7, query_model=ModalityWorklistInformationFind)
        statuses = [first.Status, *(status.Status for status, _ in responses)]
        pending, final = statuses[:-1], statuses[-1]
        assert set(pending) == {0xFF00}
        assert (final, len(pending)) == (0x0000, len(MANY)) or (
            final == 0xFE00 and 1 <= len(pending) < len(MANY)
        )
        outcomes.append(final)
        if final == 0xFE00:
            break
    assert 0xFE00 in outcomes, "no cancel landed before the last answer in 40 tries"
    answers, status = c_find(scu, query)  # the association goes on, uncancelled
    assert (status.Status, len(answers)) == (0x0000, len(MANY))


def test_findscu_cancelling_after_one_answer_gets_the_cancel_status(worklist: Stack) -> None:
    outcomes = []
    for _ in range(10):
        found = findscu(
            worklist.dicom_port, "--cancel", "1", "-k", "0008,0050", "-k", "(0040,0100)[0].(0008,0060)=XA"
        )
        assert found.returncode == 0, found.log[-2000:]
        cancelled = "Cancel" in found.final
        assert 1 <= len(found.answers) < len(MANY) if cancelled else len(found.answers) == len(MANY), (
            found.log[-2000:]
        )
        outcomes.append(cancelled)
        if cancelled:
            break
    assert any(outcomes), "findscu's cancel never landed before the last answer in 10 tries"


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # the invalid date is the point
def test_an_invalid_date_range_is_refused_with_0xa900_an_error_comment_and_the_offending_key(
    worklist: Stack, scu: Association
) -> None:
    answers, status = c_find(
        scu, identifier(step(ScheduledProcedureStepStartDate="2026-12-03"), AccessionNumber="")
    )
    assert answers == []
    assert status.Status == 0xA900
    assert "2026-12-03" in status.ErrorComment or "range" in status.ErrorComment
    assert status.OffendingElement == 0x00400002
    answers, status = c_find(scu, identifier(AccessionNumber=ROUTINE.accession))  # still serving
    assert (status.Status, accessions(answers)) == (0x0000, ["MWL-R1"])


def test_a_step_sequence_key_with_two_items_is_refused(worklist: Stack, scu: Association) -> None:
    query = identifier(AccessionNumber="")
    query.ScheduledProcedureStepSequence = [step(Modality="CT"), step(Modality="MR")]
    answers, status = c_find(scu, query)
    assert (answers, status.Status) == ([], 0xA900)
    assert "one item" in status.ErrorComment


def test_each_association_and_query_is_logged_with_the_calling_ae_and_without_patient_names(
    worklist: Stack, scu: Association
) -> None:
    c_find(scu, identifier(PatientName="ROE^RICHARD", PatientID=""))
    c_find(scu, identifier(SpecificCharacterSet="ISO_IR 192", PatientName="παπαδ*"))
    log = worklist.log("listen")
    assert "association accepted" in log and "mwl c-find" in log and "PYNETDICOM" in log
    names = ["ROE^RICHARD", "RICHARD", LATIN.name, GREEK.name, "XU^XIN", "ROSA"]
    for name in names:
        assert name not in log and name.encode("ascii", "backslashreplace").decode() not in log, name


def test_a_query_before_the_worklist_exists_gets_a_failure_status_and_the_listener_keeps_serving(
    tmp_path: Path, temporal_address: str
) -> None:
    """The listener may start before the worker has created the worklist."""
    stack = make_stack(tmp_path, temporal_address)
    stack.start("listen")
    try:
        stack.wait_for_port(stack.dicom_port)
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(ModalityWorklistInformationFind)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", stack.dicom_port, ae_title="RADFLOW")
        answers, status = c_find(assoc, identifier(PatientName=""))
        assert (answers, status.Status) == ([], 0xC001)
        assert "unavailable" in status.ErrorComment
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        assert stack.processes["listen"].poll() is None
    finally:
        stack.stop_all()
