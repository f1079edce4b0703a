"""The report feed: an ORU^R01 to each destination that wants `report`, for every issued report
revision (the Report aggregate's `ReportIssued`): preliminary (OBR-25 P), final (F), and
addendum or correction (C). An addendum or a correction sends the whole report as it now
stands: the latest final or corrected text, then every addendum signed after it, each headed
"ADDENDUM n (author, time):" (the same text as `domain.report.current_text`).

Where it runs: like the order status feed, a projection over the event store with its own
position in the *messages* database, so the queue rows and the position commit together and
UNIQUE (destination, event_key) makes a replay enqueue nothing twice. Lane = the patient key,
the same lane as the patient's order status messages, so a destination that takes both gets
ORM CM and ORU F of one patient in the order they happened.

State it keeps (dropped and rebuilt from the events on a schema change; the queue never is):
the issued revisions (an addendum's message needs the report it amends, which its event does
not carry), the patient class per patient (PV1-2 and the `patient_class` filter) and the
sending application per accession (the `sending_application` filter). All the rest comes from
the `exam` dict the revision carries: the order as it stood at signing.

What the message says (v2.5.1, IHE RAD "Reporting Workflow" / ORU as commonly consumed):
- MSH-10 from (destination, report id, event version), MSH-7 the event's recorded time, so a
  replay builds the very same message and receivers dedupe a re-delivery by MSH-10.
- ORC-1 RE, ORC-5 CM; OBR-2/3 placer/filler, OBR-4 procedure, OBR-7 completed_at, OBR-18
  accession, OBR-19 requested procedure id, OBR-22 signed_at, OBR-24 modality, OBR-25 P/F/C,
  OBR-32 the radiologist who signed the (final or corrected) report.
- One OBX (TX) per text line of each section, OBX-3 the section's LOINC code (SECTION_CODES),
  OBX-4 the section's sub-id (addendum n for the n-th addendum), OBX-11 the result status,
  OBX-14 when and OBX-16 who signed that part. Empty lines are kept as an empty OBX-5.
- A critical result (any revision of the current report flagged critical) is said twice, for
  receivers that look at either: every OBX carries abnormal flag OBX-8 "AA" (table 0078,
  critically abnormal), and an NTE under the OBR says so in words.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from adapters.outbound_config import Destination, Destinations
from adapters.sql import Cursor
from domain.patient import patient_id
from projections.hl7_text import (
    components,
    escape,
    escape_text,
    hl7_timestamp,
    msh,
    pid,
    split_components,
)
from projections.outbound_queueing import Outgoing, queue_for_subscribers

EVENT = "report"
MESSAGE_TYPE = "ORU^R01^ORU_R01"
CHARSET = "UNICODE UTF-8"  # MSH-18: report text is free text; the MLLP client sends UTF-8

# report section -> OBX-3 (identifier, text, coding system). LOINC codes of the DICOM PS3.20
# imaging report sections; a section a template adds beyond these gets a local code ("L").
SECTION_CODES: dict[str, tuple[str, str, str]] = {
    "indication": ("18785-6", "Indications for procedure", "LN"),
    "technique": ("55111-9", "Current imaging procedure descriptions", "LN"),
    "comparison": ("18834-2", "Radiology Comparison study", "LN"),
    "findings": ("59776-5", "Procedure findings", "LN"),
    "impression": ("19005-8", "Radiology Impression", "LN"),
}
ADDENDUM_CODE = ("55107-7", "Addendum", "LN")
SECTION_ORDER = tuple(SECTION_CODES)
BASE_KINDS = ("preliminary", "final", "correction")
CRITICAL_NOTE = "CRITICAL RESULT: this report contains a critical finding; the referring physician is notified and must acknowledge it."

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS report_feed_revisions (
        report_id TEXT NOT NULL,
        revision INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (report_id, revision)
    )""",
    """CREATE TABLE IF NOT EXISTS report_feed_patients (
        patient_ref TEXT PRIMARY KEY,
        patient_class TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS report_feed_orders (
        accession TEXT PRIMARY KEY,
        sending_application TEXT NOT NULL
    )""",
]


@dataclass(frozen=True)
class IssuedReport:
    """The report as it stands after one issued revision: what one ORU^R01 says."""

    base: dict[str, Any]  # the latest preliminary, final or correction revision
    addenda: list[dict[str, Any]] = field(default_factory=list)  # signed after `base`, in order
    latest: dict[str, Any] = field(default_factory=dict)  # the revision just issued
    patient_class: str = ""  # PV1-2
    occurred_at: str = ""  # ISO 8601: the event's recorded time (MSH-7)

    @property
    def exam(self) -> dict[str, Any]:
        return dict(self.latest.get("exam") or self.base.get("exam") or {})

    @property
    def result_status(self) -> str:
        return str(self.latest.get("result_status", ""))

    @property
    def critical(self) -> bool:
        return any(bool(r.get("critical")) for r in (self.base, *self.addenda))

    @classmethod
    def from_revisions(
        cls, revisions: Sequence[dict[str, Any]], *, patient_class: str = "", occurred_at: str = ""
    ) -> IssuedReport:
        """From every revision issued so far (in order, the last one just issued)."""
        ordered = sorted(revisions, key=lambda r: int(r["revision"]))
        base_at = max((i for i, r in enumerate(ordered) if r["kind"] in BASE_KINDS), default=-1)
        if base_at < 0:  # an addendum with nothing before it (cannot happen: the domain refuses)
            base_at = 0
        addenda = [r for r in ordered[base_at + 1 :] if r["kind"] == "addendum"]
        return cls(ordered[base_at], addenda, ordered[-1], patient_class, occurred_at)


def text_lines(text: str) -> list[str]:
    """A section's text as lines; CRLF and CR count as line ends like LF."""
    return str(text).replace("\r\n", "\n").replace("\r", "\n").split("\n")


def section_code(name: str) -> str:
    """OBX-3 for a section: its LOINC code, or a local code named after it."""
    code, text, system = SECTION_CODES.get(name, (name.upper(), name.replace("_", " ").capitalize(), "L"))
    return components(code, text, system)


def _ordered_sections(sections: dict[str, str]) -> list[str]:
    return [
        *(s for s in SECTION_ORDER if s in sections),
        *sorted(s for s in sections if s not in SECTION_CODES),
    ]


def _obx_lines(report: IssuedReport) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(OBX-3, OBX-4, line, revision) for every line of the report, in reading order."""
    out: list[tuple[str, str, str, dict[str, Any]]] = []
    sections = {str(k): str(v) for k, v in (report.base.get("sections") or {}).items()}
    for name in _ordered_sections(sections):
        for line in text_lines(sections[name]):
            out.append((section_code(name), "1", line, report.base))
    addendum = components(*ADDENDUM_CODE)
    for n, revision in enumerate(report.addenda, start=1):
        header = f"ADDENDUM {n} ({revision.get('author', '')}, {revision.get('signed_at', '')}):"
        for line in [header, *text_lines(str(revision.get("text", "")))]:
            out.append((addendum, str(n), line, revision))
    return out


def report_message(report: IssuedReport, destination: Destination, msh10: str) -> str:
    """The ORU^R01 text (segments joined by CR)."""
    exam, status = report.exam, report.result_status
    patient = dict(exam.get("patient") or {})
    placer, filler = exam.get("placer_order_number", ""), exam.get("filler_order_number", "")
    signed_at = hl7_timestamp(str(report.latest.get("signed_at", "")))
    referring = split_components(str(exam.get("referring_physician", "")))
    reason = str(exam.get("reason", ""))
    obr = [
        "OBR",
        "1",
        escape(placer),
        escape(filler),
        components(exam.get("procedure_code", ""), exam.get("procedure_text", "")),
        "",
        "",
        hl7_timestamp(str(exam.get("completed_at", ""))),  # OBR-7 observation date/time
        *[""] * 8,  # OBR-8 .. OBR-15
        referring,  # OBR-16 ordering provider
        "",
        escape(exam.get("accession", "")),  # OBR-18 accession (IHE RAD TF-2 4.4)
        escape(exam.get("requested_procedure_id", "")),  # OBR-19
        "",
        "",
        signed_at,  # OBR-22 results rpt/status change
        "",
        escape(exam.get("modality", "")),  # OBR-24 diagnostic service section
        status,  # OBR-25 result status
        "",
        "",
        "",
        "",
        "",
        components("", reason) if reason else "",  # OBR-31 reason for study
        escape(report.base.get("author", "")),  # OBR-32 principal result interpreter
    ]
    segments = [
        msh(
            destination.name,
            destination.facility,
            hl7_timestamp(report.occurred_at) or signed_at,  # MSH-7 is required
            MESSAGE_TYPE,
            msh10,
            charset=CHARSET,
        ),
        pid(patient),
        "|".join(["PV1", "1", escape(report.patient_class or "U")]),
        "|".join(
            ["ORC", "RE", escape(placer), escape(filler), "", "CM", "", "", "", signed_at, "", "", referring]
        ),
        "|".join(obr),
    ]
    if report.critical:
        segments.append("|".join(["NTE", "1", "L", escape_text(CRITICAL_NOTE)]))
    flag = "AA" if report.critical else ""
    for n, (code, sub_id, line, revision) in enumerate(_obx_lines(report), start=1):
        obx = [
            "OBX",
            str(n),
            "TX",
            code,
            sub_id,
            escape_text(line),
            "",
            "",
            flag,  # OBX-8 abnormal flags
            "",
            "",
            status,  # OBX-11 observation result status
            "",
            "",
            hl7_timestamp(str(revision.get("signed_at", ""))),  # OBX-14
            "",
            escape(revision.get("author", "")),  # OBX-16 responsible observer
        ]
        segments.append("|".join(obx))
    return "\r".join(segments)


class ReportFeed:
    """A projection (see projections/runner.py) whose `handle` enqueues ORU^R01 messages."""

    name = "report_feed"
    schema_version = 1
    schema: Sequence[str] = SCHEMA
    tables: Sequence[str] = ("report_feed_revisions", "report_feed_patients", "report_feed_orders")

    def __init__(self, destinations: Destinations) -> None:
        self.destinations = destinations

    def handle(self, cur: Cursor, event: Any) -> None:
        kind = type(event).__name__
        if kind == "ReportIssued":
            self._issued(cur, event)
        elif kind == "ExamOrdered":
            application = event.provenance.get("source", {}).get("application", "")
            cur.execute(
                "INSERT INTO report_feed_orders (accession, sending_application) VALUES (?, ?) "
                "ON CONFLICT (accession) DO NOTHING",
                (event.accession, application),
            )
        elif kind in ("PatientRegistered", "PatientUpdated", "PatientDischarged", "AdmissionCancelled"):
            self._patient(cur, event, kind)

    def _patient(self, cur: Cursor, event: Any, kind: str) -> None:
        if kind == "PatientRegistered":
            patient_class = str(getattr(event, "patient_class", "") or "")
        elif kind == "PatientUpdated":
            changes = dict(event.changes)
            if "patient_class" not in changes:
                return
            patient_class = str(changes["patient_class"] or "")
        else:  # discharged, admission cancelled: no current visit
            patient_class = ""
        cur.execute(
            "INSERT INTO report_feed_patients (patient_ref, patient_class) VALUES (?, ?) "
            "ON CONFLICT (patient_ref) DO UPDATE SET patient_class = excluded.patient_class",
            (str(event.originator_id), patient_class),
        )

    def _issued(self, cur: Cursor, event: Any) -> None:
        report_ref = str(event.originator_id)
        revision = dict(event.revision)
        cur.execute(
            "INSERT INTO report_feed_revisions (report_id, revision, body) VALUES (?, ?, ?) "
            "ON CONFLICT (report_id, revision) DO NOTHING",
            (report_ref, int(revision["revision"]), json.dumps(revision)),
        )
        rows = cur.execute(
            "SELECT body FROM report_feed_revisions WHERE report_id = ? AND revision <= ? ORDER BY revision",
            (report_ref, int(revision["revision"])),
        ).fetchall()
        revisions = [json.loads(row["body"]) for row in rows]
        exam = dict(revision.get("exam") or {})
        patient = dict(exam.get("patient") or {})
        accession = str(exam.get("accession", ""))
        patient_key = f"{patient.get('issuer', '')}|{patient.get('id', '')}"
        known = cur.execute(
            "SELECT patient_class FROM report_feed_patients WHERE patient_ref = ?",
            (str(patient_id(patient_key)),),
        ).fetchone()
        patient_class = str(known["patient_class"]) if known else ""
        application = str(exam.get("sending_application", ""))
        if not application:
            order = cur.execute(
                "SELECT sending_application FROM report_feed_orders WHERE accession = ?", (accession,)
            ).fetchone()
            application = str(order["sending_application"]) if order else ""
        report = IssuedReport.from_revisions(
            revisions, patient_class=patient_class, occurred_at=event.timestamp.isoformat()
        )
        outgoing = Outgoing(
            event=EVENT,
            event_key=f"{report_ref}:{event.originator_version}",
            lane=patient_key,
            accession=accession,
            patient_id=str(patient.get("id", "")),
            event_type="ReportIssued",
            order_status=report.result_status,  # for ORU rows: OBR-25 (P, F or C)
            modality=str(exam.get("modality", "")),
            patient_class=patient_class,
            sending_application=application,
        )
        queue_for_subscribers(
            cur, self.destinations, outgoing, lambda to, msh10: report_message(report, to, msh10)
        )
