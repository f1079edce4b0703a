"""The MLLP listener: frames in, ACKs out, every message durable in the log before its ACK.

One task per connection; several messages per connection; a stalled peer times out; an
oversized or unreadable frame is answered and logged, and the connection and the listener
carry on.

With a certificate and key in the settings the listener speaks only TLS (optionally requiring
a client certificate signed by the configured CA). The handshake runs inside the connection's
task rather than in asyncio's server, so a failed one (plaintext peer, unknown client cert,
stalled handshake) is logged with the peer and the reason, and only that connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable

from adapters.message_log import Inbound, MessageLogWriter, utcnow
from adapters.settings import Settings
from adapters.tls import TlsConfigError, server_context
from interfaces.hl7 import acks
from interfaces.hl7.channels import ChannelConfig
from interfaces.hl7.framing import FrameTooLarge, frame, read_frame
from interfaces.hl7.intake import interpret

log = logging.getLogger("radflow.mllp")


class MllpListener:
    def __init__(
        self,
        settings: Settings,
        writer: MessageLogWriter,
        on_accepted: Callable[[], None] = lambda: None,
        channels: ChannelConfig | None = None,
    ) -> None:
        self._settings = settings
        self.channels = channels  # the site's channels, loaded once at start; None: built-in
        self._writer = writer
        self._on_accepted = on_accepted
        self._server: asyncio.Server | None = None
        self._tls = tls_context(settings)
        self.connections = 0
        self.tls_failures = 0

    async def start(self, port: int | None = None) -> int:
        self._server = await asyncio.start_server(
            self._serve,
            host=self._settings.bind_host,
            port=self._settings.mllp_port if port is None else port,
            limit=64 * 1024,
        )
        bound = self._server.sockets[0].getsockname()[1]
        log.info(
            "mllp listening",
            extra={"host": self._settings.bind_host, "port": bound, "tls": self._tls is not None},
        )
        return int(bound)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = writer.get_extra_info("peername") or ("?", 0)
        peer = f"{address[0]}:{address[1]}"
        self.connections += 1
        try:
            if self._tls is not None and not await self._handshake(writer, peer, self._tls):
                return
            while True:
                raw = await self._next_frame(reader, writer, peer)
                if raw is None:
                    break
                inbound = interpret(raw, peer, utcnow(), self.channels)
                ack, row_id = await self._record(inbound)
                if ack:  # b'': enhanced mode, MSH-15 asked for no commit ACK this time
                    writer.write(frame(ack))
                    await writer.drain()
                    if row_id is not None:
                        self._writer.acked(row_id, utcnow())
        except (ConnectionError, asyncio.IncompleteReadError):
            log.info("mllp peer went away", extra={"peer": peer})
        except Exception:
            log.exception("mllp connection failed", extra={"peer": peer})
        finally:
            self.connections -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _handshake(self, writer: asyncio.StreamWriter, peer: str, context: ssl.SSLContext) -> bool:
        """Upgrade the accepted socket to TLS; False (logged) when the peer cannot do it."""
        try:
            await writer.start_tls(context, ssl_handshake_timeout=self._settings.mllp_read_timeout_s)
        except OSError as error:  # ssl.SSLError, resets, the handshake timeout (ConnectionAbortedError)
            self.tls_failures += 1
            reason = getattr(error, "reason", None) or str(error) or type(error).__name__
            if isinstance(error, ConnectionError) and not isinstance(error, ConnectionAbortedError):
                reason = f"peer closed the connection during the handshake ({type(error).__name__})"
            log.warning("mllp tls handshake failed", extra={"peer": peer, "reason": reason})
            return False
        subject = _subject(writer.get_extra_info("peercert"))
        log.info("mllp tls connection", extra={"peer": peer, "client_cert": subject})
        return True

    async def _next_frame(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> bytes | None:
        while True:
            try:
                return await read_frame(
                    reader,
                    self._settings.mllp_max_frame_bytes,
                    self._settings.mllp_read_timeout_s,
                )
            except TimeoutError:
                log.info("mllp read timeout, closing", extra={"peer": peer})
                return None
            except FrameTooLarge as error:
                reason = str(error)
                inbound = Inbound(
                    raw=b"",
                    peer=peer,
                    received_at=utcnow(),
                    build_ack=lambda code, text: acks.build_ack(
                        None, code, text, acks.INTERNAL_ERROR
                    ).encode(),
                    refusal=("AR", reason),
                )
                ack, row_id = await self._record(inbound)
                writer.write(frame(ack))
                await writer.drain()
                if row_id is not None:
                    self._writer.acked(row_id, utcnow())

    async def _record(self, inbound: Inbound) -> tuple[bytes, int | None]:
        """The ACK to send and the log row it answers (None when nothing could be stored)."""
        try:
            recorded = await self._writer.record(inbound)
        except Exception:
            log.exception("message log write failed", extra={"peer": inbound.peer})
            return inbound.build_ack("AR", "message could not be stored; please resend"), None
        log.info(
            "hl7 message",
            extra={
                "id": recorded.id,
                "peer": inbound.peer,
                "type": inbound.message_type,
                "control_id": inbound.control_id,
                "status": recorded.status,
                "ack": recorded.ack_code,
            },
        )
        if recorded.status == "accepted":
            self._on_accepted()
        return recorded.ack, recorded.id


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The listener's TLS context from RADFLOW_MLLP_TLS_*; None for plain MLLP. A half
    configuration (cert without key, CA demanded without cert) is an error, never plaintext."""
    cert, key = settings.mllp_tls_cert, settings.mllp_tls_key
    if cert is None and key is None:
        if settings.mllp_tls_require_client_cert or settings.mllp_tls_ca is not None:
            raise TlsConfigError(
                "RADFLOW_MLLP_TLS_CA / RADFLOW_MLLP_TLS_REQUIRE_CLIENT_CERT need "
                "RADFLOW_MLLP_TLS_CERT and RADFLOW_MLLP_TLS_KEY"
            )
        return None
    if cert is None or key is None:
        missing = "RADFLOW_MLLP_TLS_KEY" if key is None else "RADFLOW_MLLP_TLS_CERT"
        raise TlsConfigError(f"MLLP TLS is half configured: {missing} is not set")
    return server_context(
        cert, key, ca=settings.mllp_tls_ca, require_client_cert=settings.mllp_tls_require_client_cert
    )


def _subject(cert: object) -> str:
    """The client certificate's commonName, when the peer presented one."""
    if not isinstance(cert, dict):
        return ""
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return ""
