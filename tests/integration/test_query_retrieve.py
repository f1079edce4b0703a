"""The Query/Retrieve SCP in-process, on SQLite and on PostgreSQL: studies stored as events, the
PACS index built from them by its projection runner, real files on disk, and pynetdicom SCUs
(and a pynetdicom storage SCP as the C-MOVE destination) on the other end of real associations.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from adapters.dicom_config import DicomConfig, Peer
from adapters.event_store import EventStore
from adapters.settings import Settings
from adapters.sql import Database
from interfaces.dicom.matching import InvalidQuery
from interfaces.dicom.pacs_query import PATIENT_ROOT, STUDY_ROOT, compile_find, retrieve_keys
from interfaces.dicom.query_retrieve import guard_reactor, query_retrieve_service
from interfaces.dicom.server import start_dicom_server
from tests.conftest import free_port
from tests.dicom_builders import StudySpec
from tests.qr_pacs import SeriesSpec, StoredStudy, build_pacs_index, dataset_bytes, store_study

FIND_MODELS = [
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
]
MOVE_MODELS = [PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove]
GET_MODELS = [PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet]
DESTINATION = "QRDEST"


# --- a storage SCP standing for the C-MOVE destination -----------------------------------------


@dataclass
class Received:
    sop_instance_uid: str
    data: bytes
    transfer_syntax: str
    originator: str


@dataclass
class Destination:
    """A pynetdicom storage SCP with Nagle off (a fast peer: what brings out pynetdicom #875)."""

    port: int
    received: list[Received] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    server: Any = None

    def handle_store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        if uid in self.refuse:
            return 0xA700
        self.received.append(
            Received(
                uid,
                event.encoded_dataset(include_meta=False),
                str(event.context.transfer_syntax),
                str(event.request.MoveOriginatorApplicationEntityTitle or ""),
            )
        )
        return 0x0000


def _nodelay(event: Any) -> None:
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def start_destination(syntaxes: list[str] | None = None) -> Destination:
    destination = Destination(free_port())
    ae = AE(ae_title=DESTINATION)
    ae.add_supported_context(CTImageStorage, syntaxes or [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    destination.server = ae.start_server(
        ("127.0.0.1", destination.port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, destination.handle_store), (evt.EVT_CONN_OPEN, _nodelay)],
    )
    return destination


def shut_down(*servers: Any) -> None:
    """Each pynetdicom server takes up to its 0.5 s poll interval to stop: stop them together."""
    threads = [threading.Thread(target=server.shutdown) for server in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def index_db(settings: Settings) -> Iterator[Database]:
    db = Database.for_file(settings, settings.projections_sqlite_path)
    try:
        yield db
    finally:
        db.close()


@dataclass
class Pacs:
    port: int
    patient: str
    studies: list[StoredStudy]
    destination: Destination
    store: EventStore
    db: Database
    folder: Path

    def add(self, spec: StudySpec, series: list[SeriesSpec], **options: Any) -> StoredStudy:
        study = store_study(self.store, self.folder, spec, series, **options)
        build_pacs_index(self.store, self.db)
        return study


@pytest.fixture
def pacs(
    settings: Settings, store: EventStore, index_db: Database, tmp_path: Path, uid: str
) -> Iterator[Pacs]:
    """Two studies of one patient (CT 3+2 instances, and an older MR of 1), one of another patient."""
    folder = tmp_path / "dicom"
    patient = f"P{uid}"
    studies = [
        store_study(
            store,
            folder,
            StudySpec(f"A{uid}", patient, "DOE^JANE", study_date="20261128"),
            [SeriesSpec(3), SeriesSpec(2, description="coronal")],
        ),
        store_study(
            store,
            folder,
            StudySpec(f"B{uid}", patient, "DOE^JANE", study_date="20250301"),
            [SeriesSpec(1, modality="MR")],
            description="MR brain",
        ),
        store_study(
            store,
            folder,
            StudySpec(f"C{uid}", f"Q{uid}", "ROE^RICHARD", study_date="20261128"),
            [SeriesSpec(2)],
        ),
    ]
    build_pacs_index(store, index_db)
    destination = start_destination()
    config = DicomConfig(
        peers={
            DESTINATION: Peer(DESTINATION, "127.0.0.1", destination.port),
            "NOBODY": Peer("NOBODY", "127.0.0.1", free_port()),
        }
    )
    port = free_port()
    server = start_dicom_server(settings, [query_retrieve_service(settings, config, index_db)], port=port)
    try:
        yield Pacs(port, patient, studies, destination, store, index_db, folder)
    finally:
        shut_down(server, destination.server)


def associate(pacs: Pacs, *contexts: Any, **options: Any) -> Association:
    ae = AE(ae_title="QRSCU")
    for context in contexts:
        if isinstance(context, tuple):
            ae.add_requested_context(*context)
        else:
            ae.add_requested_context(context)
    handlers = [*options.pop("evt_handlers", []), (evt.EVT_CONN_OPEN, _nodelay)]
    assoc = ae.associate("127.0.0.1", pacs.port, ae_title="RADFLOW", evt_handlers=handlers, **options)
    assert assoc.is_established
    # a fast SCU like the peers in the Orthanc bench: Nagle off, and its reactor kept off the
    # responses (pynetdicom #875) since every exchange here is driven by the test's thread
    guard_reactor(assoc)
    return assoc


def identifier(level: str, **keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _without_level() -> Dataset:
    ds = Dataset()
    ds.PatientID = "P1"
    ds.StudyInstanceUID = ""
    return ds


def find(
    pacs: Pacs, query: Dataset, model: Any = StudyRootQueryRetrieveInformationModelFind
) -> tuple[list[Dataset], Dataset]:
    assoc = associate(pacs, model)
    try:
        return find_on(assoc, query, model)
    finally:
        assoc.release()


def find_on(assoc: Association, query: Dataset, model: Any) -> tuple[list[Dataset], Dataset]:
    matches: list[Dataset] = []
    final = Dataset()
    for status, answer in assoc.send_c_find(query, model):
        assert status, "no response from the SCP"
        if status.Status in (0xFF00, 0xFF01):
            assert answer is not None
            matches.append(answer)
        else:
            final = status
    return matches, final


# --- C-FIND -------------------------------------------------------------------------------------


def test_a_study_query_by_patient_id_returns_all_of_the_patients_studies_with_only_the_asked_keys(
    pacs: Pacs,
) -> None:
    query = identifier(
        "STUDY",
        PatientID=pacs.patient,
        StudyInstanceUID="",
        StudyDate="",
        AccessionNumber="",
        ModalitiesInStudy="",
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
        PatientName="",
    )

    matches, final = find(pacs, query)

    assert final.Status == 0x0000
    by_uid = {m.StudyInstanceUID: m for m in matches}
    assert set(by_uid) == {pacs.studies[0].uid, pacs.studies[1].uid}
    ct, mr = by_uid[pacs.studies[0].uid], by_uid[pacs.studies[1].uid]
    assert (ct.NumberOfStudyRelatedSeries, ct.NumberOfStudyRelatedInstances, ct.ModalitiesInStudy) == (
        2,
        5,
        "CT",
    )
    assert (mr.NumberOfStudyRelatedSeries, mr.NumberOfStudyRelatedInstances, mr.ModalitiesInStudy) == (
        1,
        1,
        "MR",
    )
    assert ct.PatientName == "DOE^JANE" and ct.AccessionNumber == pacs.studies[0].spec.accession
    assert ct.QueryRetrieveLevel == "STUDY" and ct.RetrieveAETitle == "RADFLOW"
    asked = {e.keyword for e in query} | {"RetrieveAETitle"}
    assert {e.keyword for e in ct} == asked  # nothing unasked but the Retrieve AE Title
    assert [m.StudyDate for m in matches] == sorted(m.StudyDate for m in matches)


def test_the_patient_level_groups_studies_by_patient_id_with_related_counts(pacs: Pacs) -> None:
    matches, final = find(
        pacs,
        identifier(
            "PATIENT",
            PatientID=pacs.patient,
            PatientName="",
            PatientSex="",
            NumberOfPatientRelatedStudies="",
            NumberOfPatientRelatedSeries="",
            NumberOfPatientRelatedInstances="",
        ),
        PatientRootQueryRetrieveInformationModelFind,
    )

    assert final.Status == 0x0000
    assert len(matches) == 1
    patient = matches[0]
    assert (patient.PatientID, patient.PatientName, patient.PatientSex) == (pacs.patient, "DOE^JANE", "F")
    assert (
        patient.NumberOfPatientRelatedStudies,
        patient.NumberOfPatientRelatedSeries,
        patient.NumberOfPatientRelatedInstances,
    ) == (2, 3, 6)


@pytest.mark.parametrize("model", FIND_MODELS, ids=["patient-root", "study-root"])
def test_series_and_image_levels_answer_below_the_unique_keys_above_them(pacs: Pacs, model: Any) -> None:
    study = pacs.studies[0]
    above = {"PatientID": pacs.patient} if model == PatientRootQueryRetrieveInformationModelFind else {}
    series, final = find(
        pacs,
        identifier(
            "SERIES",
            StudyInstanceUID=study.uid,
            SeriesInstanceUID="",
            Modality="",
            SeriesNumber="",
            SeriesDescription="",
            NumberOfSeriesRelatedInstances="",
            **above,
        ),
        model,
    )
    assert final.Status == 0x0000
    assert [(s.SeriesInstanceUID, s.SeriesNumber, s.NumberOfSeriesRelatedInstances) for s in series] == [
        (study.series[0].series_instance_uid, 1, 3),
        (study.series[1].series_instance_uid, 2, 2),
    ]
    assert all(s.QueryRetrieveLevel == "SERIES" and s.StudyInstanceUID == study.uid for s in series)

    images, final = find(
        pacs,
        identifier(
            "IMAGE",
            StudyInstanceUID=study.uid,
            SeriesInstanceUID=study.series[0].series_instance_uid,
            SOPInstanceUID="",
            SOPClassUID="",
            InstanceNumber="",
            **above,
        ),
        model,
    )
    assert final.Status == 0x0000
    assert [i.InstanceNumber for i in images] == [1, 2, 3]
    assert {i.SOPInstanceUID for i in images} <= set(study.files)
    assert all(i.SOPClassUID == CTImageStorage for i in images)


def test_a_patient_of_another_id_does_not_see_the_series_of_a_study_that_is_not_theirs(pacs: Pacs) -> None:
    series, final = find(
        pacs,
        identifier(
            "SERIES",
            PatientID=f"Q{pacs.patient[1:]}",
            StudyInstanceUID=pacs.studies[0].uid,
            SeriesInstanceUID="",
        ),
        PatientRootQueryRetrieveInformationModelFind,
    )
    assert final.Status == 0x0000 and series == []


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # pydicom frowns on wildcards in CS
def test_wildcards_date_ranges_and_uid_lists_match_as_dicom_says(pacs: Pacs) -> None:
    uid = pacs.patient[1:]
    cases = [
        (identifier("STUDY", PatientName="doe^j*", PatientID=f"?{uid}", StudyInstanceUID=""), {0, 1}),
        (identifier("STUDY", PatientID=f"*{uid}", StudyDate="20260101-", StudyInstanceUID=""), {0, 2}),
        (identifier("STUDY", PatientID=f"*{uid}", StudyDate="-20251231", StudyInstanceUID=""), {1}),
        (identifier("STUDY", PatientID=f"*{uid}", StudyDate="20250301", StudyInstanceUID=""), {1}),
        (identifier("STUDY", PatientID=f"*{uid}", ModalitiesInStudy="M?", StudyInstanceUID=""), {1}),
        (identifier("STUDY", AccessionNumber=f"C{uid}", StudyInstanceUID=""), {2}),
        (identifier("STUDY", StudyInstanceUID=[pacs.studies[0].uid, pacs.studies[2].uid]), {0, 2}),
    ]
    for query, expected in cases:
        matches, final = find(pacs, query)
        assert final.Status == 0x0000, query
        assert {m.StudyInstanceUID for m in matches} == {pacs.studies[i].uid for i in expected}, query


@pytest.mark.parametrize(
    ("model", "query", "offending"),
    [
        (StudyRootQueryRetrieveInformationModelFind, identifier("SERIES", SeriesInstanceUID=""), 0x0020000D),
        (PatientRootQueryRetrieveInformationModelFind, identifier("STUDY", StudyInstanceUID=""), 0x00100020),
        (
            PatientRootQueryRetrieveInformationModelFind,
            identifier("STUDY", PatientID="P*", StudyInstanceUID=""),
            0x00100020,
        ),
        (
            StudyRootQueryRetrieveInformationModelFind,
            identifier("IMAGE", StudyInstanceUID="1.2.3", SeriesInstanceUID=["1.2.4", "1.2.5"]),
            0x0020000E,
        ),
        (StudyRootQueryRetrieveInformationModelFind, identifier("PATIENT", PatientID=""), 0x00080052),
        (StudyRootQueryRetrieveInformationModelFind, _without_level(), 0x00080052),
        (
            StudyRootQueryRetrieveInformationModelFind,
            identifier("STUDY", StudyDate="2024-2025-2026"),
            0x00080020,
        ),
    ],
    ids=[
        "series-without-study",
        "study-without-patient",
        "wildcard-patient",
        "uid-list-above",
        "patient-in-study-root",
        "no-level",
        "bad-range",
    ],
)
def test_a_query_breaking_the_hierarchical_rules_is_refused_with_a_reason(
    pacs: Pacs, model: Any, query: Dataset, offending: int
) -> None:
    matches, final = find(pacs, query, model)

    assert matches == []
    assert final.Status == 0xA900
    assert final.ErrorComment
    assert final.OffendingElement == offending


def test_a_cancelled_query_stops_with_the_cancel_status(pacs: Pacs, uid: str) -> None:
    many = pacs.add(StudySpec(f"M{uid}", f"M{uid}"), [SeriesSpec(3000)], write_files=False)
    assoc = associate(pacs, StudyRootQueryRetrieveInformationModelFind)
    query = identifier(
        "IMAGE",
        StudyInstanceUID=many.uid,
        SeriesInstanceUID=many.series[0].series_instance_uid,
        SOPInstanceUID="",
    )
    statuses = []
    # the cancel goes out once the first response is read: radflow's DUL reads it between the
    # responses it sends (pynetdicom's own loop read nothing while it had a response to send,
    # so the cancel waited behind all 3,000)
    try:
        for status, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind, msg_id=7):
            statuses.append(status.Status)
            if len(statuses) == 1:
                assoc.send_c_cancel(7, query_model=StudyRootQueryRetrieveInformationModelFind)
    finally:
        assoc.release()
    assert statuses[-1] == 0xFE00
    assert 0 < len(statuses) - 1 < 3000


def test_non_latin_names_are_answered_in_a_character_set_that_holds_them(pacs: Pacs, uid: str) -> None:
    pacs.add(StudySpec(f"U{uid}", f"U{uid}", "GÜNTHER^JOSÉ"), [SeriesSpec(1)])
    pacs.add(StudySpec(f"K{uid}", f"K{uid}", "山田^太郎"), [SeriesSpec(1)])

    (latin,), _ = find(pacs, identifier("STUDY", PatientID=f"U{uid}", PatientName=""))
    (utf8,), _ = find(pacs, identifier("STUDY", PatientID=f"K{uid}", PatientName=""))

    assert (latin.SpecificCharacterSet, latin.PatientName) == ("ISO_IR 100", "GÜNTHER^JOSÉ")
    assert (utf8.SpecificCharacterSet, utf8.PatientName) == ("ISO_IR 192", "山田^太郎")


def test_sixty_study_queries_over_one_reused_association_all_answer_alike(pacs: Pacs) -> None:
    """Latency is measured by bench/dicom.py; here: a reused association keeps answering."""
    assoc = associate(pacs, StudyRootQueryRetrieveInformationModelFind)
    query = identifier(
        "STUDY",
        PatientID=pacs.patient,
        StudyInstanceUID="",
        StudyDate="",
        AccessionNumber="",
        ModalitiesInStudy="",
    )
    timings = []
    try:
        for _ in range(60):
            started = time.perf_counter()
            matches, final = find_on(assoc, query, StudyRootQueryRetrieveInformationModelFind)
            timings.append((time.perf_counter() - started) * 1000)
            assert final.Status == 0x0000 and len(matches) == 2
    finally:
        assoc.release()
    print(f"\nC-FIND study by PatientID, reused association: median {statistics.median(timings[10:]):.2f} ms")


# --- C-MOVE -------------------------------------------------------------------------------------


def move(
    pacs: Pacs, query: Dataset, model: Any, destination: str = DESTINATION
) -> tuple[list[Dataset], Dataset]:
    assoc = associate(pacs, model)
    pending: list[Dataset] = []
    final = Dataset()
    try:
        for status, answer in assoc.send_c_move(query, destination, model):
            assert status, "no response from the SCP"
            if status.Status == 0xFF00:
                pending.append(status)
            else:
                final = status
                final.identifier = answer
    finally:
        assoc.release()
    return pending, final


@pytest.mark.parametrize("model", MOVE_MODELS, ids=["patient-root", "study-root"])
def test_a_moved_study_arrives_byte_exact_at_the_destination_with_counted_sub_operations(
    pacs: Pacs, model: Any
) -> None:
    study = pacs.studies[0]
    above = {"PatientID": pacs.patient} if model == PatientRootQueryRetrieveInformationModelMove else {}

    pending, final = move(pacs, identifier("STUDY", StudyInstanceUID=study.uid, **above), model)

    assert final.Status == 0x0000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (5, 0)
    assert [p.NumberOfRemainingSuboperations for p in pending] == [4, 3, 2, 1]
    received = {r.sop_instance_uid: r for r in pacs.destination.received}
    assert set(received) == set(study.files)
    for sop, path in study.files.items():
        assert received[sop].data == dataset_bytes(path)
        assert received[sop].transfer_syntax == ExplicitVRLittleEndian
        assert received[sop].originator == "QRSCU"


def test_a_patient_level_move_sends_every_study_of_the_patient(pacs: Pacs) -> None:
    _, final = move(
        pacs, identifier("PATIENT", PatientID=pacs.patient), PatientRootQueryRetrieveInformationModelMove
    )

    assert (final.Status, final.NumberOfCompletedSuboperations) == (0x0000, 6)
    assert {r.sop_instance_uid for r in pacs.destination.received} == set(pacs.studies[0].files) | set(
        pacs.studies[1].files
    )


def test_series_and_image_level_moves_send_only_what_they_name(pacs: Pacs) -> None:
    study = pacs.studies[0]
    series = study.series[1].series_instance_uid
    _, final = move(
        pacs,
        identifier("SERIES", StudyInstanceUID=study.uid, SeriesInstanceUID=series),
        StudyRootQueryRetrieveInformationModelMove,
    )
    assert (final.Status, final.NumberOfCompletedSuboperations) == (0x0000, 2)

    one = next(iter(study.files))
    image_series = next(p.parent.name for s, p in study.files.items() if s == one)
    _, final = move(
        pacs,
        identifier("IMAGE", StudyInstanceUID=study.uid, SeriesInstanceUID=image_series, SOPInstanceUID=one),
        StudyRootQueryRetrieveInformationModelMove,
    )
    assert (final.Status, final.NumberOfCompletedSuboperations) == (0x0000, 1)
    assert len(pacs.destination.received) == 3


def test_a_move_to_an_unknown_destination_is_refused_with_a801_and_a_reason(pacs: Pacs) -> None:
    pending, final = move(
        pacs,
        identifier("STUDY", StudyInstanceUID=pacs.studies[0].uid),
        StudyRootQueryRetrieveInformationModelMove,
        "STRANGER",
    )

    assert pending == []
    assert final.Status == 0xA801
    assert "STRANGER" in final.ErrorComment
    assert pacs.destination.received == []


def test_a_move_to_an_unreachable_destination_fails_every_sub_operation(pacs: Pacs) -> None:
    _, final = move(
        pacs,
        identifier("STUDY", StudyInstanceUID=pacs.studies[1].uid),
        StudyRootQueryRetrieveInformationModelMove,
        "NOBODY",
    )

    assert final.Status == 0xA702
    assert "NOBODY" in final.ErrorComment
    assert final.NumberOfFailedSuboperations == 1


def test_a_move_without_its_unique_key_is_refused_before_anything_is_sent(pacs: Pacs) -> None:
    _, final = move(
        pacs, identifier("SERIES", SeriesInstanceUID="1.2.3"), StudyRootQueryRetrieveInformationModelMove
    )

    assert final.Status == 0xA900 and final.ErrorComment
    assert pacs.destination.received == []


def test_refused_and_missing_instances_are_listed_as_failed_and_the_rest_still_sent(pacs: Pacs) -> None:
    study = pacs.studies[0]
    refused, missing, *_ = sorted(study.files)
    pacs.destination.refuse.add(refused)
    study.files[missing].unlink()

    _, final = move(
        pacs, identifier("STUDY", StudyInstanceUID=study.uid), StudyRootQueryRetrieveInformationModelMove
    )

    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (3, 2)
    assert set(final.identifier.FailedSOPInstanceUIDList) == {refused, missing}
    assert len(pacs.destination.received) == 3


def test_when_no_instance_can_be_sent_the_move_fails_with_a702(pacs: Pacs) -> None:
    study = pacs.studies[2]
    pacs.destination.refuse.update(study.files)

    _, final = move(
        pacs, identifier("STUDY", StudyInstanceUID=study.uid), StudyRootQueryRetrieveInformationModelMove
    )

    assert final.Status == 0xA702 and final.ErrorComment
    assert final.NumberOfFailedSuboperations == 2
    assert set(final.identifier.FailedSOPInstanceUIDList) == set(study.files)


def test_a_destination_that_takes_only_implicit_vr_gets_converted_data_sets(
    pacs: Pacs, tmp_path: Path
) -> None:
    implicit = start_destination([ImplicitVRLittleEndian])
    config = DicomConfig(peers={DESTINATION: Peer(DESTINATION, "127.0.0.1", implicit.port)})
    settings = Settings(data_dir=tmp_path, database_url="")
    port = free_port()
    server = start_dicom_server(settings, [query_retrieve_service(settings, config, pacs.db)], port=port)
    try:
        study = pacs.studies[2]
        _, final = move(
            Pacs(port, pacs.patient, pacs.studies, implicit, pacs.store, pacs.db, pacs.folder),
            identifier("STUDY", StudyInstanceUID=study.uid),
            StudyRootQueryRetrieveInformationModelMove,
        )
    finally:
        shut_down(server, implicit.server)
    assert (final.Status, final.NumberOfCompletedSuboperations) == (0x0000, 2)
    assert {r.transfer_syntax for r in implicit.received} == {ImplicitVRLittleEndian}


def test_a_forty_instance_move_to_a_fast_peer_loses_no_c_store_response(pacs: Pacs, uid: str) -> None:
    """pynetdicom #875: with Nagle off and sub-millisecond replies its reactor could swallow a
    C-STORE response and the move would hang for the DIMSE timeout."""
    big = pacs.add(StudySpec(f"F{uid}", f"F{uid}"), [SeriesSpec(40)])
    timings = []
    for _ in range(3):
        pacs.destination.received.clear()
        started = time.perf_counter()
        _, final = move(
            pacs, identifier("STUDY", StudyInstanceUID=big.uid), StudyRootQueryRetrieveInformationModelMove
        )
        timings.append(time.perf_counter() - started)
        assert (final.Status, final.NumberOfCompletedSuboperations) == (0x0000, 40)
        assert len(pacs.destination.received) == 40
    best = min(timings)
    print(f"\nC-MOVE 40 instances: {best * 1000:.0f} ms ({40 / best:.0f} instances/s)")
    assert best < 5  # a lost response would cost the 30 s DIMSE timeout


def cancelled_after_the_first_response(assoc: Any, responses: Iterator[Any], msg_id: int, model: Any) -> Any:
    """Sends a C-CANCEL once the first (pending) response is in; the final response, which
    must say Cancel and count what remains."""
    statuses = []
    try:
        for status, _ in responses:
            statuses.append(status)
            if len(statuses) == 1:
                assoc.send_c_cancel(msg_id, query_model=model)
    finally:
        assoc.release()
    final = statuses[-1]
    assert final.Status == 0xFE00
    assert final.NumberOfRemainingSuboperations > 0
    return final


def test_a_cancelled_move_reports_what_remains(pacs: Pacs, uid: str) -> None:
    big = pacs.add(StudySpec(f"X{uid}", f"X{uid}"), [SeriesSpec(60)])
    model = StudyRootQueryRetrieveInformationModelMove
    assoc = associate(pacs, model)
    responses = assoc.send_c_move(identifier("STUDY", StudyInstanceUID=big.uid), DESTINATION, model, msg_id=9)
    final = cancelled_after_the_first_response(assoc, responses, 9, model)
    assert final.NumberOfCompletedSuboperations + final.NumberOfRemainingSuboperations == 60


# --- C-GET --------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", GET_MODELS, ids=["patient-root", "study-root"])
def test_a_get_sends_the_study_back_on_the_same_association_byte_exact(pacs: Pacs, model: Any) -> None:
    study = pacs.studies[0]
    above = {"PatientID": pacs.patient} if model == PatientRootQueryRetrieveInformationModelGet else {}
    received: dict[str, bytes] = {}
    lock = threading.Lock()

    def on_store(event: Any) -> int:
        with lock:
            received[str(event.request.AffectedSOPInstanceUID)] = event.encoded_dataset(include_meta=False)
        return 0x0000

    assoc = associate(
        pacs,
        model,
        (CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    statuses = []
    try:
        for status, _ in assoc.send_c_get(identifier("STUDY", StudyInstanceUID=study.uid, **above), model):
            statuses.append(status)
    finally:
        assoc.release()

    final = statuses[-1]
    assert final.Status == 0x0000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (5, 0)
    assert set(received) == set(study.files)
    assert all(received[sop] == dataset_bytes(path) for sop, path in study.files.items())


def test_a_cancelled_get_stops_and_reports_what_remains(pacs: Pacs, uid: str) -> None:
    """The C-CANCEL arrives on the association whose C-STORE replies the handler reads itself
    (the DUL is lent to it): it is read between two sub-operations, not after the last."""
    big = pacs.add(StudySpec(f"G{uid}", f"G{uid}"), [SeriesSpec(60)])
    model = StudyRootQueryRetrieveInformationModelGet
    assoc = associate(
        pacs,
        model,
        (CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)],
    )
    responses = assoc.send_c_get(identifier("STUDY", StudyInstanceUID=big.uid), model, msg_id=7)
    final = cancelled_after_the_first_response(assoc, responses, 7, model)
    assert final.NumberOfCompletedSuboperations + final.NumberOfRemainingSuboperations == 60


def test_a_get_without_the_storage_role_fails_every_sub_operation_with_a_reason(pacs: Pacs) -> None:
    assoc = associate(pacs, StudyRootQueryRetrieveInformationModelGet)
    try:
        statuses = [
            s
            for s, _ in assoc.send_c_get(
                identifier("STUDY", StudyInstanceUID=pacs.studies[1].uid),
                StudyRootQueryRetrieveInformationModelGet,
            )
        ]
    finally:
        assoc.release()
    assert statuses[-1].Status == 0xA702
    assert statuses[-1].ErrorComment


# --- identifiers from outside ------------------------------------------------------------------

KEYWORDS = [
    "QueryRetrieveLevel",
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "StudyDate",
    "PatientName",
    "Modality",
]
texts = st.one_of(
    st.text(alphabet="0123456789.*?-^\\ ABCDEFGHIJKLMNOPQRSTUVWXYZ", max_size=24),
    st.sampled_from(["PATIENT", "STUDY", "SERIES", "IMAGE", "", "*", "1.2.3\\1.2.4"]),
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(KEYWORDS), texts, max_size=6), st.sampled_from([PATIENT_ROOT, STUDY_ROOT])
)
@pytest.mark.filterwarnings("ignore")  # pydicom warns about values invalid for their VR
def test_any_identifier_is_either_compiled_or_refused_as_an_invalid_query(
    keys: dict[str, str], model: str
) -> None:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    for parse in (compile_find, retrieve_keys):
        try:
            parse(ds, model)
        except InvalidQuery as error:
            assert error.reason
