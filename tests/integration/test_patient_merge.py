"""Patient merge and visit events through the command activity on the real event store: the
survivor and the prior are saved together, a repeat records nothing, a conflicting merge is
refused, and a merged-away identity refuses its own updates."""

from __future__ import annotations

from typing import Any

from activities.apply_command import CommandActivities
from adapters.event_store import EventStore
from domain.commands import DischargePatient, MergePatients, RegisterPatient, UpdatePatient
from domain.patient import patient_id
from tests.integration.builders import patient, provenance


def types(store: EventStore, key: str) -> list[str]:
    return [type(e).__name__ for e in store.events_of(patient_id(key))]


def test_merge_saves_survivor_and_prior_together_and_a_repeat_or_a_conflict_records_nothing(
    store: EventStore, uid: str
) -> None:
    activities = CommandActivities(store, None)
    survivor, prior, other = patient(f"S{uid}"), patient(f"P{uid}", "SMYTH^JANE"), patient(f"O{uid}")

    def apply(command: Any) -> dict[str, Any]:
        return activities.apply_command(command.as_dict())

    for n, p in enumerate([survivor, prior, other]):
        assert apply(RegisterPatient(provenance=provenance(f"{uid}-r{n}"), patient=p))["status"] == "applied"

    outcome = apply(MergePatients(provenance=provenance(f"{uid}-m1"), patient=survivor, prior=prior))
    assert outcome["status"] == "applied"
    assert types(store, survivor.key)[-1] == "PatientsMerged"
    assert types(store, prior.key)[-1] == "PatientMergedInto"

    # a second A40 for the same pair (a new message): nothing recorded
    before = (types(store, survivor.key), types(store, prior.key))
    repeat = apply(MergePatients(provenance=provenance(f"{uid}-m2"), patient=survivor, prior=prior))
    assert repeat["status"] == "duplicate"
    assert (types(store, survivor.key), types(store, prior.key)) == before

    # the prior already belongs to the survivor: merging it into another patient is refused
    conflict = apply(MergePatients(provenance=provenance(f"{uid}-m3"), patient=other, prior=prior))
    assert conflict["status"] == "refused"
    assert survivor.key in conflict["reason"]
    assert "PatientsMerged" not in types(store, other.key)

    # second line of defence behind patient_links: the merged-away identity refuses updates
    update = apply(UpdatePatient(provenance=provenance(f"{uid}-u1"), patient=prior))
    assert update["status"] == "refused"
    assert types(store, prior.key)[-1] == "PatientMergedInto"


def test_a_discharge_for_a_patient_never_seen_registers_then_discharges(store: EventStore, uid: str) -> None:
    activities = CommandActivities(store, None)
    p = patient(f"D{uid}")
    outcome = activities.apply_command(
        DischargePatient(
            provenance=provenance(f"{uid}-d1"), patient=p, discharged_at="2024-03-16T10:00:00"
        ).as_dict()
    )
    assert outcome["status"] == "applied"
    assert types(store, p.key) == ["PatientRegistered", "PatientDischarged"]
