"""Small HL7 v2 message builders for the unit tests: fields by their HL7 position, so a test
reads like the field list of the standard ("OBR-18 is the accession")."""

from __future__ import annotations

from collections.abc import Mapping

ENCODING = "^~\\&"


def segment(name: str, fields: Mapping[int, str]) -> str:
    """One segment with `fields` at their HL7 positions; missing positions stay empty."""
    last = max(fields, default=0)
    if name == "MSH":
        # MSH-1 is the field separator itself, so the first element after the name is MSH-2
        values = [fields.get(n, "") for n in range(2, last + 1)]
    else:
        values = [fields.get(n, "") for n in range(1, last + 1)]
    return "|".join([name, *values])


def msh(
    message_type: str = "ORM^O01",
    control_id: str = "CTRL0001",
    sending_application: str = "HIS",
    sending_facility: str = "GENERAL",
    sent_at: str = "20240315103000",
    charset: str = "",
    version: str = "2.5.1",
) -> str:
    fields = {
        2: ENCODING,
        3: sending_application,
        4: sending_facility,
        5: "RADFLOW",
        6: "RADIOLOGY",
        7: sent_at,
        9: message_type,
        10: control_id,
        11: "P",
        12: version,
    }
    if charset:
        fields[18] = charset
    return segment("MSH", fields)


def pid(patient_id: str = "P0001", issuer: str = "HOSP", name: str = "DOE^JANE^Q", birth_date: str = "19800102", sex: str = "F") -> str:
    return segment("PID", {1: "1", 3: f"{patient_id}^^^{issuer}", 5: name, 7: birth_date, 8: sex})


def orc(control: str = "NW", placer: str = "PL0001", filler: str = "FL0001", priority: str = "", reason: str = "") -> str:
    fields = {1: control, 2: placer, 3: filler}
    if priority:
        fields[7] = f"^^^^^{priority}"  # ORC-7.6 (TQ priority)
    if reason:
        fields[16] = reason
    return segment("ORC", fields)


def obr(
    accession: str = "ACC0001",
    requested_procedure_id: str = "",
    priority: str = "",
    procedure: str = "CTHEAD^CT head without contrast",
    modality: str = "",
    scheduled_at: str = "",
) -> str:
    fields = {1: "1", 4: procedure, 18: accession}
    if priority:
        fields[5] = priority
    if requested_procedure_id:
        fields[19] = requested_procedure_id
    if modality:
        fields[24] = modality
    if scheduled_at:
        fields[36] = scheduled_at
    return segment("OBR", fields)


def ipc(accession: str = "", requested_procedure_id: str = "", study_uid: str = "", modality: str = "") -> str:
    return segment("IPC", {1: accession, 2: requested_procedure_id, 3: study_uid, 4: "SPS1", 5: modality})


def tq1(priority: str = "", scheduled_at: str = "") -> str:
    return segment("TQ1", {1: "1", 7: scheduled_at, 9: priority})


def zds(study_uid: str) -> str:
    return segment("ZDS", {1: f"{study_uid}^RADFLOW^Application^DICOM"})


def message(*segments: str, separator: str = "\r") -> str:
    return separator.join(segments)


def order(
    accession: str = "ACC0001",
    control: str = "NW",
    message_type: str = "ORM^O01",
    control_id: str = "CTRL0001",
    separator: str = "\r",
) -> str:
    """A minimal ORM^O01 (or other order type) with one order group."""
    return message(
        msh(message_type=message_type, control_id=control_id),
        pid(),
        segment("PV1", {1: "1", 2: "O"}),
        orc(control=control),
        obr(accession=accession),
        separator=separator,
    )


def adt(trigger: str, patient_id: str = "P0001", name: str = "DOE^JANE^Q", patient_class: str = "I") -> str:
    return message(
        msh(message_type=f"ADT^{trigger}^ADT_A01", control_id=f"ADT-{trigger}"),
        segment("EVN", {1: trigger, 2: "20240315103000"}),
        pid(patient_id=patient_id, name=name),
        segment("PV1", {1: "1", 2: patient_class}),
    )
