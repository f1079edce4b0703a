"""The worklist projection on SQLite and on PostgreSQL, fed by commands applied to a real event
store: rows follow the events exactly once, rebuild reproduces them, concurrent runners agree."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from activities.apply_command import CommandActivities
from adapters.event_store import EventStore
from adapters.settings import Settings
from adapters.sql import Cursor, Database
from projections.runner import ProjectionRunner
from projections.worklist import WorklistProjection
from tests.integration.builders import cancel_order, place_order, register_patient, update_patient


@pytest.fixture
def projection_db(settings: Settings) -> Iterator[Database]:
    db = Database.for_file(settings, settings.projections_sqlite_path)
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def runner(store: EventStore, projection_db: Database) -> ProjectionRunner:
    runner = ProjectionRunner(store, projection_db, WorklistProjection())
    runner.create_schema()
    return runner


def apply_all(store: EventStore, *commands: dict[str, Any]) -> list[dict[str, Any]]:
    activities = CommandActivities(store, None)
    return [activities.apply_command(command) for command in commands]


def rows(db: Database, uid: str) -> dict[str, dict[str, Any]]:
    found = db.query("SELECT * FROM worklist WHERE accession LIKE ? ORDER BY accession", (f"%{uid}%",))
    return {row["accession"]: row for row in found}


def whole_worklist(db: Database) -> list[dict[str, Any]]:
    return db.query("SELECT * FROM worklist ORDER BY accession")


def an_exam_history(uid: str) -> list[dict[str, Any]]:
    """A patient with two exams, one cancelled, then renamed; and a cancel nobody ordered."""
    p = f"P{uid}"
    return [
        register_patient(p, f"{uid}-1", name="DOE^JANE"),
        place_order(f"A{uid}", f"{uid}-2", patient_id=p),
        place_order(f"B{uid}", f"{uid}-3", patient_id=p, modality="MR"),
        cancel_order(f"B{uid}", f"{uid}-4"),
        update_patient(p, f"{uid}-5", name="ROE^JANE"),
        cancel_order(f"NEVER{uid}", f"{uid}-6"),
    ]


def test_catch_up_builds_one_row_per_exam_with_its_latest_state_and_patient_name(
    store: EventStore, runner: ProjectionRunner, uid: str
) -> None:
    outcomes = apply_all(store, *an_exam_history(uid))
    assert [o["status"] for o in outcomes] == ["applied"] * 5 + ["refused"]

    runner.catch_up()

    worklist = rows(runner.db, uid)
    assert sorted(worklist) == [f"A{uid}", f"B{uid}"]
    a, b = worklist[f"A{uid}"], worklist[f"B{uid}"]
    assert (a["state"], b["state"]) == ("ordered", "cancelled")
    assert (a["patient_name"], b["patient_name"]) == ("ROE^JANE", "ROE^JANE")
    assert (a["patient_id"], a["patient_issuer"]) == (f"P{uid}", "HOSP")
    assert (a["modality"], b["modality"]) == ("CT", "MR")
    assert (a["procedure_code"], a["procedure_text"], a["priority"]) == (
        "CTHEAD",
        "CT head without contrast",
        "STAT",
    )
    assert (a["scheduled_at"], a["requested_procedure_id"]) == ("2024-03-16T09:00:00", f"RP-A{uid}")
    assert b["updated_at"] >= b["ordered_at"]


def test_catching_up_twice_applies_each_event_exactly_once(
    store: EventStore, runner: ProjectionRunner, uid: str
) -> None:
    apply_all(store, *an_exam_history(uid))
    assert runner.lag() > 0
    assert runner.catch_up() > 0
    after_first = whole_worklist(runner.db)

    assert runner.catch_up() == 0
    assert whole_worklist(runner.db) == after_first
    assert runner.position() == store.max_notification_id()
    assert runner.lag() == 0


def test_lag_counts_new_events_until_the_runner_catches_up(
    store: EventStore, runner: ProjectionRunner, uid: str
) -> None:
    apply_all(store, place_order(f"A{uid}", f"{uid}-1", patient_id=f"P{uid}"))
    runner.catch_up()
    assert runner.lag() == 0

    apply_all(
        store, cancel_order(f"A{uid}", f"{uid}-2"), place_order(f"B{uid}", f"{uid}-3", patient_id=f"P{uid}")
    )
    assert runner.lag() == 2
    assert rows(runner.db, uid)[f"A{uid}"]["state"] == "ordered"

    assert runner.catch_up() == 2
    assert runner.lag() == 0
    assert {k: r["state"] for k, r in rows(runner.db, uid).items()} == {
        f"A{uid}": "cancelled",
        f"B{uid}": "ordered",
    }


def test_rebuild_reproduces_the_same_rows_from_the_store(
    store: EventStore, runner: ProjectionRunner, uid: str
) -> None:
    apply_all(store, *an_exam_history(uid))
    runner.catch_up()
    built = whole_worklist(runner.db)
    runner.db.execute(
        "UPDATE worklist SET state = 'billed', patient_name = 'X' WHERE accession = ?", (f"A{uid}",)
    )

    replayed = runner.rebuild()

    assert replayed == len(store.recorder.select_notifications(start=1, limit=1_000_000))
    assert whole_worklist(runner.db) == built
    assert runner.lag() == 0


def test_two_runners_on_the_same_database_together_build_the_rows_once(
    settings: Settings, store: EventStore, runner: ProjectionRunner, uid: str
) -> None:
    commands = [c for n in range(15) for c in an_exam_history(f"{uid}X{n:02d}")]
    apply_all(store, *commands)
    runner.rebuild()  # the reference, built alone
    expected = whole_worklist(runner.db)
    runner.db.executescript(
        ["DELETE FROM worklist", "DELETE FROM projection_tracking WHERE name = 'worklist'"]
    )

    other_db = Database.for_file(settings, settings.projections_sqlite_path)
    other = ProjectionRunner(store, other_db, WorklistProjection())
    errors = race(lambda: runner.catch_up(batch=4), lambda: other.catch_up(batch=4))
    other_db.close()

    assert errors == []
    assert whole_worklist(runner.db) == expected
    assert runner.lag() == 0


class Ledger:
    """A projection that writes one row per event it handles, in the runner's transaction: any
    event applied twice shows up as two rows."""

    name = "ledger"
    schema: Sequence[str] = [
        "CREATE TABLE IF NOT EXISTS ledger (originator_id TEXT NOT NULL, version BIGINT NOT NULL)"
    ]
    tables: Sequence[str] = ("ledger",)

    def handle(self, cur: Cursor, event: Any) -> None:
        cur.execute(
            "INSERT INTO ledger (originator_id, version) VALUES (?, ?)",
            (str(event.originator_id), event.originator_version),
        )


def test_two_runners_racing_over_the_same_events_record_each_event_once(
    settings: Settings, store: EventStore, projection_db: Database, uid: str
) -> None:
    apply_all(store, *[c for n in range(15) for c in an_exam_history(f"{uid}L{n:02d}")])
    first = ProjectionRunner(store, projection_db, Ledger())
    first.create_schema()
    first.rebuild()
    projection_db.executescript(
        ["DELETE FROM ledger", "DELETE FROM projection_tracking WHERE name = 'ledger'"]
    )
    other_db = Database.for_file(settings, settings.projections_sqlite_path)
    second = ProjectionRunner(store, other_db, Ledger())

    errors = race(lambda: first.catch_up(batch=3), lambda: second.catch_up(batch=3))
    other_db.close()

    assert errors == []
    repeated = projection_db.query(
        "SELECT originator_id, version, COUNT(*) AS n FROM ledger GROUP BY originator_id, version HAVING COUNT(*) > 1"
    )
    assert repeated == []
    total = projection_db.query("SELECT COUNT(*) AS n FROM ledger")[0]["n"]
    assert total == len(store.recorder.select_notifications(start=1, limit=1_000_000))
    assert first.lag() == 0


def race(*jobs: Any) -> list[BaseException]:
    """Run the jobs on their own threads, released together; the errors they raised."""
    start = threading.Barrier(len(jobs))
    errors: list[BaseException] = []

    def run(job: Any) -> None:
        start.wait()
        try:
            job()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return errors
