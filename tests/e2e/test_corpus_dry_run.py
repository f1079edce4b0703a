"""Every message of the shared HL7 corpus (fuzz inputs included) through the dry run: nothing
crashes, every answer is a well-formed AA/AE/AR, and the test prints a table of message type
-> outcome counts so the state of the mapping is visible in the test output."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest

from interfaces.hl7.dry_run import dry_run
from tests.e2e.test_corpus import messages_in

pytestmark = pytest.mark.corpus


def _type_of(report: dict[str, object]) -> str:
    header = report["header"]
    if not isinstance(header, dict):
        return "(no MSH)"
    return str(header["message_type"] or "(no MSH-9)")[:20]


def test_every_corpus_message_goes_through_the_dry_run_without_a_crash(
    corpus_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = sorted(p for p in (corpus_dir / "hl7").rglob("*") if p.is_file() and p.suffix.lower() != ".md")
    assert len(files) >= 40, f"corpus selection looks wrong: {len(files)} files"
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    reasons: dict[str, Counter[str]] = defaultdict(Counter)
    total = 0
    for path in files:
        name = str(path.relative_to(corpus_dir / "hl7"))
        raw = path.read_bytes()
        messages = messages_in(raw) or [raw]  # a file without MSH still gets its NAK
        for n, message in enumerate(messages, start=1):
            report = dry_run(message)
            total += 1
            code = str(report["outcome"])
            label = f"{name} #{n}"
            assert code in ("AA", "AE", "AR"), label
            ack = str(report["ack"]).split("\n")
            if report["ack"] or not report["ack_note"]:  # no ACK only when MSH-15 asks for none
                assert ack[0].startswith("MSH") and ack[1].startswith("MSA"), (label, report["ack"])
                assert report["ack_code"] in (code, code.replace("A", "C", 1)), (label, report["ack"])
            else:
                ack = ["ERR (not sent)"]
            refusal = report["refusal"]
            if code == "AA":
                assert refusal is None and report["commands"], label
            else:
                assert isinstance(refusal, dict) and refusal["reason"], label
                assert any(s.startswith("ERR") for s in ack), (label, report["ack"])
                reason = str(refusal["reason"])
                assert "internal error" not in reason, (label, reason)  # a mapping bug, not bad input
                reasons[code][reason[:70]] += 1
            outcomes[_type_of(report)][code] += 1
    width = max(len(t) for t in outcomes)
    lines = [f"{'message type':<{width}}  {'accepted':>8} {'AE':>4} {'AR':>4}", "-" * (width + 20)]
    for message_type in sorted(outcomes):
        counts = outcomes[message_type]
        lines.append(f"{message_type:<{width}}  {counts['AA']:>8} {counts['AE']:>4} {counts['AR']:>4}")
    grand = sum(outcomes.values(), Counter())
    lines.append(
        f"{total} messages in {len(files)} files: accepted {grand['AA']}, AE {grand['AE']}, AR {grand['AR']}"
    )
    for code in ("AE", "AR"):
        for reason, count in reasons[code].most_common(8):
            lines.append(f"  {code} x{count}: {reason}")
    with capsys.disabled():
        print("\n--- corpus dry run: message type -> outcome ---\n" + "\n".join(lines))
    assert grand["AA"] > 0, "no corpus message was accepted: the mapping or the reading is broken"
