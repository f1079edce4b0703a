"""Order messages (ORM^O01, OMI^O23, OMG^O19) to commands: order control NW (new), CA (cancel),
XO (change) and SC (status: scheduled, in progress, completed, cancelled, discontinued)."""

from __future__ import annotations

from typing import Any

from domain.commands import (
    CancelOrder,
    Command,
    CompleteProcedure,
    DiscontinueProcedure,
    ModifyOrder,
    PatientDemographics,
    PlaceOrder,
    ScheduleExam,
    StartProcedure,
)
from domain.provenance import Provenance
from interfaces.hl7 import acks
from interfaces.hl7.map_common import Mapped, Refused, demographics, hl7_timestamp
from interfaces.hl7.message import Message

PRIORITIES = {"S": "STAT", "STAT": "STAT", "A": "ASAP", "ASAP": "ASAP", "R": "ROUTINE", "ROUTINE": "ROUTINE"}
DICOM_MODALITIES = frozenset(
    [
        "CR",
        "CT",
        "DX",
        "ES",
        "IO",
        "MG",
        "MR",
        "NM",
        "OT",
        "PT",
        "RF",
        "RG",
        "SC",
        "US",
        "XA",
        "XC",
        "BMD",
        "OCT",
        "OP",
        "ECG",
        "IVUS",
    ]
)
ORDER_SEGMENTS = ("TQ1", "OBR", "IPC", "ZDS", "NTE", "OBX", "DG1", "CTD", "FT1", "BLG", "CTI", "TQ2")
ORDER_CONTROLS = ("NW", "CA", "XO", "SC")
# ORC-5 order status (HL7 table 0038) of an SC message -> what happened to the exam
STATUS_CHANGES = ("SC", "IP", "CM", "CA", "DC")


def order_commands(message: Message, provenance: Provenance) -> Mapped:
    orders = [g for g in message.groups("ORC", ORDER_SEGMENTS) if "ORC" in g]
    if not orders:
        raise Refused("AE", "order message without an ORC segment", acks.SEGMENT_SEQUENCE_ERROR, "ORC")
    patient = demographics(message)
    # a ZDS outside every order group can only be meant for a lone order: in a message with
    # several orders, a Study Instance UID belongs to one requested procedure, never to all
    loose_zds = message.first_segment("ZDS") if len(orders) == 1 else None
    mapped = Mapped()
    for number, group in enumerate(orders, start=1):
        command, placer, filler = _order_command(message, group, number, patient, provenance, loose_zds)
        mapped.add(command, placer, filler)
    return mapped


def order_fields(message: Message, group: dict[str, Any], loose_zds: Any = None) -> dict[str, str]:
    """The PlaceOrder fields one order group carries ('' when absent); NW and XO read the same."""
    orc = group["ORC"][0]
    obr = group.get("OBR", [None])[0]
    ipc = group.get("IPC", [None])[0]
    tq1 = group.get("TQ1", [None])[0]
    zds = group.get("ZDS", [None])[0] or loose_zds
    v = message.value
    comp = message.component_separator
    priority_code = (v(orc, 7, 6) or v(obr, 5) or v(tq1, 9)).upper()
    modality = (v(ipc, 5) or v(obr, 24)).upper()
    return {
        "placer_order_number": v(orc, 2) or v(obr, 2),
        "filler_order_number": v(orc, 3) or v(obr, 3),
        "requested_procedure_id": v(obr, 19) or v(ipc, 2),
        "study_instance_uid": v(ipc, 3) or v(zds, 1),
        "priority": PRIORITIES.get(priority_code, "ROUTINE") if priority_code else "",
        "procedure_code": v(obr, 4) or v(obr, 44),
        "procedure_text": v(obr, 4, 2) or v(obr, 44, 2),
        "modality": modality if modality in DICOM_MODALITIES else "",
        "scheduled_at": hl7_timestamp(v(obr, 36) or v(tq1, 7) or v(orc, 7, 4)),
        "referring_physician": comp.join([v(obr, 16), v(obr, 16, 2), v(obr, 16, 3)]).rstrip(comp),
        "reason": v(obr, 31, 2) or v(obr, 31),
    }


def _order_command(
    message: Message,
    group: dict[str, Any],
    number: int,
    patient: PatientDemographics,
    provenance: Provenance,
    loose_zds: Any = None,
) -> tuple[Command, str, str]:
    """One order group's command with the (placer, filler) order numbers that name it."""
    orc = group["ORC"][0]
    obr = group.get("OBR", [None])[0]
    ipc = group.get("IPC", [None])[0]
    v = message.value
    control = v(orc, 1).upper()
    if control not in ORDER_CONTROLS:
        raise Refused(
            "AR",
            f"unsupported order control {control or '(empty)'} in ORC-1 (order {number})",
            acks.UNSUPPORTED_EVENT_CODE,
            f"ORC^{number}^1",
        )
    fields = order_fields(message, group, loose_zds)
    accession = v(obr, 18) or v(ipc, 1)
    placer, filler = fields["placer_order_number"], fields["filler_order_number"]
    if not accession and (control == "NW" or not (placer or filler)):
        action = {"NW": "order", "CA": "cancel", "XO": "change", "SC": "status change"}[control]
        raise Refused(
            "AE",
            f"{action} without an accession number (OBR-18 or IPC-1)"
            + ("" if control == "NW" else " or order number (ORC-2/ORC-3)")
            + f" in order {number}",
            acks.REQUIRED_FIELD_MISSING,
            f"OBR^{number}^18",
        )
    if control == "NW":
        # PV1-10 (hospital service) is the visit's, not the order group's; kept on the new
        # order only: the exam cannot change it later, so an XO does not carry it
        values = {
            **fields,
            "priority": fields["priority"] or "ROUTINE",
            "referring_service": v("PV1", 10),
        }
        return (
            PlaceOrder(provenance=provenance, accession=accession, patient=patient, **values),
            placer,
            filler,
        )
    if control == "CA":
        reason = v(orc, 16, 2) or v(orc, 16)
        return CancelOrder(provenance=provenance, accession=accession, reason=reason), placer, filler
    if control == "XO":
        changes = {name: value for name, value in fields.items() if value}
        return ModifyOrder(provenance=provenance, accession=accession, changes=changes), placer, filler
    return _status_command(message, group, number, accession, fields, provenance), placer, filler


def _status_command(
    message: Message,
    group: dict[str, Any],
    number: int,
    accession: str,
    fields: dict[str, str],
    provenance: Provenance,
) -> Command:
    """ORC-1 SC: ORC-5 says what happened to the order."""
    orc = group["ORC"][0]
    v = message.value
    status = v(orc, 5).upper()
    at = hl7_timestamp(v(orc, 9))
    if status == "SC":
        if not fields["scheduled_at"]:
            raise Refused(
                "AE",
                f"status SC (scheduled) without a time in TQ1-7, OBR-36 or ORC-7.4 (order {number})",
                acks.REQUIRED_FIELD_MISSING,
                f"OBR^{number}^36",
            )
        return ScheduleExam(provenance=provenance, accession=accession, scheduled_at=fields["scheduled_at"])
    if status == "IP":
        return StartProcedure(
            provenance=provenance,
            accession=accession,
            mpps_uid="",
            started_at=at,
            modality=fields["modality"],
        )
    if status == "CM":
        return CompleteProcedure(provenance=provenance, accession=accession, mpps_uid="", ended_at=at)
    if status == "CA":
        return CancelOrder(provenance=provenance, accession=accession, reason=v(orc, 16, 2) or v(orc, 16))
    if status == "DC":
        return DiscontinueProcedure(
            provenance=provenance,
            accession=accession,
            mpps_uid="",
            ended_at=at,
            reason=v(orc, 16, 2) or v(orc, 16),
        )
    raise Refused(
        "AR",
        f"unsupported order status {status or '(empty)'} in ORC-5 of a status change (order {number}); "
        f"expected one of {', '.join(STATUS_CHANGES)}",
        acks.UNSUPPORTED_EVENT_CODE,
        f"ORC^{number}^5",
    )
