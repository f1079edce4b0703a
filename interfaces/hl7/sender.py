"""Sending HL7 files over MLLP with python-hl7's asyncio streams (they frame correctly).

Files go as they are on disk (separators normalised to CR), so a broken file reaches the
listener and comes back with its NAK instead of failing here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from hl7.mllp import open_hl7_connection

from interfaces.hl7.decoding import decode
from interfaces.hl7.message import read_header


def _normalise(raw: bytes) -> bytes:
    body = raw.removeprefix(b"\xef\xbb\xbf")
    lines = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return b"\r".join(line for line in lines if line.strip()) + b"\r"


async def send_files(paths: list[Path], host: str, port: int) -> AsyncIterator[tuple[str, str, str]]:
    """Send each file on one connection; yields (file, MSA-1, MSA-3) as each ACK arrives."""
    reader, writer = await open_hl7_connection(host, port, encoding="utf-8")
    try:
        for path in paths:
            try:
                raw = path.read_bytes()
            except OSError as error:
                yield str(path), "ERROR", f"cannot read file: {error.strerror}"
                continue
            writer.writeblock(_normalise(raw))
            await writer.drain()
            ack_text, _ = decode(await reader.readblock())
            header = read_header(ack_text)
            msa = next((s for s in ack_text.split("\r") if s.startswith("MSA")), "")
            sep = header.field_separator if header else "|"
            fields = msa.split(sep)
            code = fields[1] if len(fields) > 1 else "??"
            yield str(path), code, fields[3] if len(fields) > 3 else ""
    finally:
        writer.close()
        await writer.wait_closed()
