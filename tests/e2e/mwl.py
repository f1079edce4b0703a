"""Modality worklist e2e helpers: HL7 orders equivalent to DCMTK worklist files, and DCMTK's
`findscu` run as a modality would run it, its answers read back from its own log lines.

Independent of radflow's code on purpose: worklist files are read from their dump text, orders
are written as HL7 by hand, answers come from a peer tool.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import Stack
from tests.e2e.mllp import MllpConnection, parse_ack

SPS = "0040,0100"
_LINE = re.compile(r"^\((?P<tag>[0-9a-f]{4},[0-9a-f]{4})\)\s+(?P<vr>\S+)\s*(?P<value>.*)$")


def read_worklist_dump(path: Path) -> dict[str, str]:
    """A DCMTK worklist dump (`dump2dcm` input) as {tag: value}; tags inside the Scheduled
    Procedure Step Sequence are keyed `0040,0100/gggg,eeee`. The first of a repeated tag wins,
    as dump2dcm keeps it."""
    values: dict[str, str] = {}
    prefix = ""
    for raw in path.read_text(encoding="latin-1").splitlines():
        line = raw.split("#", 1)[0].strip()
        found = _LINE.match(line)
        if not found:
            continue
        tag, vr, value = found["tag"].lower(), found["vr"], found["value"].strip()
        if tag == "fffe,e0dd":
            prefix = ""
            continue
        if tag.startswith("fffe"):
            continue
        if vr == "SQ":
            prefix = f"{tag}/"
            continue
        if value.startswith("[") and value.endswith("]"):
            value = value[1:-1]
        values.setdefault(prefix + tag, value)
    return values


@dataclass(frozen=True)
class Order:
    """What an ORM^O01 carries towards a worklist entry."""

    accession: str
    patient_id: str = "MRN1"
    name: str = "DOE^JANE"
    birth_date: str = "19710304"
    sex: str = "F"
    modality: str = "CT"
    scheduled: str = "20261128100000"  # HL7 TS
    priority: str = "R"  # HL7 S / A / R
    code: str = "CTHEAD"
    text: str = "CT head without contrast"
    requesting: str = "1234^HOUSE^GREGORY"  # XCN
    requested_procedure_id: str = ""
    study_uid: str = ""
    charset: str = "8859/1"  # MSH-18

    def hl7(self, control_id: str) -> bytes:
        """The order as an ORM^O01, encoded as MSH-18 says."""
        a = self.accession
        obr = {
            1: "1", 2: f"PL-{a}^HIS", 3: f"FL-{a}^RADFLOW", 4: f"{self.code}^{self.text}^L",
            16: self.requesting, 18: a, 19: self.requested_procedure_id, 24: self.modality,
            27: f"^^^{self.scheduled}^^{self.priority}", 36: self.scheduled,
        }
        segments = [
            f"MSH|^~\\&|HIS|GENHOSP|RADFLOW|RADIOLOGY|20261128093000||ORM^O01^ORM_O01|{control_id}|P|2.5.1"
            f"||||||{self.charset}",
            f"PID|1||{self.patient_id}^^^GENHOSP^MR||{self.name}||{self.birth_date}|{self.sex}",
            "PV1|1|O",
            f"ORC|NW|PL-{a}^HIS|FL-{a}^RADFLOW||SC||^^^{self.scheduled}^^{self.priority}",
            "|".join(["OBR", *(obr.get(n, "") for n in range(1, 37))]),
        ]
        if self.study_uid:
            segments.append(f"ZDS|{self.study_uid}^RADFLOW^Application^DICOM")
        codec = {"8859/1": "latin-1", "UNICODE UTF-8": "utf-8"}.get(self.charset, "ascii")
        return ("\r".join(segments) + "\r").encode(codec)


# HL7 has no LOW priority (table 0027): a LOW worklist entry can only be ordered routine
PRIORITY_FROM_DICOM = {"STAT": "S", "HIGH": "A", "ROUTINE": "R", "MEDIUM": "R", "LOW": "R"}


def order_from_worklist(entry: dict[str, str]) -> Order:
    """The order that carries as much of a DCMTK worklist entry as HL7 lets radflow keep."""
    return Order(
        accession=entry["0008,0050"],
        patient_id=entry["0010,0020"],
        name=entry["0010,0010"],
        birth_date=entry.get("0010,0030", ""),
        sex=entry.get("0010,0040", ""),
        modality=entry[f"{SPS}/0008,0060"],
        scheduled=entry[f"{SPS}/0040,0002"] + entry[f"{SPS}/0040,0003"],
        priority=PRIORITY_FROM_DICOM[entry.get("0040,1003", "ROUTINE")],
        # the entries name their procedure by description only: no code, so OBR-4.1 stays empty
        code="",
        text=entry.get("0032,1060", ""),
        requesting=f"^{entry['0032,1032']}" if entry.get("0032,1032") else "",
        requested_procedure_id=entry.get("0040,1001", ""),
        study_uid=entry.get("0020,000d", ""),
    )


def place_orders(stack: Stack, orders: list[Order], tag: str) -> None:
    """Send the orders on one MLLP connection (each must be accepted), then wait until every
    exam is in the worklist."""
    with MllpConnection(stack.mllp_port) as conn:
        for n, order in enumerate(orders):
            ack = parse_ack(conn.request(order.hl7(f"{tag}{n:04d}")), "latin-1")
            assert ack.code == "AA", ack.raw
    for order in orders:
        stack.wait_until(lambda o=order: stack.get(f"/api/exams/{o.accession}").status_code == 200, timeout=30)


@dataclass
class Find:
    """One findscu run: the top-level lines of each answer as findscu logged them (comments
    cut, as orthanc-tests' Run.py reads them), the final status line, and the raw log."""

    answers: list[list[str]] = field(default_factory=list)
    final: str = ""
    log: str = ""
    returncode: int = 0


# DCMTK 3.6.7 leaves Nagle on unless told: every query would wait ~45 ms on delayed ACKs at the
# client's end, which says nothing about radflow and slows the suite
FINDSCU_ENV = {**os.environ, "TCP_NODELAY": "1"}


def findscu(port: int, *args: str | Path, timeout: float = 30) -> Find:
    """`findscu -W -v` against radflow's AE, calling as a modality would."""
    command = ["findscu", "-W", "-v", "-aet", "MODALITY1", "-aec", "RADFLOW", "127.0.0.1", str(port), *map(str, args)]
    done = subprocess.run(command, capture_output=True, timeout=timeout, env=FINDSCU_ENV)
    log = (done.stdout + done.stderr).decode("latin-1")
    result = Find(log=log, returncode=done.returncode)
    current: list[str] | None = None
    for line in log.splitlines():
        if re.match(r"^I: Find Response: \d+ \(Pending\)", line):
            current = []
            result.answers.append(current)
        elif "Received Final Find Response" in line:
            result.final = line[3:]
            current = None
        elif current is not None and line.startswith("I: ("):
            current.append(re.sub(r"\s*#.*", "", line).replace("\0", "")[3:])
    return result
