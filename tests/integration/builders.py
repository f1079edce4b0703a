"""Commands and HL7 messages for the integration tests."""

from __future__ import annotations

from typing import Any

from adapters.message_log import Inbound, MessageLog, Recorded, utcnow
from domain.commands import CancelOrder, PatientDemographics, PlaceOrder, RegisterPatient, UpdatePatient
from domain.provenance import Provenance, Source
from interfaces.hl7.intake import interpret


def provenance(message_id: str, control_id: str = "") -> Provenance:
    return Provenance(
        actor="HIS",
        source=Source(
            kind="hl7",
            application="HIS",
            facility="GENERAL",
            control_id=control_id or message_id,
            message_id=message_id,
        ),
        occurred_at="2024-03-15T10:30:00",
    )


def patient(patient_id: str, name: str = "DOE^JANE") -> PatientDemographics:
    return PatientDemographics(id=patient_id, issuer="HOSP", name=name, birth_date="19800102", sex="F")


def place_order(
    accession: str, message_id: str, patient_id: str = "P1", modality: str = "CT"
) -> dict[str, Any]:
    return PlaceOrder(
        provenance=provenance(message_id),
        accession=accession,
        patient=patient(patient_id),
        placer_order_number=f"PL-{accession}",
        requested_procedure_id=f"RP-{accession}",
        priority="STAT",
        procedure_code="CTHEAD",
        procedure_text="CT head without contrast",
        modality=modality,
        scheduled_at="2024-03-16T09:00:00",
    ).as_dict()


def cancel_order(accession: str, message_id: str, reason: str = "ordered in error") -> dict[str, Any]:
    return CancelOrder(provenance=provenance(message_id), accession=accession, reason=reason).as_dict()


def register_patient(patient_id: str, message_id: str, name: str = "DOE^JANE") -> dict[str, Any]:
    return RegisterPatient(
        provenance=provenance(message_id), patient=patient(patient_id, name), patient_class="O"
    ).as_dict()


def update_patient(patient_id: str, message_id: str, name: str) -> dict[str, Any]:
    return UpdatePatient(provenance=provenance(message_id), patient=patient(patient_id, name)).as_dict()


# --- HL7 v2 as a sender would put it on the wire ------------------------------------------------


def segment(name: str, fields: dict[int, str]) -> str:
    """A segment with `fields` at their HL7 positions (not for MSH, whose numbering is shifted)."""
    return "|".join([name, *(fields.get(n, "") for n in range(1, max(fields) + 1))])


def orm(
    accession: str,
    control: str,
    control_id: str,
    sender: str = "HIS",
    facility: str = "GENERAL",
    patient_id: str = "P1",
) -> bytes:
    """An ORM^O01 with one order group: ORC-1 is NW (new) or CA (cancel), OBR-18 the accession."""
    return "\r".join(
        [
            f"MSH|^~\\&|{sender}|{facility}|RADFLOW|RADIOLOGY|20240315103000||ORM^O01|{control_id}|P|2.5.1",
            f"PID|1||{patient_id}^^^HOSP||DOE^JANE||19800102|F",
            "PV1|1|O",
            f"ORC|{control}|PL-{accession}|FL-{accession}",
            segment("OBR", {1: "1", 4: "CTHEAD^CT head without contrast", 18: accession, 24: "CT"}),
        ]
    ).encode()


def adt_a08(patient_id: str, name: str, control_id: str, sender: str = "HIS") -> bytes:
    return "\r".join(
        [
            f"MSH|^~\\&|{sender}|GENERAL|RADFLOW|RADIOLOGY|20240315103000||ADT^A08^ADT_A01|{control_id}|P|2.5.1",
            "EVN|A08|20240315103000",
            f"PID|1||{patient_id}^^^HOSP||{name}||19800102|F",
            "PV1|1|I",
        ]
    ).encode()


def inbound(raw: bytes) -> Inbound:
    return interpret(raw, peer="127.0.0.1:40000", received_at=utcnow())


def record(log: MessageLog, raw: bytes) -> Recorded:
    """What the listener does with one frame: interpret it and record it in its own transaction."""
    with log.db.transaction() as cur:
        return log.record(cur, inbound(raw))
