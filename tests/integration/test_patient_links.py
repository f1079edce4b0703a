"""Patient merges at the message log (SQLite and PostgreSQL): an accepted merge fans out to the
prior patient's exams and studies, later messages on the prior id land on the survivor, and a
repeated merge moves nothing twice."""

from __future__ import annotations

import json
from typing import Any

from adapters import patient_links
from adapters.message_log import Inbound, MessageLog, Recorded
from domain.commands import MergePatients, workflow_id_for
from tests.integration.builders import patient, place_order, provenance, register_patient


def accept(log: MessageLog, control_id: str, *commands: dict[str, Any]) -> Recorded:
    """Record an inbound message whose mapping gave `commands` (as the intake would)."""
    entry = Inbound(
        raw=f"MSH|^~\\&|HIS|GENERAL|||20240315||ADT^A40|{control_id}|P|2.5".encode(),
        peer="test",
        received_at="2024-03-15T10:30:00+00:00",
        build_ack=lambda code, reason: f"MSA|{code}|{control_id}|{reason}".encode(),
        sending_application="HIS",
        sending_facility="GENERAL",
        control_id=control_id,
        message_type="ADT^A40",
    )
    entry.commands = [{"workflow_id": _workflow(c), "command": c} for c in commands]
    with log.db.transaction() as cur:
        return log.record(cur, entry)


def _workflow(command: dict[str, Any]) -> str:
    from domain.commands import command_from_dict

    return workflow_id_for(command_from_dict(command))


def merge(prior: str, survivor: str, control_id: str) -> dict[str, Any]:
    return MergePatients(
        provenance=provenance("", control_id), patient=patient(survivor), prior=patient(prior)
    ).as_dict()


def commands_of(log: MessageLog, recorded: Recorded) -> list[dict[str, Any]]:
    row = log.get(recorded.id)
    assert row is not None and row["status"] == "accepted", row
    return list(json.loads(row["commands"]))


def test_a_merge_fans_out_to_every_exam_of_the_prior_and_later_messages_resolve(
    message_log: MessageLog, uid: str
) -> None:
    prior, survivor = f"PR{uid}", f"SV{uid}"
    accept(message_log, f"O1{uid}", place_order(f"A1{uid}", "", patient_id=prior))
    accept(message_log, f"O2{uid}", place_order(f"A2{uid}", "", patient_id=prior))
    accept(message_log, f"O3{uid}", place_order(f"A3{uid}", "", patient_id=survivor))

    merged = commands_of(message_log, accept(message_log, f"M{uid}", merge(prior, survivor, f"M{uid}")))

    assert [e["workflow_id"] for e in merged] == [
        f"patient-HOSP|{survivor}",
        f"exam-A1{uid}",
        f"exam-A2{uid}",
    ]
    moved = merged[1]["command"]
    assert moved["kind"] == "change_exam_patient"
    assert moved["patient"]["id"] == survivor and moved["prior_key"] == f"HOSP|{prior}"
    assert moved["provenance"] == merged[0]["command"]["provenance"]  # the merge message caused it

    later = commands_of(
        message_log, accept(message_log, f"L{uid}", register_patient(prior, "", name="DOE^J"))
    )
    assert later[0]["workflow_id"] == f"patient-HOSP|{survivor}"
    assert later[0]["command"]["patient"]["id"] == survivor
    assert later[0]["command"]["provenance"]["extra"]["resolved_from_patient"] == f"HOSP|{prior}"
    order = commands_of(
        message_log, accept(message_log, f"O4{uid}", place_order(f"A4{uid}", "", patient_id=prior))
    )
    assert order[0]["command"]["patient"]["id"] == survivor

    repeated = commands_of(message_log, accept(message_log, f"R{uid}", merge(prior, survivor, f"R{uid}")))
    assert [e["command"]["kind"] for e in repeated] == ["merge_patients"]
    with message_log.db.transaction() as cur:
        assert patient_links.survivor_of(cur, f"HOSP|{prior}") == f"HOSP|{survivor}"


def test_merges_chain_and_an_identifier_change_moves_the_exams_too(message_log: MessageLog, uid: str) -> None:
    a, b, c = f"A{uid}", f"B{uid}", f"C{uid}"
    accept(message_log, f"O{uid}", place_order(f"X{uid}", "", patient_id=a))
    accept(message_log, f"M1{uid}", merge(a, b, f"M1{uid}"))
    change = MergePatients(
        provenance=provenance("", f"M2{uid}"), patient=patient(c), prior=patient(b), how="identifier_change"
    ).as_dict()
    moved = commands_of(message_log, accept(message_log, f"M2{uid}", change))
    assert [e["workflow_id"] for e in moved] == [f"patient-HOSP|{c}", f"exam-X{uid}"]
    assert "renamed to" in moved[1]["command"]["reason"]
    with message_log.db.transaction() as cur:
        assert patient_links.survivor_of(cur, f"HOSP|{a}") == f"HOSP|{c}"
