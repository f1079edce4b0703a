"""The MPPS SCP over a real association (pynetdicom SCU -> radflow's AE on a free port) with the
MPPS log on SQLite and on PostgreSQL: what is accepted, queued or refused, with which DIMSE
status and Error Comment, and what is durable by the time the status arrives. No Temporal:
the commands wait in the outbox, which is what these tests read."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydicom.uid import generate_uid

from adapters.message_log import MessageLog
from adapters.mpps_log import MppsLog
from adapters.settings import Settings
from adapters.sql import Database
from interfaces.dicom.mpps import AlreadyLinked, IllegalLink, NotQueued, UnknownAccession, link, mpps_service
from interfaces.dicom.server import start_dicom_server
from tests.integration.builders import orm, record
from tests.integration.mpps_builders import ended, in_progress, mpps_scu, series_item


@dataclass
class Mpps:
    settings: Settings
    hl7: MessageLog
    log: MppsLog
    port: int
    woken: list[int] = field(default_factory=list)

    def order(self, accession: str) -> None:
        assert record(self.hl7, orm(accession, "NW", f"O-{accession}")).status == "accepted"

    def cancel(self, accession: str) -> None:
        assert record(self.hl7, orm(accession, "CA", f"CA-{accession}")).status == "accepted"

    def rows(self, uid: str) -> list[dict[str, Any]]:
        return self.log.messages_of(uid)

    def commands(self, uid: str) -> list[dict[str, Any]]:
        return [entry["command"] for row in self.rows(uid) if row["commands"] for entry in json.loads(row["commands"])]

    def queue(self, uid: str) -> dict[str, Any] | None:
        return next((r for r in self.log.reconciliation(include_linked=True) if r["sop_instance_uid"] == uid), None)


@pytest.fixture(
    scope="module",
    params=[pytest.param("sqlite", id="sqlite"), pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)],
)
def scp(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mpps]:
    """One AE per backend for the module: stopping a pynetdicom server takes half a second."""
    data_dir = tmp_path_factory.mktemp("mpps")
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    settings = Settings(data_dir=data_dir, database_url=url)
    db = Database.for_file(settings, settings.messages_sqlite_path)
    mpps_log = MppsLog(db)
    mpps_log.create_schema()
    woken: list[int] = []
    server = start_dicom_server(settings, [mpps_service(mpps_log, on_accepted=lambda: woken.append(1))], port=0)
    try:
        yield Mpps(settings, MessageLog(db), mpps_log, server.server_address[1], woken)
    finally:
        server.shutdown()
        db.close()


@pytest.fixture
def mpps(scp: Mpps) -> Mpps:
    scp.woken.clear()
    return scp


def test_an_n_create_for_an_ordered_accession_is_stored_before_success_and_waits_in_the_outbox(
    mpps: Mpps, uid: str
) -> None:
    accession, step = f"ACC{uid}", generate_uid()
    mpps.order(accession)
    sent = in_progress(accession)

    with mpps_scu(mpps.port, calling_ae="CT01") as scu:
        reply = scu.create(sent, step)

    assert (reply.status, reply.comment) == (0x0000, "")
    [row] = mpps.rows(step)  # readable from another connection once the status is back
    assert (row["dimse"], row["outcome"], row["dimse_status"], row["accession"]) == ("N-CREATE", "accepted", 0, accession)
    assert (row["calling_ae"], row["called_ae"]) == ("CT01", "RADFLOW")
    assert row["peer"].startswith("127.0.0.1:")
    assert bytes(row["raw"]) and row["transfer_syntax"]
    assert row["relayed_at"] is None
    [start] = mpps.commands(step)
    assert start["kind"] == "start_procedure"
    assert (start["accession"], start["mpps_uid"], start["performed_station_ae"]) == (accession, step, "CT01")
    assert start["started_at"] == "2026-11-28T10:15:00"
    assert start["study_instance_uid"] == sent.ScheduledStepAttributesSequence[0].StudyInstanceUID
    assert start["provenance"]["source"] == {
        "kind": "dicom",
        "application": "CT01",
        "facility": "",
        "control_id": step,
        "message_id": f"mpps:{row['id']}",
    }
    assert row["id"] in {r["id"] for r in mpps.log.unrelayed(limit=100_000)}
    stored = mpps.log.step(step)
    assert stored is not None and (stored.accession, stored.status) == (accession, "IN PROGRESS")
    assert mpps.woken, "the relay is woken for a row with commands"


def test_the_raw_dataset_is_kept_byte_for_byte_as_the_scu_encoded_it(mpps: Mpps, uid: str) -> None:
    from pynetdicom.dsutils import encode

    accession, step = f"ACC{uid}", generate_uid()
    mpps.order(accession)
    sent = in_progress(accession)
    with mpps_scu(mpps.port) as scu:
        assert scu.create(sent, step).status == 0x0000
    [row] = mpps.rows(step)
    # the SCU proposes implicit VR little endian by default; pynetdicom encodes the same way
    assert bytes(row["raw"]) == encode(sent, True, True)


def test_an_n_set_completed_carries_the_referenced_series_and_instances_to_the_exam(mpps: Mpps, uid: str) -> None:
    accession, step = f"ACC{uid}", generate_uid()
    series, images = generate_uid(), [generate_uid(), generate_uid()]
    mpps.order(accession)
    with mpps_scu(mpps.port) as scu:
        assert scu.create(in_progress(accession), step).status == 0x0000
        reply = scu.set(ended("COMPLETED", [series_item(series, images)]), step)

    assert reply.status == 0x0000
    start, complete = mpps.commands(step)
    assert complete["kind"] == "complete_procedure"
    assert (complete["accession"], complete["mpps_uid"], complete["ended_at"]) == (accession, step, "2026-11-28T10:30:00")
    [performed] = complete["series"]
    assert performed["series_instance_uid"] == series
    assert [i["sop_instance_uid"] for i in performed["instances"]] == images
    assert complete["provenance"]["source"]["message_id"] != start["provenance"]["source"]["message_id"]
    stored = mpps.log.step(step)
    assert stored is not None and stored.status == "COMPLETED"


def test_an_n_set_discontinued_carries_the_reason_code(mpps: Mpps, uid: str) -> None:
    accession, step = f"ACC{uid}", generate_uid()
    mpps.order(accession)
    with mpps_scu(mpps.port) as scu:
        assert scu.create(in_progress(accession), step).status == 0x0000
        reply = scu.set(ended("DISCONTINUED", reason=("110514", "Incorrect worklist entry selected", "DCM")), step)
    assert reply.status == 0x0000
    discontinue = mpps.commands(step)[-1]
    assert discontinue["kind"] == "discontinue_procedure"
    assert discontinue["reason"] == "110514^Incorrect worklist entry selected^DCM"


def test_an_n_set_that_keeps_the_step_in_progress_is_stored_but_moves_no_exam(mpps: Mpps, uid: str) -> None:
    accession, step = f"ACC{uid}", generate_uid()
    mpps.order(accession)
    update = in_progress(accession)
    for keyword in list(update.dir()):
        if keyword not in ("PerformedProcedureStepStatus", "PerformedProcedureStepDescription"):
            delattr(update, keyword)
    update.PerformedProcedureStepDescription = "CT head, repeated series"
    with mpps_scu(mpps.port) as scu:
        assert scu.create(in_progress(accession), step).status == 0x0000
        assert scu.set(update, step).status == 0x0000
    rows = mpps.rows(step)
    assert [(r["dimse"], r["outcome"]) for r in rows] == [("N-CREATE", "accepted"), ("N-SET", "accepted")]
    assert rows[1]["commands"] is None
    stored = mpps.log.step(step)
    assert stored is not None and stored.step["description"] == "CT head, repeated series"


# refusals: status, Error Comment, and a refused row in the log


def test_an_n_set_for_an_unknown_instance_is_refused_with_0112(mpps: Mpps) -> None:
    step = generate_uid()
    with mpps_scu(mpps.port) as scu:
        reply = scu.set(ended("COMPLETED"), step)
    assert (reply.status, reply.comment) == (0x0112, "no such MPPS instance")
    [row] = mpps.rows(step)
    assert (row["outcome"], row["dimse_status"], row["error_comment"]) == ("refused", 0x0112, "no such MPPS instance")
    assert row["commands"] is None


@pytest.mark.parametrize(("final", "then"), [("COMPLETED", "DISCONTINUED"), ("DISCONTINUED", "COMPLETED")])
def test_an_n_set_after_the_step_ended_is_refused_with_0110_and_error_id_a710(
    mpps: Mpps, uid: str, final: str, then: str
) -> None:
    accession, step = f"ACC{uid}", generate_uid()
    mpps.order(accession)
    with mpps_scu(mpps.port) as scu:
        assert scu.create(in_progress(accession), step).status == 0x0000
        assert scu.set(ended(final), step).status == 0x0000
        again = scu.set(ended(then), step)
    assert (again.status, again.error_id) == (0x0110, 0xA710)
    assert again.comment == "Performed Procedure Step Object may no longer be updated"
    assert [r["outcome"] for r in mpps.rows(step)] == ["accepted", "accepted", "refused"]
    stored = mpps.log.step(step)
    assert stored is not None and stored.status == final


def test_the_ending_n_set_resent_unchanged_gets_success_again_and_no_second_command(mpps: Mpps, uid: str) -> None:
    """A modality whose N-SET reply was lost sends it again; refusing would leave it retrying."""
    accession, step, series = f"ACC{uid}", generate_uid(), generate_uid()
    mpps.order(accession)
    completed = ended("COMPLETED", [series_item(series, [generate_uid()])])
    with mpps_scu(mpps.port) as scu:
        assert scu.create(in_progress(accession), step).status == 0x0000
        assert scu.set(completed, step).status == 0x0000
        assert scu.set(completed, step).status == 0x0000
    assert [r["outcome"] for r in mpps.rows(step)] == ["accepted", "accepted", "duplicate"]
    assert [c["kind"] for c in mpps.commands(step)] == ["start_procedure", "complete_procedure"]
    assert len(mpps.commands(step)) == 2


def test_a_second_n_create_with_the_same_instance_uid_is_refused_with_0111(mpps: Mpps, uid: str) -> None:
    accession, step = f"ACC{uid}", generate_uid()
    mpps.order(accession)
    with mpps_scu(mpps.port) as scu:
        assert scu.create(in_progress(accession), step).status == 0x0000
        again = scu.create(in_progress(accession), step)
    assert (again.status, again.comment) == (0x0111, "instance exists (IN PROGRESS)")
    assert [r["outcome"] for r in mpps.rows(step)] == ["accepted", "refused"]


def test_an_n_create_without_required_attributes_is_refused_with_0120_naming_them(mpps: Mpps, uid: str) -> None:
    accession, step = f"ACC{uid}", generate_uid()
    mpps.order(accession)
    incomplete = in_progress(accession)
    del incomplete.PerformedStationAETitle
    del incomplete.ScheduledStepAttributesSequence[0].StudyInstanceUID
    with mpps_scu(mpps.port) as scu:
        reply = scu.create(incomplete, step)
    assert (reply.status, reply.comment) == (0x0120, "missing (0040,0241), (0040,0270)[0](0020,000D)")
    [row] = mpps.rows(step)
    assert row["error_comment"] == "missing PerformedStationAETitle, ScheduledStepAttributesSequence[0].StudyInstanceUID"
    assert mpps.log.step(step) is None  # not created: an N-SET for it will be refused


def test_an_n_create_with_an_empty_required_attribute_is_refused_with_0121(mpps: Mpps, uid: str) -> None:
    accession, step = f"ACC{uid}", generate_uid()
    mpps.order(accession)
    empty = in_progress(accession)
    empty.Modality = ""
    with mpps_scu(mpps.port) as scu:
        reply = scu.create(empty, step)
    assert (reply.status, reply.comment) == (0x0121, "no value in (0008,0060)")
    assert mpps.rows(step)[0]["error_comment"] == "no value in Modality"


def test_an_n_create_that_is_not_in_progress_is_refused_with_0106(mpps: Mpps, uid: str) -> None:
    accession, step = f"ACC{uid}", generate_uid()
    mpps.order(accession)
    done = in_progress(accession)
    done.PerformedProcedureStepStatus = "COMPLETED"
    with mpps_scu(mpps.port) as scu:
        reply = scu.create(done, step)
    assert (reply.status, reply.comment) == (0x0106, "N-CREATE status must be IN PROGRESS, not COMPLETED")


def test_an_n_set_to_an_unknown_status_is_refused_with_0106(mpps: Mpps, uid: str) -> None:
    accession, step = f"ACC{uid}", generate_uid()
    mpps.order(accession)
    with mpps_scu(mpps.port) as scu:
        assert scu.create(in_progress(accession), step).status == 0x0000
        reply = scu.set(ended("FINISHED"), step)
    assert (reply.status, reply.comment) == (0x0106, "unknown PerformedProcedureStepStatus FINISHED")


def test_an_n_set_completed_without_end_date_and_time_is_refused_with_0121(mpps: Mpps, uid: str) -> None:
    accession, step = f"ACC{uid}", generate_uid()
    mpps.order(accession)
    bare = ended("COMPLETED")
    del bare.PerformedProcedureStepEndDate
    del bare.PerformedProcedureStepEndTime
    with mpps_scu(mpps.port) as scu:
        assert scu.create(in_progress(accession), step).status == 0x0000
        reply = scu.set(bare, step)
    assert (reply.status, reply.comment) == (0x0121, "COMPLETED: no value in (0040,0250), (0040,0251)")
    assert mpps.rows(step)[-1]["error_comment"] == (
        "COMPLETED: no value in PerformedProcedureStepEndDate, PerformedProcedureStepEndTime"
    )
    stored = mpps.log.step(step)
    assert stored is not None and stored.status == "IN PROGRESS"


def test_an_n_create_for_a_cancelled_order_is_refused_as_an_illegal_state_change(mpps: Mpps, uid: str) -> None:
    accession, step = f"ACC{uid}", generate_uid()
    mpps.order(accession)
    mpps.cancel(accession)
    with mpps_scu(mpps.port) as scu:
        reply = scu.create(in_progress(accession), step)
    assert (reply.status, reply.comment) == (0x0110, f"exam {accession}: cannot start while cancelled")


def test_a_second_step_for_an_exam_already_in_progress_is_refused_as_an_illegal_state_change(
    mpps: Mpps, uid: str
) -> None:
    accession = f"ACC{uid}"
    mpps.order(accession)
    with mpps_scu(mpps.port) as scu:
        assert scu.create(in_progress(accession), generate_uid()).status == 0x0000
        reply = scu.create(in_progress(accession), generate_uid())
    assert (reply.status, reply.comment) == (0x0110, f"exam {accession}: cannot start while in_progress")


def test_an_n_create_without_an_instance_uid_gets_one_assigned_in_the_response(mpps: Mpps, uid: str) -> None:
    accession = f"ACC{uid}"
    mpps.order(accession)
    with mpps_scu(mpps.port) as scu:
        reply = scu.create(in_progress(accession), None)
    assert reply.status == 0x0000
    # pynetdicom's SCU does not hand back the response's Affected SOP Instance UID: read the log
    [row] = mpps.log.db.query("SELECT sop_instance_uid FROM mpps WHERE accession = ?", (accession,))
    assert row["sop_instance_uid"].startswith("2.25.")
    [message] = mpps.rows(row["sop_instance_uid"])
    assert (message["dimse"], message["outcome"]) == ("N-CREATE", "accepted")


# the reconciliation queue


@pytest.mark.parametrize(
    ("accession", "reason"),
    [("UNKNOWN", "unknown accession {}"), (None, "no accession number (unscheduled procedure)")],
    ids=["unknown accession", "no accession"],
)
def test_a_step_no_exam_can_take_is_accepted_and_queued_with_its_later_n_sets(
    mpps: Mpps, uid: str, accession: str | None, reason: str
) -> None:
    claimed = f"{accession}{uid}" if accession else None
    step = generate_uid()
    with mpps_scu(mpps.port) as scu:
        created = scu.create(in_progress(claimed), step)
        completed = scu.set(ended("COMPLETED", [series_item(generate_uid(), [generate_uid()])]), step)
    assert (created.status, completed.status) == (0x0000, 0x0000)
    assert [r["outcome"] for r in mpps.rows(step)] == ["queued", "queued"]
    assert mpps.commands(step) == []
    entry = mpps.queue(step)
    assert entry is not None
    assert entry["reason"] == reason.format(claimed)
    assert (entry["claimed_accession"], entry["status"], entry["linked_at"]) == (claimed or "", "COMPLETED", None)
    assert len(entry["step"]["series"]) == 1


def test_linking_a_queued_step_sends_its_start_and_end_to_the_exam_with_the_reason(mpps: Mpps, uid: str) -> None:
    accession, step = f"ACC{uid}", generate_uid()
    mpps.order(accession)
    with mpps_scu(mpps.port) as scu:
        assert scu.create(in_progress(f"TYPO{uid}"), step).status == 0x0000
        assert scu.set(ended("COMPLETED"), step).status == 0x0000

    rows = link(mpps.log, step, accession, "accession mistyped at the console", "dr.who")

    assert len(rows) == 2
    start, complete = mpps.commands(step)
    assert (start["kind"], complete["kind"]) == ("start_procedure", "complete_procedure")
    assert {start["accession"], complete["accession"]} == {accession}
    for command, row_id in zip((start, complete), rows, strict=True):
        provenance = command["provenance"]
        assert provenance["actor"] == "dr.who"
        assert provenance["source"]["kind"] == "api"
        assert provenance["source"]["message_id"] == f"mpps:{row_id}"
        assert provenance["extra"]["reason"] == "accession mistyped at the console"
        assert len(provenance["extra"]["mpps_messages"]) == 2
    entry = mpps.queue(step)
    assert entry is not None
    assert (entry["linked_accession"], entry["link_reason"], entry["linked_by"]) == (
        accession,
        "accession mistyped at the console",
        "dr.who",
    )
    assert step not in {r["sop_instance_uid"] for r in mpps.log.reconciliation()}
    with pytest.raises(AlreadyLinked):
        link(mpps.log, step, accession, "again", "dr.who")


def test_a_link_is_refused_for_a_step_not_queued_an_unknown_accession_or_an_exam_that_cannot_start(
    mpps: Mpps, uid: str
) -> None:
    accession, queued, attached = f"ACC{uid}", generate_uid(), generate_uid()
    mpps.order(accession)
    with mpps_scu(mpps.port) as scu:
        assert scu.create(in_progress(f"TYPO{uid}"), queued).status == 0x0000
        assert scu.create(in_progress(accession), attached).status == 0x0000
    with pytest.raises(NotQueued):
        link(mpps.log, attached, accession, "reason", "dr.who")
    with pytest.raises(UnknownAccession, match=f"no order with accession NOPE{uid}"):
        link(mpps.log, queued, f"NOPE{uid}", "reason", "dr.who")
    with pytest.raises(IllegalLink, match=f"exam {accession}: cannot start while in_progress"):
        link(mpps.log, queued, accession, "reason", "dr.who")
    entry = mpps.queue(queued)
    assert entry is not None and entry["linked_at"] is None


def test_a_step_its_exam_refused_after_success_goes_to_the_queue_and_its_n_sets_follow_it(
    mpps: Mpps, uid: str
) -> None:
    accession, step = f"ACC{uid}", generate_uid()
    mpps.order(accession)
    with mpps_scu(mpps.port) as scu:
        assert scu.create(in_progress(accession), step).status == 0x0000
        [row] = mpps.rows(step)
        mpps.log.record_outcome(f"mpps:{row['id']}", "refused", f"exam {accession}: cannot start while cancelled")
        assert scu.set(ended("COMPLETED"), step).status == 0x0000

    entry = mpps.queue(step)
    assert entry is not None
    assert entry["reason"] == f"refused by the exam: exam {accession}: cannot start while cancelled"
    assert mpps.rows(step)[0]["applied_status"] == "refused"
    assert mpps.rows(step)[1]["outcome"] == "queued"  # no longer sent to the exam that refused it


def test_a_step_linked_while_in_progress_sends_its_later_n_set_to_the_linked_exam(mpps: Mpps, uid: str) -> None:
    accession, step = f"ACC{uid}", generate_uid()
    mpps.order(accession)
    with mpps_scu(mpps.port) as scu:
        assert scu.create(in_progress(None), step).status == 0x0000
        [start_row] = link(mpps.log, step, accession, "unscheduled trauma CT, order placed afterwards", "dr.who")
        assert scu.set(ended("COMPLETED"), step).status == 0x0000

    rows = mpps.rows(step)
    assert [(r["dimse"], r["outcome"]) for r in rows] == [("N-CREATE", "queued"), ("LINK", "linked"), ("N-SET", "accepted")]
    start, complete = mpps.commands(step)
    assert (start["kind"], start["provenance"]["source"]["kind"]) == ("start_procedure", "api")
    assert (complete["kind"], complete["accession"]) == ("complete_procedure", accession)
    assert complete["provenance"]["source"]["kind"] == "dicom"  # the modality's own N-SET
    stored = mpps.log.step(step)
    assert stored is not None and (stored.accession, stored.status) == (accession, "COMPLETED")


def test_the_cli_links_a_queued_step_and_refuses_a_blank_reason(
    mpps: Mpps, uid: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from api.cli import main

    accession, step = f"ACC{uid}", generate_uid()
    mpps.order(accession)
    with mpps_scu(mpps.port) as scu:
        assert scu.create(in_progress(f"TYPO{uid}"), step).status == 0x0000
    monkeypatch.setenv("RADFLOW_DATA_DIR", str(mpps.settings.data_dir))
    monkeypatch.setenv("RADFLOW_DATABASE_URL", mpps.settings.database_url)

    assert main(["reconcile", "link", step, accession, "--reason", " "]) == 2
    assert main(["reconcile", "link", step, f"NOPE{uid}", "--reason", "typo"]) == 1
    assert "no order with accession" in capsys.readouterr().err
    assert main(["reconcile", "link", step, accession, "--reason", "typo at the console", "--user", "jsmith"]) == 0
    assert f"linked {step} to exam {accession}" in capsys.readouterr().out
    entry = mpps.queue(step)
    assert entry is not None and (entry["linked_accession"], entry["linked_by"]) == (accession, "jsmith")
