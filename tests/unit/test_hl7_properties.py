"""Properties of the HL7 intake over generated input: it never raises and always answers, and
what a well-formed order says is what the command carries."""

from __future__ import annotations

from datetime import datetime

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from interfaces.hl7.decoding import decode
from interfaces.hl7.intake import interpret
from interfaces.hl7.mapping import hl7_timestamp
from interfaces.hl7.message import read_header
from tests.unit.hl7_builders import message, msh, segment

RECEIVED_AT = "2024-03-15T09:00:00+00:00"
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# what a well-formed message looks like, for mutation into badly formed ones
VALID_ORDER = message(
    msh(control_id="C1"), segment("PID", {3: "P1^^^HOSP", 5: "DOE^JANE"}), "ORC|NW|PL1", segment("OBR", {1: "1", 18: "ACC1"})
).encode()


@st.composite
def mangled_orders(draw: st.DrawFn) -> bytes:
    """A valid order with bytes cut, replaced or inserted somewhere."""
    raw = bytearray(VALID_ORDER)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(raw)))
        match draw(st.sampled_from(["cut", "replace", "insert"])):
            case "cut":
                del raw[at : at + draw(st.integers(1, 40))]
            case "replace":
                raw[at : at + 1] = draw(st.binary(min_size=1, max_size=3))
            case "insert":
                raw[at:at] = draw(st.sampled_from([b"|", b"^", b"~", b"\\", b"&", b"\r", b"\n", b"MSH|", b'""', b"\xff", b"\xc3"]))
    return bytes(raw)


hl7ish_bytes = st.builds(
    lambda separator, fields, tail: b"MSH" + separator + separator.join(fields) + tail,
    st.binary(min_size=1, max_size=2),
    st.lists(st.binary(max_size=12), max_size=20),
    st.sampled_from([b"", b"\rPID|1||P1", b"\nORC|NW\nOBR|1", b"\r\n\x00"]),
)
arbitrary_frames = st.one_of(st.binary(max_size=400), hl7ish_bytes, mangled_orders())


def msa_code(ack: bytes, raw: bytes) -> tuple[str, str]:
    """MSA-1 and MSA-2 of the ACK to `raw`, read in the charset radflow read `raw` in."""
    _, codec = decode(raw)
    text = ack.decode("utf-8" if codec == "ascii" else codec)
    header = read_header(text)
    assert header is not None, f"the ACK has no readable MSH: {ack!r}"
    [msa] = [s for s in text.split("\r") if s.startswith("MSA" + header.field_separator)]
    fields = msa.split(header.field_separator) + [""] * 3
    return fields[1], fields[2]


@PROPERTY
@given(raw=arbitrary_frames)
@example(raw=b"")
@example(raw=b"MSH")
@example(raw=b"MSH|")
@example(raw=b"MSH||||||||||")
@example(raw=b"MSH|^~\\&|||||||ORM^O01|1|P|2.5||||||UNICODE UTF-8\r\xff\xfe")
def test_interpreting_any_bytes_never_raises_and_always_yields_an_ack(raw: bytes) -> None:
    inbound = interpret(raw, "peer", RECEIVED_AT)
    code, reason = inbound.refusal or ("AA", "")
    assert code in ("AA", "AE", "AR")
    assert not reason.startswith("internal error"), reason  # the mapping crashed instead of refusing
    assert (code == "AA") == bool(inbound.commands)
    msa_1, msa_2 = msa_code(inbound.build_ack(code, reason), raw)
    assert msa_1 == code
    assert msa_2 == inbound.control_id


# generated well-formed orders

ESCAPES = {"\\F\\": "|", "\\S\\": "^", "\\T\\": "&", "\\R\\": "~", "\\E\\": "\\"}
plain = st.text(
    alphabet=st.characters(codec="latin-1", categories=("L", "N"), exclude_characters="ªºµ"),
    min_size=1,
    max_size=8,
)


@st.composite
def hl7_text(draw: st.DrawFn, escapes: bool = True) -> tuple[str, str]:
    """(as sent on the wire, as meant): plain runs mixed with HL7 escape sequences."""
    tokens = [(t, t) for t in draw(st.lists(plain, min_size=1, max_size=3))]
    if escapes:
        tokens += [(wire, meant) for wire, meant in draw(st.lists(st.sampled_from(sorted(ESCAPES.items())), max_size=3))]
        tokens = draw(st.permutations(tokens))
    return "".join(w for w, _ in tokens), "".join(m for _, m in tokens)


PRIORITY_PLACES = ("ORC-7.6", "OBR-5", "TQ1-9")


@st.composite
def orders(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    charset, codec = draw(st.sampled_from([("UNICODE UTF-8", "utf-8"), ("8859/1", "latin-1"), ("", "utf-8")]))
    accession = draw(hl7_text())
    patient_id, issuer = draw(hl7_text()), draw(hl7_text(escapes=False))
    names = [draw(hl7_text()), draw(hl7_text()), draw(st.one_of(st.just(("", "")), hl7_text()))]
    placer = draw(hl7_text())
    control_id = draw(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.", min_size=1, max_size=20))
    sent = draw(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2099, 12, 31)).map(lambda d: d.replace(microsecond=0)))
    priority = draw(st.sampled_from(["", "S", "A", "R", "s", "a", "r"]))
    place = draw(st.sampled_from(PRIORITY_PLACES))
    separator = draw(st.sampled_from(["\r", "\n", "\r\n"]))
    message_type = draw(st.sampled_from(["ORM^O01", "ORM^O01^ORM_O01", "OMI^O23^OMI_O23"]))

    orc = {1: "NW", 2: placer[0]}
    obr = {1: "1", 4: "CTHEAD^CT head", 18: accession[0]}
    tq1 = {1: "1"}
    if priority:
        {"ORC-7.6": orc, "OBR-5": obr, "TQ1-9": tq1}[place][{"ORC-7.6": 7, "OBR-5": 5, "TQ1-9": 9}[place]] = (
            f"^^^^^{priority}" if place == "ORC-7.6" else priority
        )
    text = message(
        msh(message_type=message_type, control_id=control_id, sent_at=f"{sent:%Y%m%d%H%M%S}", charset=charset),
        segment("PID", {1: "1", 3: f"{patient_id[0]}^^^{issuer[0]}", 5: "^".join(w for w, _ in names)}),
        segment("PV1", {1: "1", 2: "O"}),
        segment("ORC", orc),
        segment("TQ1", tq1),
        segment("OBR", obr),
        separator=separator,
    )
    expected = {
        "accession": accession[1],
        "patient_id": patient_id[1],
        "issuer": issuer[1],
        "name": "^".join(m for _, m in names).rstrip("^"),
        "placer": placer[1],
        "control_id": control_id,
        "occurred_at": sent.isoformat(),
        "priority": {"S": "STAT", "A": "ASAP", "R": "ROUTINE", "": "ROUTINE"}[priority.upper()],
    }
    raw = text.encode(codec)
    # Latin-1 text whose bytes also form valid multi-byte UTF-8 ("Â²" is C2 B2, which is "²")
    # is read as UTF-8 on purpose: that mislabelling is far more common in real feeds
    # (interfaces/hl7/decoding.py); such inputs are outside this property
    assume(codec != "latin-1" or raw.isascii() or not _valid_utf8(raw))
    return raw, expected


def _valid_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@PROPERTY
@given(generated=orders())
def test_a_generated_order_maps_to_a_command_carrying_exactly_its_fields(generated: tuple[bytes, dict[str, str]]) -> None:
    raw, expected = generated
    inbound = interpret(raw, "peer", RECEIVED_AT)
    assert inbound.refusal is None
    [entry] = inbound.commands
    command = entry["command"]
    assert entry["workflow_id"] == f"exam-{expected['accession']}"
    assert command["kind"] == "place_order"
    assert command["accession"] == inbound.accession == expected["accession"]
    assert command["patient"]["id"] == inbound.patient_id == expected["patient_id"]
    assert command["patient"]["issuer"] == expected["issuer"]
    assert command["patient"]["name"] == expected["name"]
    assert command["placer_order_number"] == expected["placer"]
    assert command["priority"] == expected["priority"]
    assert command["provenance"]["source"]["control_id"] == inbound.control_id == expected["control_id"]
    assert command["provenance"]["occurred_at"] == expected["occurred_at"]
    assert msa_code(inbound.build_ack("AA", ""), raw) == ("AA", expected["control_id"])


# timestamps

timestamp_like = st.from_regex(r"\A\s?\d{0,15}(\.\d{0,5})?([+-]\d{0,5})?\s?\Z")


@PROPERTY
@given(value=st.one_of(st.text(max_size=30), timestamp_like))
@example(value="0001-000\u0660")
@example(value="20240315+9999")
def test_hl7_timestamp_never_raises_and_gives_iso8601_or_nothing(value: str) -> None:
    iso = hl7_timestamp(value)
    assert iso == "" or datetime.fromisoformat(iso)


@PROPERTY
@given(
    moment=st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31)).map(lambda d: d.replace(microsecond=0)),
    zone=st.sampled_from(["", "+0000", "+0100", "-0500", "+0530"]),
    fraction=st.sampled_from(["", ".1", ".1234"]),
)
def test_a_full_hl7_timestamp_reads_back_as_the_same_moment(moment: datetime, zone: str, fraction: str) -> None:
    iso = hl7_timestamp(f"{moment:%Y%m%d%H%M%S}{fraction}{zone}")
    expected = moment.isoformat() + (f"{zone[:3]}:{zone[3:]}" if zone else "")
    assert iso == expected
