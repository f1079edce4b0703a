"""Sending HL7 files over MLLP with python-hl7's asyncio streams (they frame correctly).

Files go as they are on disk (separators normalised to CR), so a broken file reaches the
listener and comes back with its NAK instead of failing here. With --tls the connection is
MLLP over TLS (the server checked against --ca or the system store; --cert/--key for sites
that demand a client certificate).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

from hl7.mllp import open_hl7_connection

from adapters.tls import TlsConfigError, client_context
from interfaces.hl7.decoding import decode
from interfaces.hl7.message import read_header


def _normalise(raw: bytes) -> bytes:
    body = raw.removeprefix(b"\xef\xbb\xbf")
    lines = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return b"\r".join(line for line in lines if line.strip()) + b"\r"


def send_tls_context(
    tls: bool,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    verify: bool = True,
) -> ssl.SSLContext | None:
    """The client context for `radflow hl7 send`; TLS options without --tls are a mistake
    worth saying, not something to ignore."""
    if not tls:
        given = [name for name, value in (("--ca", ca), ("--cert", cert), ("--key", key)) if value]
        if given or not verify:
            raise TlsConfigError(f"{', '.join(given) or '--insecure'} given without --tls")
        return None
    return client_context(ca=ca, cert=cert, key=key, verify=verify)


async def send_files(
    paths: list[Path],
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[tuple[str, str, str]]:
    """Send each file on one connection; yields (file, MSA-1, MSA-3) as each ACK arrives."""
    reader, writer = await open_hl7_connection(
        host,
        port,
        encoding="utf-8",
        ssl=ssl_context,
        server_hostname=host if ssl_context is not None else None,
    )
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
