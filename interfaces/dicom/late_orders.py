"""Orders that arrive after the modality: an MPPS or a study queued because its accession was
never ordered is linked by radflow itself once that order's exam exists, so nobody has to
reconcile what the HIS merely sent late.

Only the plain case is taken: one accession, the one the modality named, an exam that exists
(in the worklist projection, so its PlaceOrder was applied before the step's commands reach the
workflow) and the same Patient ID, or none on either side. A group case, a patient mismatch or
a cancelled exam stay in the queue for a person. The link goes through the same `link` /
`link_study` a person uses, with radflow as the actor and the reason in the history.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from adapters.mpps_log import MppsLog
from adapters.storage_log import StorageLog
from interfaces.dicom.mpps import LinkRefused, link
from interfaces.dicom.storage import link_study

log = logging.getLogger("radflow.dicom.late_orders")

ACTOR = "radflow"
REASON = "the order for this accession arrived after the modality's message; accession and patient ID match"
MPPS_REASON_PREFIX = "unknown accession "
STUDY_REASON = "accession {} was never ordered"


@dataclass(frozen=True)
class Exam:
    accession: str
    patient_id: str
    state: str


ExamLookup = Callable[[str], Exam | None]


def link_late_arrivals(mpps_log: MppsLog, storage_log: StorageLog, exam_of: ExamLookup) -> list[str]:
    """Link what waits for an order that now exists; returns what was linked (for the log and
    the tests). A link refused meanwhile (another person linked it first) is skipped."""
    linked = []
    for entry in mpps_log.reconciliation():
        accession = entry["claimed_accession"]
        if not entry["reason"].startswith(MPPS_REASON_PREFIX) or not accession or "," in accession:
            continue
        if not _same_patient(exam_of(accession), entry["step"].get("patient_id", "")):
            continue
        try:
            link(mpps_log, entry["sop_instance_uid"], accession, REASON, ACTOR)
        except LinkRefused as refused:
            log.info("late order: mpps not linked", extra={"accession": accession, "why": str(refused)})
            continue
        linked.append(f"mpps:{entry['sop_instance_uid']}")
    for study in storage_log.reconciliation():
        accession = study["claimed_accession"]
        if not accession or study["queued_reason"] != STUDY_REASON.format(accession):
            continue
        if not _same_patient(exam_of(accession), study["patient_id"]):
            continue
        try:
            link_study(storage_log, study["study_instance_uid"], accession, REASON, ACTOR)
        except LinkRefused as refused:
            log.info("late order: study not linked", extra={"accession": accession, "why": str(refused)})
            continue
        linked.append(f"study:{study['study_instance_uid']}")
    if linked:
        log.info("late orders linked", extra={"linked": linked})
    return linked


def _same_patient(exam: Exam | None, patient_id: str) -> bool:
    if exam is None or exam.state in ("cancelled", "discontinued"):
        return False
    return not exam.patient_id or not patient_id or exam.patient_id == patient_id
