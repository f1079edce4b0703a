"""MLLP framing (HL7 v2 Transport, Release 2): <VT> message <FS><CR>."""

from __future__ import annotations

import asyncio

START, END = b"\x0b", b"\x1c\x0d"


class FrameTooLarge(Exception):
    pass


def frame(message: bytes) -> bytes:
    return START + message + END


async def read_frame(reader: asyncio.StreamReader, max_bytes: int, timeout: float) -> bytes | None:
    """The next message, or None at a clean end of stream. Bytes before <VT> are skipped.

    Raises TimeoutError when the peer stalls, FrameTooLarge past `max_bytes` (the rest of that
    frame is discarded so the connection stays usable), IncompleteReadError on EOF mid-frame.
    """
    # find the start block, tolerating noise (stray CR/LF between frames)
    while True:
        byte = await asyncio.wait_for(reader.read(1), timeout)
        if not byte:
            return None
        if byte == START:
            break
    buffer = bytearray()
    while True:
        try:
            chunk = await _read_until_end(reader, timeout)
        except asyncio.LimitOverrunError as overrun:
            chunk = await asyncio.wait_for(reader.readexactly(overrun.consumed), timeout)
            buffer += chunk
            if len(buffer) > max_bytes:
                await _discard_until_end(reader, timeout)
                raise FrameTooLarge(f"frame larger than {max_bytes} bytes") from None
            continue
        buffer += chunk
        if len(buffer) - len(END) > max_bytes:
            raise FrameTooLarge(f"frame larger than {max_bytes} bytes")
        return bytes(buffer[: -len(END)])


async def _read_until_end(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """`readuntil(END)` where `timeout` bounds a silence, not the whole frame: a slow peer that
    keeps sending is not cut off mid-frame. A timed-out `readuntil` consumes nothing, so it is
    safe to wait again while the buffer grows."""
    while True:
        buffered = _buffered(reader)
        try:
            return await asyncio.wait_for(reader.readuntil(END), timeout)
        except TimeoutError:
            if _buffered(reader) == buffered:
                raise


def _buffered(reader: asyncio.StreamReader) -> int:
    return len(getattr(reader, "_buffer", b""))  # CPython's StreamReader keeps unread bytes here


async def _discard_until_end(reader: asyncio.StreamReader, timeout: float) -> None:
    while True:
        try:
            await _read_until_end(reader, timeout)
            return
        except asyncio.LimitOverrunError as overrun:
            await asyncio.wait_for(reader.readexactly(overrun.consumed), timeout)
