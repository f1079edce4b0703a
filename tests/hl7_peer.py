"""A peer MLLP server nobody here wrote: python-hl7's asyncio `start_hl7_server`, in a thread of
its own (over TLS when given a server context), answering each message with the code a test chooses (AA, AE, AR) or not at all."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable

import hl7
from hl7.mllp import start_hl7_server

Answer = Callable[[hl7.Message], str | None]  # the MSA-1 to send; None: say nothing


def always(code: str | None) -> Answer:
    return lambda _message: code


class PeerServer:
    """Records every message received (by MSH-10, in arrival order) and answers per `answer`."""

    def __init__(self, answer: Answer | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.answer = answer or always("AA")
        self.ssl_context = ssl_context
        self.received: list[hl7.Message] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hl7-peer", daemon=True)
        self._server: asyncio.Server | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> PeerServer:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def __exit__(self, *_: object) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> asyncio.Server:
        return await start_hl7_server(self._client, "127.0.0.1", 0, encoding="utf-8", ssl=self.ssl_context)

    async def _client(self, reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        try:
            while not reader.at_eof():
                message = await reader.readmessage()
                with self._lock:
                    self.received.append(message)
                code = self.answer(message)
                if code is None:
                    continue
                writer.writemessage(message.create_ack(code))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def control_ids(self) -> list[str]:
        with self._lock:
            return [str(m["MSH.F10"]) for m in self.received]

    def wait_for(self, count: int, timeout: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.control_ids()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"peer received {len(self.control_ids())} of {count} messages")
            time.sleep(0.02)
        return self.control_ids()


def destination_yaml(
    name: str,
    port: int,
    *,
    events: tuple[str, ...] = (),
    max_attempts: int | None = None,
    ack_timeout_s: float = 2,
) -> str:
    """A destinations.yaml sending to a local peer, with quick retries for tests."""
    lines = [
        "destinations:",
        f"  - name: {name}",
        "    facility: HOSP",
        "    host: 127.0.0.1",
        f"    port: {port}",
    ]
    if events:
        lines.append(f"    events: [{', '.join(events)}]")
    if max_attempts is not None:
        lines.append(f"    max_attempts: {max_attempts}")
    lines += ["    backoff: {initial_s: 0.2, max_s: 0.5}", f"    ack_timeout_s: {ack_timeout_s:g}"]
    return "\n".join(lines) + "\n"
