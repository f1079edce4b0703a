"""Sending HL7 files over MLLP with python-hl7's asyncio client (it frames correctly)."""

from __future__ import annotations

from pathlib import Path

import hl7
from hl7.mllp import open_hl7_connection


async def send_files(paths: list[Path], host: str, port: int) -> list[tuple[str, str, str]]:
    """Send each file on one connection; returns (file, MSA-1, MSA-3) per file."""
    reader, writer = await open_hl7_connection(host, port, encoding="utf-8")
    results = []
    try:
        for path in paths:
            text = path.read_text(encoding="utf-8", errors="replace").lstrip("\ufeff")
            text = "\r".join(line for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n") if line)
            writer.writemessage(hl7.parse(text))
            await writer.drain()
            ack = await reader.readmessage()
            msa = ack.segment("MSA")
            results.append((str(path), str(msa[1]), str(msa[3]) if len(msa) > 3 else ""))
    finally:
        writer.close()
        await writer.wait_closed()
    return results
