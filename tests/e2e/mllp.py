"""A plain-socket MLLP peer, HL7 message builders and message-log readers for the e2e tests.

Deliberately independent of radflow's own code: frames are built and ACKs read by hand, so a
bug in the listener's framing or ACK building cannot hide behind the same bug in the test.
"""

from __future__ import annotations

import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import Stack

VT, FS_CR = b"\x0b", b"\x1c\x0d"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def frame(payload: bytes) -> bytes:
    return VT + payload + FS_CR


def exchange(port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    """One framed message on a fresh connection; the ACK's bytes (framing stripped)."""
    with MllpConnection(port, timeout) as conn:
        return conn.request(payload)


class MllpConnection:
    """One TCP connection that can carry many frames, or raw bytes sent any way we like."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""

    def __enter__(self) -> MllpConnection:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, payload: bytes) -> None:
        self.sock.sendall(frame(payload))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_ack(self) -> bytes:
        """The next framed reply; raises EOFError if the peer closes first."""
        while FS_CR not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; unread bytes {self._buffer!r}")
            self._buffer += chunk
        block, self._buffer = self._buffer.split(FS_CR, 1)
        assert block.startswith(VT), f"reply does not start with <VT>: {block[:40]!r}"
        return block[1:]

    def request(self, payload: bytes) -> bytes:
        self.send(payload)
        return self.read_ack()

    @property
    def unread(self) -> bytes:
        """Bytes received but not yet returned as a reply."""
        return self._buffer

    def closed_by_peer(self, within: float) -> bool:
        """True when the peer closes the connection (EOF) within `within` seconds."""
        self.sock.settimeout(within)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self._buffer += chunk
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True


@dataclass(frozen=True)
class Ack:
    raw: bytes
    segments: list[list[str]]

    @property
    def msh(self) -> list[str]:
        return self.segment("MSH") or []

    @property
    def code(self) -> str:
        return self._field("MSA", 1)

    @property
    def control_id(self) -> str:
        return self._field("MSA", 2)

    @property
    def text(self) -> str:
        return self._field("MSA", 3)

    @property
    def err(self) -> list[str] | None:
        return self.segment("ERR")

    def segment(self, name: str) -> list[str] | None:
        return next((s for s in self.segments if s and s[0] == name), None)

    def _field(self, name: str, n: int) -> str:
        seg = self.segment(name) or []
        return seg[n] if n < len(seg) else ""


def parse_ack(raw: bytes, encoding: str = "utf-8") -> Ack:
    """Split an ACK by hand: segments on CR, fields on the MSH's own field separator."""
    text = raw.decode(encoding, errors="replace")
    lines = [line for line in text.split("\r") if line]
    assert lines and lines[0].startswith("MSH"), f"ACK does not start with MSH: {raw[:60]!r}"
    sep = lines[0][3]
    segments = []
    for line in lines:
        fields = line.split(sep)
        if fields[0] == "MSH":  # MSH-1 is the separator itself: keep HL7 numbering
            fields = ["MSH", sep, *fields[1:]]
        segments.append(fields)
    return Ack(raw, segments)


# --- building messages ----------------------------------------------------------------------


def order(
    accession: str,
    control_id: str,
    *,
    control: str = "NW",
    patient_id: str = "MRN1",
    name: str = "DOE^JANE",
    sender: tuple[str, str] = ("HIS", "GENHOSP"),
    charset: str = "",
    separator: str = "\r",
    priority: str = "S",
    code: str = "CTHEAD^CT head without contrast^L",
    modality: str = "CT",
    message_type: str = "ORM^O01^ORM_O01",
) -> str:
    """An ORM^O01 (new order or cancel) in the shape of examples/orm_o01_new_order.hl7."""
    msh = [
        "MSH",
        "^~\\&",
        sender[0],
        sender[1],
        "RADFLOW",
        "RADIOLOGY",
        "20261128093000",
        "",
        message_type,
        control_id,
        "P",
        "2.3.1",
    ]
    if charset:
        msh += ["", "", "", "", "", charset]
    segments = [
        "|".join(msh),
        f"PID|1||{patient_id}^^^GENHOSP^MR||{name}||19710304|F",
        "PV1|1|E|ED^01^A",
        f"ORC|{control}|PL-{accession}^HIS|FL-{accession}^RADFLOW||SC||^^^20261128100000^^{priority}"
        + ("|||||||||^Ordered in error" if control == "CA" else ""),
        f"OBR|1|PL-{accession}^HIS|FL-{accession}^RADFLOW|{code}|||20261128093000|||||||||"
        f"1234^HOUSE^GREGORY||{accession}|RP-{accession}|||||{modality}|||^^^20261128100000^^{priority}"
        "||||^Head trauma|||||20261128100000",
    ]
    return separator.join(segments) + separator


def cancel(accession: str, control_id: str, **kwargs: Any) -> str:
    return order(accession, control_id, control="CA", **kwargs)


# --- reading radflow's state ----------------------------------------------------------------


def log_rows(stack: Stack, where: str = "1=1", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Rows of the HL7 message log, read straight from the SQLite file (oldest first)."""
    path = stack.data_dir / "messages.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(f"SELECT * FROM hl7_messages WHERE {where} ORDER BY id", params).fetchall()
    return [dict(r) for r in rows]


def exam(stack: Stack, accession: str) -> dict[str, Any] | None:
    response = stack.get(f"/api/exams/{accession}")
    return response.json() if response.status_code == 200 else None


def history_types(stack: Stack, accession: str) -> list[str]:
    response = stack.get(f"/api/exams/{accession}/history")
    if response.status_code == 404:
        return []
    response.raise_for_status()
    return [e["type"] for e in response.json()["events"]]


def wait_for_exam(
    stack: Stack, accession: str, state: str = "ordered", timeout: float = 20.0
) -> dict[str, Any]:
    found: dict[str, Any] = stack.wait_until(
        lambda: (e := exam(stack, accession)) is not None and e["state"] == state and e, timeout=timeout
    )
    return found


def assert_still_serves(stack: Stack, tag: str) -> None:
    """A fresh connection still gets an AA for a good order, and the exam appears."""
    accession = f"ALIVE-{tag}-{time.monotonic_ns()}"
    ack = parse_ack(exchange(stack.mllp_port, order(accession, f"ALIVE{time.monotonic_ns()}").encode()))
    assert ack.code == "AA", ack.raw
    if "worker" in stack.processes:
        wait_for_exam(stack, accession)
    assert all(p.poll() is None for p in stack.processes.values()), "a radflow process died"
