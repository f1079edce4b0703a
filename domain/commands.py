"""Commands: what the outside world asks of an aggregate, already translated from the wire.

They travel through the message log and Temporal as plain dicts (`as_dict` / `command_from_dict`),
so every field is a JSON scalar.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from domain.provenance import Provenance


@dataclass(frozen=True)
class PatientDemographics:
    id: str
    issuer: str = ""
    name: str = ""  # HL7 XPN as family^given^middle; never logged
    birth_date: str = ""
    sex: str = ""

    @property
    def key(self) -> str:
        return f"{self.issuer}|{self.id}"


@dataclass(frozen=True)
class Command:
    kind: ClassVar[str]
    provenance: Provenance

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind
        return data


@dataclass(frozen=True)
class PlaceOrder(Command):
    kind: ClassVar[str] = "place_order"
    accession: str
    patient: PatientDemographics
    placer_order_number: str = ""
    filler_order_number: str = ""
    requested_procedure_id: str = ""
    study_instance_uid: str = ""
    priority: str = "ROUTINE"
    procedure_code: str = ""
    procedure_text: str = ""
    modality: str = ""
    scheduled_at: str = ""
    referring_physician: str = ""
    reason: str = ""


@dataclass(frozen=True)
class CancelOrder(Command):
    kind: ClassVar[str] = "cancel_order"
    accession: str
    reason: str = ""


@dataclass(frozen=True)
class RegisterPatient(Command):
    kind: ClassVar[str] = "register_patient"
    patient: PatientDemographics
    patient_class: str = ""


@dataclass(frozen=True)
class UpdatePatient(Command):
    kind: ClassVar[str] = "update_patient"
    patient: PatientDemographics
    patient_class: str = ""


COMMANDS: dict[str, type[Command]] = {
    c.kind: c for c in (PlaceOrder, CancelOrder, RegisterPatient, UpdatePatient)
}
EXAM_COMMANDS = frozenset({PlaceOrder.kind, CancelOrder.kind})


def command_from_dict(data: dict[str, Any]) -> Command:
    cls = COMMANDS[data["kind"]]
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.name == "provenance":
            value = Provenance.from_dict(value)
        elif f.name == "patient":
            value = PatientDemographics(**value)
        values[f.name] = value
    return cls(**values)


def workflow_id_for(command: Command) -> str:
    """One workflow per exam (`exam-<accession>`) and one per patient identity."""
    if isinstance(command, (PlaceOrder, CancelOrder)):
        return f"exam-{command.accession}"
    if isinstance(command, (RegisterPatient, UpdatePatient)):
        return f"patient-{command.patient.key}"
    raise TypeError(f"no workflow for {type(command).__name__}")


