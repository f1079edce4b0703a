"""ADT messages to patient commands: admit/register/update (A01/A04/A08/A31), discharge (A03),
cancel admit (A11), merge (A40) and identifier change (A47)."""

from __future__ import annotations

from domain.commands import (
    CancelAdmission,
    Command,
    DischargePatient,
    MergePatients,
    PatientDemographics,
    RegisterPatient,
    UpdatePatient,
)
from domain.provenance import Provenance
from interfaces.hl7 import acks
from interfaces.hl7.map_common import (
    Mapped,
    Refused,
    demographics,
    demographics_of,
    hl7_timestamp,
    person_name,
)
from interfaces.hl7.message import Message

ADT_TRIGGERS = frozenset(["A01", "A03", "A04", "A08", "A11", "A31", "A40", "A47"])
MERGE_MEMBERS = ("PD1", "MRG", "PV1")


def adt_commands(message: Message, trigger: str, provenance: Provenance) -> Mapped:
    mapped = Mapped()
    if trigger in ("A40", "A47"):
        for merge in _merge_commands(message, trigger, provenance):
            mapped.add(merge)
        return mapped
    patient = demographics(message)
    patient_class = message.value("PV1", 2)
    command: Command
    if trigger in ("A08", "A31"):
        command = UpdatePatient(provenance=provenance, patient=patient, patient_class=patient_class)
    elif trigger == "A03":
        discharged_at = hl7_timestamp(message.value("PV1", 45))
        command = DischargePatient(provenance=provenance, patient=patient, discharged_at=discharged_at)
    elif trigger == "A11":
        command = CancelAdmission(provenance=provenance, patient=patient)
    else:
        command = RegisterPatient(provenance=provenance, patient=patient, patient_class=patient_class)
    mapped.add(command)
    return mapped


def _merge_commands(message: Message, trigger: str, provenance: Provenance) -> list[Command]:
    """One MergePatients per PID/MRG pair: PID names the survivor (or the new identifier), MRG-1
    the prior identifier."""
    pairs = [g for g in message.groups("PID", MERGE_MEMBERS) if "PID" in g]
    if not pairs:
        raise Refused("AE", "PID segment is missing", acks.SEGMENT_SEQUENCE_ERROR, "PID")
    how = "merge" if trigger == "A40" else "identifier_change"
    commands: list[Command] = []
    for number, group in enumerate(pairs, start=1):
        survivor = demographics_of(message, group["PID"][0], number)
        mrg = group.get("MRG", [None])[0]
        prior_id = message.value(mrg, 1)
        if not prior_id:
            raise Refused(
                "AE",
                f"{trigger} without the prior patient identifier MRG-1 (pair {number})",
                acks.REQUIRED_FIELD_MISSING,
                f"MRG^{number}^1",
            )
        prior = PatientDemographics(
            id=prior_id,
            issuer=message.value(mrg, 1, 4) or survivor.issuer,
            name=person_name(message, mrg, 7),
        )
        if prior.key == survivor.key:
            raise Refused(
                "AE",
                f"{trigger} names the same patient {prior_id} in PID-3 and MRG-1 (pair {number})",
                acks.UNKNOWN_KEY,
                f"MRG^{number}^1",
            )
        commands.append(MergePatients(provenance=provenance, patient=survivor, prior=prior, how=how))
    return commands
