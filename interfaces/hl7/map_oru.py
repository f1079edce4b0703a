"""Inbound ORU^R01 from an external reporting system to RecordReport, one per OBR: the report
text is every TX/FT/ST/CE OBX-5 of that OBR, unescaped, joined by newlines."""

from __future__ import annotations

from typing import Any

from domain.commands import RecordReport
from domain.provenance import Provenance
from interfaces.hl7 import acks
from interfaces.hl7.map_common import Mapped, Refused, hl7_timestamp
from interfaces.hl7.message import Message

TEXT_TYPES = frozenset(["TX", "FT", "ST", "CE", "CWE"])
RESULT_MEMBERS = ("ORC", "NTE", "TQ1", "OBX", "CTI", "SPM")


def oru_commands(message: Message, header_sent_at: str, provenance: Provenance) -> Mapped:
    results = [g for g in message.groups("OBR", RESULT_MEMBERS) if "OBR" in g]
    if not results:
        raise Refused("AE", "report without an OBR segment", acks.SEGMENT_SEQUENCE_ERROR, "OBR")
    mapped = Mapped()
    for number, group in enumerate(results, start=1):
        obr = group["OBR"][0]
        orc = group.get("ORC", [None])[0] or message.first_segment("ORC")
        v = message.value
        accession = v(obr, 18)
        placer, filler = v(orc, 2) or v(obr, 2), v(orc, 3) or v(obr, 3)
        if not (accession or placer or filler):
            raise Refused(
                "AE",
                f"report without an accession (OBR-18) or order number (OBR-2 / OBR-3) in OBR {number}",
                acks.REQUIRED_FIELD_MISSING,
                f"OBR^{number}^18",
            )
        text = _report_text(message, group.get("OBX", []))
        if not text:
            raise Refused(
                "AE",
                f"report without text: no TX, FT, ST or CE OBX-5 under OBR {number}",
                acks.REQUIRED_FIELD_MISSING,
                f"OBX^{number}^5",
            )
        author_parts = [v(obr, 32, 1, n) for n in range(1, 7)]
        command = RecordReport(
            provenance=provenance,
            accession=accession,
            text=text,
            result_status=(v(obr, 25) or "F").upper(),
            author=" ".join(p for p in author_parts if p),
            reported_at=hl7_timestamp(v(obr, 22) or v(obr, 7) or header_sent_at),
        )
        mapped.add(command, placer, filler)
    return mapped


def _report_text(message: Message, observations: list[Any]) -> str:
    lines: list[str] = []
    for obx in observations:
        value_type = message.value(obx, 2).upper()
        if value_type not in TEXT_TYPES:
            continue
        repetition = 1
        while True:
            if value_type in ("CE", "CWE"):
                value = message.value(obx, 5, 2, repetition=repetition) or message.value(
                    obx, 5, 1, repetition=repetition
                )
            else:
                value = message.value(obx, 5, None, repetition=repetition)
            if not value and message.value(obx, 5, None, repetition=repetition + 1) == "":
                break
            lines.append(value.replace("\r\n", "\n").replace("\r", "\n"))
            repetition += 1
            if repetition > 1000:
                break
    return "\n".join(lines).strip("\n")
