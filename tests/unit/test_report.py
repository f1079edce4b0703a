"""The Report aggregate: claims that expire, drafts, revisions that are never edits, and the
critical-result chain; `refusal` (the workflow validator's answer) agrees with the aggregate."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from domain.errors import DomainError
from domain.provenance import Provenance, Source, instant
from domain.report import Report, ReportRefused, action_of, current_text, refusal, render

T0 = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)
_ids = itertools.count(1)
EXAM = {"accession": "A1", "patient": {"id": "P1", "issuer": "HOSP", "name": "DOE^JANE"}}
CONTACTS = [{"role": "referring_physician", "name": "Dr Ref"}, {"role": "second_contact", "name": "Dr Two"}]


def by(user: str, at: datetime = T0) -> Provenance:
    n = next(_ids)
    return Provenance(
        actor=user,
        source=Source(kind="api", application="radflow-api", control_id=str(n), message_id=f"api:{n}"),
        occurred_at=at.isoformat(),
    )


def opened() -> Report:
    return Report.open("A1", by("system"))


def sign(report: Report, user: str, kind: str = "final", at: datetime = T0, **kw: Any) -> dict[str, Any]:
    return report.issue(
        kind,
        user,
        {"findings": "No bleed.", "impression": "Normal."},
        exam=EXAM,
        exam_state=kw.pop("exam_state", "completed" if kind in ("preliminary", "final") else "reported"),
        minutes=30,
        provenance=by(user, at),
        **kw,
    )


def test_a_second_radiologist_cannot_claim_a_live_claim_but_can_after_it_expires() -> None:
    report = opened()
    report.claim("alice", 30, "completed", by("alice"))
    with pytest.raises(ReportRefused, match="claimed by alice"):
        report.claim("bob", 30, "completed", by("bob", T0 + timedelta(minutes=29)))
    report.claim("bob", 30, "completed", by("bob", T0 + timedelta(minutes=31)))
    assert report.claimed_by == "bob"


def test_a_draft_claims_and_an_unchanged_draft_records_nothing() -> None:
    report = opened()
    assert report.save_draft("alice", {"findings": " x "}, 30, "completed", by("alice"))
    assert report.claimed_by == "alice" and report.status == "draft" and report.draft == {"findings": "x"}
    versions = report.version
    assert not report.save_draft("alice", {"findings": "x", "impression": ""}, 30, "completed", by("alice"))
    assert report.version == versions
    with pytest.raises(ReportRefused, match="claimed by alice"):
        report.save_draft("bob", {"findings": "y"}, 30, "completed", by("bob"))


def test_final_is_signed_once_then_only_addenda_and_corrections() -> None:
    report = opened()
    first = sign(report, "alice")
    assert first["result_status"] == "F" and report.status == "final" and report.claimed_by == ""
    with pytest.raises(ReportRefused, match="already signed"):
        sign(report, "alice", exam_state="reported")
    with pytest.raises(ReportRefused, match="signed: write an addendum"):
        sign(report, "alice", "preliminary", exam_state="reported")
    addendum = report.issue(
        "addendum",
        "bob",
        {"addendum": "Small cyst."},
        exam=EXAM,
        exam_state="reported",
        minutes=30,
        provenance=by("bob"),
    )
    assert addendum["result_status"] == "C" and addendum["revision"] == 2
    assert report.revisions[0] == first  # never edited
    assert "ADDENDUM 1 (bob" in current_text(report.revisions)
    assert current_text(report.revisions).startswith("FINDINGS:\nNo bleed.")


def test_no_addendum_before_a_signed_report_and_no_empty_report() -> None:
    report = opened()
    with pytest.raises(ReportRefused, match="no signed report to amend"):
        sign(report, "alice", "addendum", exam_state="completed")
    with pytest.raises(ReportRefused, match="findings or an impression"):
        report.issue(
            "final",
            "alice",
            {"technique": "CT"},
            exam=EXAM,
            exam_state="completed",
            minutes=30,
            provenance=by("alice"),
        )


@pytest.mark.parametrize(
    "state", ["ordered", "scheduled", "in_progress", "cancelled", "discontinued", "billed"]
)
def test_an_exam_not_yet_performed_or_closed_cannot_be_read(state: str) -> None:
    report = opened()
    with pytest.raises(ReportRefused, match=f"while {state}"):
        report.claim("alice", 30, state, by("alice"))
    with pytest.raises(ReportRefused, match=f"while {state}"):
        sign(report, "alice", exam_state=state)


def test_critical_result_escalates_level_by_level_until_acknowledged() -> None:
    report = opened()
    sign(
        report,
        "alice",
        critical_contacts=[*CONTACTS, {"role": "department", "name": "ED desk"}],
        ack_minutes=10,
    )
    assert report.critical["state"] == "awaiting" and report.critical["level"] == 0
    assert not report.check_critical(0, 10, by("radflow", T0 + timedelta(minutes=9)))  # not due yet
    assert report.check_critical(0, 10, by("radflow", T0 + timedelta(minutes=10)))
    assert report.critical["level"] == 1
    assert not report.check_critical(0, 10, by("radflow", T0 + timedelta(minutes=30)))  # stale level
    assert report.check_critical(1, 10, by("radflow", T0 + timedelta(minutes=20)))
    assert report.critical["level"] == 2
    assert report.check_critical(2, 10, by("radflow", T0 + timedelta(minutes=30)))
    assert report.critical.get("exhausted") and report.summary("reported")["critical_due_at"] == ""
    report.acknowledge_critical("ED desk", "called back", "reported", by("ED desk"))
    assert report.critical["state"] == "acknowledged"
    with pytest.raises(ReportRefused, match="no critical result awaits"):
        report.acknowledge_critical("ED desk", "", "reported", by("ED desk"))


def test_render_orders_sections_and_drops_empty_ones() -> None:
    text = render({"impression": "Normal.", "findings": "Clear.", "indication": " ", "extra": "x"})
    assert text == "FINDINGS:\nClear.\n\nIMPRESSION:\nNormal.\n\nEXTRA:\nx"


def test_action_of_reads_the_wire_form() -> None:
    assert action_of({"kind": "claim_reading", "radiologist": "a"}) == ("claim", "a", False)
    assert action_of(
        {"kind": "issue_report", "report_kind": "final", "author": "a", "sections": {"impression": "x"}}
    ) == (
        "final",
        "a",
        True,
    )


def test_times_without_offset_are_utc() -> None:
    assert instant("2026-12-05T08:00:00") == T0


USERS = st.sampled_from(["alice", "bob"])
ACTIONS = st.sampled_from(
    [
        "claim",
        "release",
        "save_draft",
        "preliminary",
        "final",
        "addendum",
        "correction",
        "acknowledge_critical",
    ]
)


class ReportMachine(RuleBasedStateMachine):
    """Random actions by two radiologists over time: the aggregate refuses exactly what
    `refusal` (the validator) refuses, and issued revisions are never changed."""

    def __init__(self) -> None:
        super().__init__()
        self.report = opened()
        self.now = T0
        self.exam_state = "completed"
        self.issued: list[dict[str, Any]] = []

    @rule(action=ACTIONS, user=USERS, minutes=st.integers(0, 40), text=st.booleans(), critical=st.booleans())
    def act(self, action: str, user: str, minutes: int, text: bool, critical: bool) -> None:
        self.now += timedelta(minutes=minutes)
        sections = {"impression": "Normal."} if text else {"technique": "CT"}
        summary = self.report.summary(self.exam_state)
        _, _, has_text = action_of({"report_kind": action, "sections": sections})
        expected = refusal(summary, action, user, self.now, with_text=has_text)
        provenance = by(user, self.now)
        try:
            if action == "claim":
                self.report.claim(user, 30, self.exam_state, provenance)
            elif action == "release":
                self.report.release(user, "", self.exam_state, provenance)
            elif action == "save_draft":
                self.report.save_draft(user, sections, 30, self.exam_state, provenance)
            elif action == "acknowledge_critical":
                self.report.acknowledge_critical(user, "", self.exam_state, provenance)
            else:
                revision = self.report.issue(
                    action,
                    user,
                    sections,
                    exam=EXAM,
                    exam_state=self.exam_state,
                    minutes=30,
                    provenance=provenance,
                    critical_contacts=CONTACTS if critical else None,
                    ack_minutes=5,
                )
                self.issued.append(revision)
                if action == "final":
                    self.exam_state = "reported"
        except DomainError as refused:
            assert expected is not None, (
                f"aggregate refused {action} by {user} that the validator allows: {refused}"
            )
            return
        assert expected is None, f"aggregate allowed {action} by {user}: validator said {expected}"

    @invariant()
    def revisions_are_append_only(self) -> None:
        assert self.report.revisions == self.issued
        finals = [r for r in self.report.revisions if r["kind"] == "final"]
        assert len(finals) <= 1
        if finals:
            first_final = self.report.revisions.index(finals[0])
            assert all(r["kind"] != "preliminary" for r in self.report.revisions[first_final:])


TestReportMachine = ReportMachine.TestCase
TestReportMachine.settings = settings(
    max_examples=150, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
