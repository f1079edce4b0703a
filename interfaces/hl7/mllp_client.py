"""Send one HL7 message over MLLP (optionally TLS) and read its ACK, with python-hl7's asyncio
streams (they frame correctly; its `MLLPClient` can return a partial ACK, upstream #44).

The ACK counts only if MSA-2 echoes our MSH-10: an answer to another message (a peer that
mixes up connections) is no acknowledgement of this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass

from hl7.mllp import open_hl7_connection

from interfaces.hl7.decoding import decode
from interfaces.hl7.message import read_header

ACCEPTED = ("AA", "CA")
ERROR = ("AE", "CE")
REJECTED = ("AR", "CR")


class DeliveryError(Exception):
    """No usable answer: connection refused or dropped, timeout, or an unreadable ACK."""


@dataclass(frozen=True)
class Ack:
    code: str  # MSA-1
    control_id: str  # MSA-2
    text: str  # the whole ACK, segments joined by CR
    reason: str  # MSA-3, or ERR's diagnostic text when MSA-3 is empty

    @property
    def accepted(self) -> bool:
        return self.code in ACCEPTED


def parse_ack(text: str) -> Ack:
    header = read_header(text)
    sep = header.field_separator if header else "|"
    segments = [s for s in text.replace("\n", "\r").split("\r") if s]
    msa = next((s.split(sep) for s in segments if s.startswith("MSA")), None)
    if msa is None or len(msa) < 3:
        raise DeliveryError(f"the answer has no MSA segment with MSA-1 and MSA-2: {text[:200]!r}")
    reason = msa[3] if len(msa) > 3 else ""
    if not reason:  # ERR-8 user message, ERR-7 diagnostics, ERR-3's text, ERR-1 (v2.3)
        err = next((s.split(sep) for s in segments if s.startswith("ERR")), [])

        def field(n: int) -> str:
            return err[n] if len(err) > n else ""

        comp = header.component_separator if header else "^"
        coded = field(3).split(comp)
        reason = field(8) or field(7) or (coded[1] if len(coded) > 1 else field(3)) or field(1)
    return Ack(code=msa[1].strip(), control_id=msa[2].strip(), text=text, reason=reason)


async def send_message(
    host: str,
    port: int,
    message: str,
    *,
    timeout_s: float,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> Ack:
    """Open a connection, send, wait up to `timeout_s` for the ACK, close. The ACK must echo the
    message's MSH-10."""
    header = read_header(message)
    expected = header.control_id if header else ""
    try:
        reader, writer = await asyncio.wait_for(
            open_hl7_connection(
                host,
                port,
                encoding="utf-8",
                ssl=ssl_context,
                server_hostname=(server_hostname or host) if ssl_context else None,
            ),
            timeout=timeout_s,
        )
    except TimeoutError:
        raise DeliveryError(f"connect to {host}:{port} timed out after {timeout_s:g} s") from None
    except OSError as error:
        raise DeliveryError(f"connect to {host}:{port} failed: {error.strerror or error}") from None
    try:
        writer.writeblock(message.encode("utf-8"))
        await writer.drain()
        raw = await asyncio.wait_for(reader.readblock(), timeout=timeout_s)
    except TimeoutError:
        raise DeliveryError(f"no ACK from {host}:{port} within {timeout_s:g} s") from None
    except (OSError, EOFError) as error:
        raise DeliveryError(f"connection to {host}:{port} lost before the ACK: {error}") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    text, _ = decode(raw)
    ack = parse_ack(text)
    if expected and ack.control_id != expected:
        raise DeliveryError(f"the ACK answers {ack.control_id!r}, not our message {expected!r}")
    return ack
