"""Every ADT, ORM and OMI message of the shared corpus (real feeds' quirks included) goes over
MLLP to one running radflow: each gets a well-formed ACK, the ACK code agrees with what the
message carries, accepted messages take effect, and the listener never stops serving."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack
from tests.e2e.mllp import (
    EXAMPLES,
    MllpConnection,
    exchange,
    history_types,
    log_rows,
    parse_ack,
    wait_for_exam,
)

pytestmark = pytest.mark.corpus

WANTED_TYPES = {"ADT", "ORM", "OMI"}
NAME_SAYS = re.compile(r"(?i)(?:^|[^a-z])(adt|orm|omi)(?:[^a-z]|$)")
HANDLED = {("ADT", t) for t in ("A01", "A03", "A04", "A08", "A11", "A31", "A40", "A47")} | {
    ("ORM", "O01"),
    ("OMI", "O23"),
}
ENVELOPE = (b"FHS", b"BHS", b"BTS", b"FTS")  # batch/file wrapper segments, not part of a message
LINE = re.compile(rb"(\r\n|\n\r|\n|\r)")


# --- reading the corpus by hand (independent of radflow's parser) ---------------------------


def unframe(raw: bytes) -> bytes:
    """Drop MLLP framing stored in the file (<VT> ... <FS><CR>)."""
    body = raw.strip(b"\r\n")
    if body.startswith(b"\x0b"):
        body = body[1:]
        end = body.rfind(b"\x1c")
        if end != -1 and not body[end:].strip(b"\x1c\r\n"):
            body = body[:end]
    return body


def lines_of(body: bytes) -> list[tuple[bytes, bytes]]:
    """(segment, separator that followed it) pairs, so chunks keep their original bytes."""
    parts = LINE.split(body)
    return list(zip(parts[0::2], [*parts[1::2], b""], strict=True))


def is_msh(segment: bytes) -> bool:
    return segment.lstrip(b"\xef\xbb\xbf\x00\x01\x02").startswith(b"MSH")


def messages_in(raw: bytes) -> list[bytes]:
    """One message per MSH; batch envelopes dropped. A plain one-message file goes as it is."""
    body = unframe(raw)
    lines = lines_of(body)
    starts = [i for i, (segment, _) in enumerate(lines) if is_msh(segment)]
    has_envelope = any(segment.startswith(ENVELOPE) for segment, _ in lines)
    if len(starts) <= 1 and not has_envelope:
        return [body] if starts else []
    chunks = []
    for n, start in enumerate(starts):
        stop = starts[n + 1] if n + 1 < len(starts) else len(lines)
        kept = [seg + sep for seg, sep in lines[start:stop] if not seg.startswith(ENVELOPE)]
        chunks.append(b"".join(kept))
    return chunks


# enhanced-mode commit ACKs read as their original-mode meaning
ENHANCED = {"CA": "AA", "CE": "AE", "CR": "AR", "AA": "AA", "AE": "AE", "AR": "AR"}


@dataclass
class Reading:
    """What the message says, read by hand with its own separators."""

    code: str
    trigger: str
    control_id: str
    missing: str  # '' when the message carries everything radflow needs to act on it
    accept_ack: str = ""  # MSH-15: when set, enhanced mode (CA/CE/CR; NE/ER/SU may mean no ACK)

    @property
    def type(self) -> str:
        return f"{self.code}^{self.trigger}" if self.trigger else self.code


def read(message: bytes) -> Reading:
    text = message.decode("latin-1").lstrip("\ufeff\xef\xbb\xbf\x00\x01\x02")
    segments = [s for s in re.split(r"\r\n|\n|\r", text) if s.strip()]
    msh = next((s for s in segments if s.startswith("MSH")), "")
    if len(msh) < 8:
        return Reading("", "", "", "no MSH")
    fs = msh[3]
    msh_fields = ["MSH", fs, *msh[4:].split(fs)]
    enc = msh_fields[2]
    comp, rep = enc[:1] or "^", enc[1:2] or "~"

    def fields(segment: str) -> list[str]:
        f = segment.split(fs)
        return ["MSH", fs, *f[1:]] if f[0] == "MSH" else f

    def value(segment: str | None, n: int) -> str:
        if segment is None:
            return ""
        f = fields(segment)
        v = f[n].split(rep)[0].split(comp)[0].strip() if n < len(f) else ""
        return "" if v == '""' else v

    def get(n: int) -> str:
        return msh_fields[n] if n < len(msh_fields) else ""

    msg_type = get(9).split(comp)
    code = msg_type[0].strip().upper()
    trigger = msg_type[1].strip().upper() if len(msg_type) > 1 else ""
    reading = Reading(code, trigger, get(10).strip(), "", get(15).split(comp)[0].strip().upper())
    if (code, trigger) not in HANDLED:
        reading.missing = "not a handled type"
        return reading
    if not reading.control_id:
        reading.missing = "MSH-10"
        return reading
    pid = next((s for s in segments if fields(s)[0] == "PID"), None)
    if not (value(pid, 3) or value(pid, 2)):
        reading.missing = "patient id"
        return reading
    if code == "ADT":
        if trigger in ("A40", "A47"):
            pairs = [value(s, 1) for s in segments if fields(s)[0] == "MRG"]
            pids = [s for s in segments if fields(s)[0] == "PID"]
            if len(pairs) < len(pids) or not all(pairs):
                reading.missing = "MRG-1 prior patient id"
        return reading
    groups: list[dict[str, str]] = []
    for segment in segments:
        sid = fields(segment)[0]
        if sid == "ORC":
            number = value(segment, 2) or value(segment, 3)
            groups.append({"control": value(segment, 1).upper(), "accession": "", "number": number})
            groups[-1]["status"] = value(segment, 5).upper()
        elif sid in ("OBR", "IPC") and groups and not groups[-1]["accession"]:
            groups[-1]["accession"] = value(segment, 18 if sid == "OBR" else 1)
            if sid == "OBR":
                groups[-1]["number"] = groups[-1]["number"] or value(segment, 2) or value(segment, 3)
                groups[-1]["time"] = value(segment, 36)
        elif sid == "TQ1" and groups:
            groups[-1]["time"] = value(segment, 7)
    if not groups:
        reading.missing = "ORC"
    elif any(g["control"] not in ("NW", "CA", "XO", "SC") for g in groups):
        reading.missing = "order control NW/CA/XO/SC"
    elif any(not g["accession"] and (g["control"] == "NW" or not g["number"]) for g in groups):
        reading.missing = "accession"
    elif any(g["control"] == "SC" and g["status"] not in ("SC", "IP", "CM", "CA", "DC") for g in groups):
        reading.missing = "order status ORC-5"
    elif any(g["control"] == "SC" and g["status"] == "SC" and not g.get("time") for g in groups):
        reading.missing = "scheduled time"
    return reading


def corpus_files(corpus: Path) -> list[Path]:
    chosen = []
    for path in sorted(p for p in (corpus / "hl7").rglob("*") if p.is_file()):
        codes = {read(m).code for m in messages_in(path.read_bytes())}
        if codes & WANTED_TYPES or NAME_SAYS.search(path.stem):
            chosen.append(path)
    return chosen


# --- the test -------------------------------------------------------------------------------


@dataclass
class Outcome:
    file: str
    reading: Reading
    code: str
    reason: str


def _accepted(row: dict[str, Any]) -> str:
    if row["status"] == "duplicate":
        return f"duplicate of message {row['duplicate_of']}"
    kinds = [entry["command"]["kind"] for entry in json.loads(row["commands"] or "[]")]
    return f"{row['status']}: {', '.join(kinds)} {row['accession'] or ''}".rstrip()


def _table(outcomes: list[Outcome]) -> str:
    width = max(len(o.file) for o in outcomes)
    lines = [f"{'file':<{width}}  {'type':<10} MSA-1  reason", "-" * (width + 60)]
    lines += [f"{o.file:<{width}}  {o.reading.type[:10]:<10} {o.code:<5}  {o.reason[:90]}" for o in outcomes]
    counts = {c: sum(o.code == c for o in outcomes) for c in ("AA", "AE", "AR")}
    lines.append(f"{len(outcomes)} messages: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    return "\n".join(lines)


def test_every_adt_orm_and_omi_message_of_the_corpus_gets_a_consistent_ack_and_the_listener_keeps_serving(
    stack: Stack, corpus_dir: Path, record_property: Callable[[str, object], None]
) -> None:
    files = corpus_files(corpus_dir)
    assert len(files) >= 40, f"corpus selection looks wrong: {len(files)} files"
    outcomes: list[Outcome] = []
    for path in files:
        name = str(path.relative_to(corpus_dir / "hl7"))
        messages = messages_in(path.read_bytes())
        assert messages, f"{name}: no MSH-started message found"
        with MllpConnection(stack.mllp_port, timeout=30) as conn:  # one connection per file
            for n, message in enumerate(messages, start=1):
                label = name if len(messages) == 1 else f"{name} #{n}"
                reading = read(message)
                if reading.accept_ack in ("NE", "ER", "SU"):
                    # enhanced mode that may ask for no ACK at all: sent on a connection of its
                    # own, and judged by the log row the listener wrote
                    with MllpConnection(stack.mllp_port, timeout=30) as quiet:
                        quiet.send(message)
                        stack.wait_until(lambda m=message: log_rows(stack, "raw = ?", (m,)), timeout=15)
                    row = log_rows(stack, "raw = ?", (message,))[-1]
                    assert row["ack_code"] in ENHANCED, (label, row["ack_code"])
                    if row["ack_code"] in ("CA", "AA"):
                        assert not reading.missing, f"{label}: accepted although it lacks {reading.missing}"
                    outcomes.append(
                        Outcome(label, reading, ENHANCED[row["ack_code"]], row["error"] or _accepted(row))
                    )
                    continue
                ack = parse_ack(conn.request(message), encoding="latin-1")
                code = ENHANCED.get(ack.code, ack.code)

                assert code in ("AA", "AE", "AR"), (label, ack.raw)
                if reading.control_id:
                    assert ack.control_id == reading.control_id, (label, ack.raw)
                if code == "AA":
                    assert not reading.missing, f"{label}: AA although it lacks {reading.missing}"
                else:
                    assert ack.text.strip(), f"{label}: {code} without a reason in MSA-3"
                    assert ack.err is not None and ack.err[3].strip(), f"{label}: {code} without ERR"
                    if not reading.missing:  # complete messages are refused only by order rules
                        assert code == "AE", (label, ack.text)
                        assert any(
                            why in ack.text
                            for why in ("duplicate order", "unknown order", "unknown accession")
                        ), (label, ack.text)
                logged = [r for r in log_rows(stack, "raw = ?", (message,)) if bytes(r["ack"]) == ack.raw]
                assert logged, f"{label}: no message-log row with this ACK"
                row = logged[-1]
                assert row["ack_code"] == code  # the log keeps the outcome; the ACK bytes what was sent
                outcomes.append(Outcome(label, reading, code, ack.text or _accepted(row)))
        assert stack.processes["listen"].poll() is None, f"listener died on {name}"

    table = _table(outcomes)
    print("\n" + table)
    record_property("corpus_outcomes", table)

    # the listener still serves a good order at the end, and it takes effect
    final = parse_ack(exchange(stack.mllp_port, (EXAMPLES / "orm_o01_new_order.hl7").read_bytes()))
    assert (final.code, final.control_id) == ("AA", "ORM0001")
    wait_for_exam(stack, "ACC1001")

    # what was accepted took effect: every accepted row applied, every ordered exam visible once
    accepted = log_rows(stack, "status = 'accepted'")
    assert 5 <= len(accepted) <= sum(o.code == "AA" for o in outcomes) + 1  # + the final order
    stack.wait_until(
        lambda: all(r["applied_status"] for r in log_rows(stack, "status = 'accepted'")), timeout=30
    )
    applied = log_rows(stack, "status = 'accepted'")
    # the only repeat the corpus holds is an A40 sent twice: the second merges nothing
    assert {(r["applied_status"], r["applied_reason"]) for r in applied} <= {
        ("applied", None),
        ("duplicate", "already merged"),
    }, [(r["control_id"], r["applied_status"], r["applied_reason"]) for r in applied]
    ordered = [r["accession"] for r in applied if r["accession"] and "place_order" in (r["commands"] or "")]
    assert len(ordered) >= 2, "the corpus should yield a few orders"
    for accession in ordered:
        wait_for_exam(stack, accession)
        assert history_types(stack, accession) == ["ExamOrdered"], accession
