"""The Report aggregate: the reading of one exam, from the first claim to the last addendum.

One per exam (id derived from the accession). It keeps who is reading (a claim that expires),
the autosaved draft, every issued revision (preliminary, final, addendum, correction: new
revisions, never edits) and the critical-result notification chain. The exam's own state moves
through the Exam aggregate in the same transaction (the activity saves both).

Time comes in with the command (`now`, from its provenance): the domain reads no clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import DomainError
from domain.provenance import Provenance, instant

REPORT_NAMESPACE = uuid5(NAMESPACE_URL, "urn:radflow:report")

# the parts of a radiology report, in reading order (RSNA / ACR structure)
SECTIONS = ("indication", "technique", "comparison", "findings", "impression")
# what an issued revision is, and the OBR-25 / OBX-11 result status it travels with
RESULT_STATUS = {"preliminary": "P", "final": "F", "addendum": "C", "correction": "C"}
# exam states in which a person may read and report
READABLE_STATES = ("completed", "reported")


def report_id(accession: str) -> UUID:
    return uuid5(REPORT_NAMESPACE, accession)


def render(sections: dict[str, str]) -> str:
    """The report as plain text: each non-empty section under its heading, known ones first."""
    names = [*SECTIONS, *sorted(k for k in sections if k not in SECTIONS)]
    parts = [
        f"{name.upper()}:\n{sections[name].strip()}" for name in names if str(sections.get(name, "")).strip()
    ]
    return "\n\n".join(parts)


class ReportRefused(DomainError):
    def __init__(self, accession: str, why: str) -> None:
        super().__init__(f"exam {accession}: {why}")
        self.accession = accession
        self.why = why


def refusal(
    summary: dict[str, Any], action: str, user: str, now: datetime, *, with_text: bool = True
) -> str | None:
    """Why `user` may not do `action` now, or None. The rules the Report's methods enforce,
    also usable on a summary alone (the workflow's update validator answers from it at once).

    `summary` is `Report.summary(exam_state)`: exam_state, status, claimed_by, claim_expires_at,
    critical."""
    state = summary.get("exam_state") or ""
    status = summary.get("status") or ""
    holder = summary.get("claimed_by") or ""
    expires = summary.get("claim_expires_at") or ""
    held_by_other = bool(holder) and holder != user and bool(expires) and instant(expires) > now
    if not user:
        return "who is acting must be named"
    if action == "acknowledge_critical":
        return None if summary.get("critical") == "awaiting" else "no critical result awaits acknowledgement"
    if state not in READABLE_STATES:
        return f"cannot be reported while {state or 'unknown'}"
    if held_by_other and action != "release":
        return f"claimed by {holder} until {expires}"
    if action == "release":
        return (
            None if holder == user else ("not claimed" if not holder else f"claimed by {holder}, not {user}")
        )
    if action in ("claim", "save_draft"):
        return None
    if not with_text:
        return "a report needs findings or an impression"
    if action == "preliminary":
        if status == "final":
            return "the report is signed: write an addendum or a correction"
        return None if state == "completed" else "a preliminary report only precedes the final one"
    if action == "final":
        return "the report is already signed" if status == "final" else None
    if action in ("addendum", "correction"):
        return (
            None
            if status == "final"
            else f"no signed report to {'amend' if action == 'addendum' else 'correct'}"
        )
    return f"unknown action {action!r}"


class Report(Aggregate):
    @staticmethod
    def create_id(accession: str, **_: Any) -> UUID:
        return report_id(accession)

    @event("ReportOpened")
    def __init__(self, accession: str, provenance: dict[str, Any]) -> None:
        self.accession = accession
        self.status = ""  # "" | draft | preliminary | final (addenda and corrections keep final)
        self.claimed_by = ""
        self.claim_expires_at = ""
        self.draft: dict[str, str] = {}
        self.draft_author = ""
        self.revisions: list[dict[str, Any]] = []
        self.critical: dict[str, Any] = {}  # the open notification chain, if any
        self.applied: list[str] = [Provenance.from_dict(provenance).dedupe_key]

    @classmethod
    def open(cls, accession: str, provenance: Provenance) -> Report:
        return cls(accession=accession, provenance=provenance.as_dict())

    def has_applied(self, provenance: Provenance) -> bool:
        return provenance.dedupe_key in self.applied

    def summary(self, exam_state: str) -> dict[str, Any]:
        """What the workflow keeps to validate the next action without I/O."""
        return {
            "exam_state": exam_state,
            "status": self.status,
            "claimed_by": self.claimed_by,
            "claim_expires_at": self.claim_expires_at,
            "critical": self.critical.get("state", ""),
            "critical_due_at": self.critical.get("ack_due_at", "")
            if self.critical.get("state") == "awaiting"
            else "",
            "critical_level": self.critical.get("level", 0),
            "revisions": len(self.revisions),
        }

    def _refuse_unless(
        self, exam_state: str, action: str, user: str, provenance: Provenance, **kw: Any
    ) -> datetime:
        now = instant(provenance.occurred_at)
        why = refusal(self.summary(exam_state), action, user, now, **kw)
        if why:
            raise ReportRefused(self.accession, why)
        return now

    # --- who is reading -------------------------------------------------------------------------

    def claim(self, radiologist: str, minutes: float, exam_state: str, provenance: Provenance) -> None:
        """Claim (or renew a claim on) the reading; a live claim of another is refused."""
        now = self._refuse_unless(exam_state, "claim", radiologist, provenance)
        expires = (now + timedelta(minutes=minutes)).isoformat()
        self._claimed(radiologist=radiologist, expires_at=expires, provenance=provenance.as_dict())

    def release(self, radiologist: str, reason: str, exam_state: str, provenance: Provenance) -> None:
        self._refuse_unless(exam_state, "release", radiologist, provenance)
        self._released(radiologist=radiologist, reason=reason, provenance=provenance.as_dict())

    def _holds(self, user: str, minutes: float, exam_state: str, provenance: Provenance) -> None:
        """Writing implicitly claims: a draft or a signature renews the writer's claim."""
        now = instant(provenance.occurred_at)
        if self.claimed_by != user or not self.claim_expires_at or instant(self.claim_expires_at) <= now:
            self.claim(user, minutes, exam_state, provenance)

    @event("ReadingClaimed")
    def _claimed(self, radiologist: str, expires_at: str, provenance: dict[str, Any]) -> None:
        self.claimed_by = radiologist
        self.claim_expires_at = expires_at
        self.applied.append(Provenance.from_dict(provenance).dedupe_key)

    @event("ReadingReleased")
    def _released(self, radiologist: str, reason: str, provenance: dict[str, Any]) -> None:
        self.claimed_by = ""
        self.claim_expires_at = ""
        self.applied.append(Provenance.from_dict(provenance).dedupe_key)

    # --- writing --------------------------------------------------------------------------------

    def save_draft(
        self, author: str, sections: dict[str, str], minutes: float, exam_state: str, provenance: Provenance
    ) -> bool:
        """Autosave. False (no event) when the text is what the draft already holds."""
        self._refuse_unless(exam_state, "save_draft", author, provenance)
        self._holds(author, minutes, exam_state, provenance)
        cleaned = _clean(sections)
        if cleaned == self.draft and author == self.draft_author:
            return False
        self._draft_saved(author=author, sections=cleaned, provenance=provenance.as_dict())
        return True

    @event("ReportDraftSaved")
    def _draft_saved(self, author: str, sections: dict[str, str], provenance: dict[str, Any]) -> None:
        self.draft = dict(sections)
        self.draft_author = author
        if not self.status:
            self.status = "draft"
        self.applied.append(Provenance.from_dict(provenance).dedupe_key)

    def issue(
        self,
        kind: str,
        author: str,
        sections: dict[str, str],
        *,
        exam: dict[str, Any],
        exam_state: str,
        minutes: float,
        provenance: Provenance,
        critical_contacts: list[dict[str, str]] | None = None,
        ack_minutes: float = 0,
    ) -> dict[str, Any]:
        """Issue a revision (preliminary, final, addendum, correction); returns it. `exam` is the
        exam as it stands (patient, order numbers, procedure), kept with the revision so the
        report says whom and what it was about when it was signed. With `critical_contacts`
        the result is critical and the first contact must acknowledge within `ack_minutes`."""
        if kind not in RESULT_STATUS:
            raise ReportRefused(self.accession, f"unknown kind of report {kind!r}")
        cleaned = _clean(sections)
        has_text = bool(
            cleaned.get("findings") or cleaned.get("impression") or (kind == "addendum" and cleaned)
        )
        now = self._refuse_unless(exam_state, kind, author, provenance, with_text=has_text)
        self._holds(author, minutes, exam_state, provenance)
        number = len(self.revisions) + 1
        revision: dict[str, Any] = {
            "revision": number,
            "kind": kind,
            "result_status": RESULT_STATUS[kind],
            "sections": cleaned,
            "text": render(cleaned),
            "author": author,
            "signed_at": now.isoformat(),
            "critical": bool(critical_contacts),
            "exam": dict(exam),
        }
        self._issued(revision=revision, provenance=provenance.as_dict())
        if critical_contacts:
            self._critical_flagged(
                revision=number,
                contacts=[dict(c) for c in critical_contacts],
                ack_due_at=(now + timedelta(minutes=ack_minutes)).isoformat(),
                provenance=provenance.as_dict(),
            )
        return revision

    @event("ReportIssued")
    def _issued(self, revision: dict[str, Any], provenance: dict[str, Any]) -> None:
        self.revisions = [*self.revisions, dict(revision)]
        self.status = "preliminary" if revision["kind"] == "preliminary" else "final"
        self.draft = {}
        self.draft_author = ""
        if revision["kind"] != "preliminary":  # signed: the reading is done
            self.claimed_by = ""
            self.claim_expires_at = ""
        self.applied.append(Provenance.from_dict(provenance).dedupe_key)

    # --- critical results -----------------------------------------------------------------------

    @event("CriticalResultFlagged")
    def _critical_flagged(
        self, revision: int, contacts: list[dict[str, str]], ack_due_at: str, provenance: dict[str, Any]
    ) -> None:
        self.critical = {
            "state": "awaiting",
            "revision": revision,
            "contacts": list(contacts),
            "level": 0,
            "ack_due_at": ack_due_at,
        }

    def acknowledge_critical(self, by: str, note: str, exam_state: str, provenance: Provenance) -> None:
        self._refuse_unless(exam_state, "acknowledge_critical", by, provenance)
        self._critical_acknowledged(
            by=by, note=note, level=self.critical["level"], provenance=provenance.as_dict()
        )

    @event("CriticalResultAcknowledged")
    def _critical_acknowledged(self, by: str, note: str, level: int, provenance: dict[str, Any]) -> None:
        self.critical = {**self.critical, "state": "acknowledged", "acknowledged_by": by}
        self.applied.append(Provenance.from_dict(provenance).dedupe_key)

    def check_critical(self, level: int, ack_minutes: float, provenance: Provenance) -> bool:
        """The wait at `level` ran out: escalate to the next contact, or, after the last one,
        record that nobody acknowledged. False when there is nothing to do (acknowledged
        meanwhile, already escalated, or not yet due)."""
        now = instant(provenance.occurred_at)
        chain = self.critical
        due = chain.get("ack_due_at") or ""
        if chain.get("state") != "awaiting" or chain.get("level") != level or not due or instant(due) > now:
            return False
        contacts = chain["contacts"]
        if level + 1 < len(contacts):
            self._critical_escalated(
                level=level + 1,
                contact=dict(contacts[level + 1]),
                ack_due_at=(now + timedelta(minutes=ack_minutes)).isoformat(),
                provenance=provenance.as_dict(),
            )
        else:
            self._critical_unacknowledged(level=level, provenance=provenance.as_dict())
        return True

    @event("CriticalResultEscalated")
    def _critical_escalated(
        self, level: int, contact: dict[str, str], ack_due_at: str, provenance: dict[str, Any]
    ) -> None:
        self.critical = {**self.critical, "level": level, "ack_due_at": ack_due_at}
        self.applied.append(Provenance.from_dict(provenance).dedupe_key)

    @event("CriticalResultUnacknowledged")
    def _critical_unacknowledged(self, level: int, provenance: dict[str, Any]) -> None:
        """Every contact was tried: the chain stays open (anyone may still acknowledge) with
        no further timer; operations see it."""
        self.critical = {**self.critical, "ack_due_at": "", "exhausted": True}
        self.applied.append(Provenance.from_dict(provenance).dedupe_key)


def _clean(sections: dict[str, str]) -> dict[str, str]:
    """Keep text sections only, without surrounding blanks; empty ones dropped."""
    return {str(k): str(v).strip() for k, v in sections.items() if str(v).strip()}


# command kind -> the action `refusal` knows; an issued report's action is its kind
ACTIONS = {
    "claim_reading": "claim",
    "release_reading": "release",
    "save_report_draft": "save_draft",
    "acknowledge_critical_result": "acknowledge_critical",
}


def action_of(command: dict[str, Any]) -> tuple[str, str, bool]:
    """(action, user, has_text) of a reading command in its dict form, for the validator."""
    kind = command.get("kind", "")
    action = ACTIONS.get(kind) or str(command.get("report_kind", ""))
    user = str(command.get("radiologist") or command.get("author") or command.get("by") or "")
    sections = _clean(dict(command.get("sections") or {}))
    has_text = bool(sections.get("findings") or sections.get("impression") or (action == "addendum" and sections))
    return action, user, has_text


def current_text(revisions: list[dict[str, Any]]) -> str:
    """The report as it now stands: the latest final or corrected text, then every addendum
    signed after it, each under its own heading. "" before anything was issued."""
    base = -1
    for i, revision in enumerate(revisions):
        if revision["kind"] in ("preliminary", "final", "correction"):
            base = i
    if base < 0:
        return ""
    parts = [revisions[base]["text"]]
    for n, revision in enumerate((r for r in revisions[base + 1 :] if r["kind"] == "addendum"), start=1):
        parts.append(f"ADDENDUM {n} ({revision['author']}, {revision['signed_at']}):\n{revision['text']}")
    return "\n\n".join(parts)
