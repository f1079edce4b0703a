"""TLS contexts: unusable files fail at start naming the file; the contexts really handshake
(server verified by the client, client certificates demanded when asked) over loopback."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from adapters.settings import Settings
from adapters.tls import TlsConfigError, client_context, server_context
from interfaces.hl7.listener import tls_context
from tests.tls_certs import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_a_missing_certificate_is_named_in_the_error(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(TlsConfigError, match=rf"certificate {missing}: cannot read"):
        server_context(missing, pki.server_key)


def test_a_missing_key_is_named_in_the_error(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "gone.key"
    with pytest.raises(TlsConfigError, match=rf"key {missing}: cannot read"):
        server_context(pki.server_cert, missing)


def test_a_key_that_does_not_match_its_certificate_names_both_files(pki: Pki) -> None:
    with pytest.raises(TlsConfigError) as raised:
        server_context(pki.server_cert, pki.client_key)
    assert str(pki.server_cert) in str(raised.value)
    assert str(pki.client_key) in str(raised.value)


def test_a_ca_file_that_is_not_pem_is_named(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("this is not a certificate\n")
    with pytest.raises(TlsConfigError, match=rf"CA file {garbage}"):
        client_context(ca=garbage)


def test_client_certificates_cannot_be_required_without_a_ca(pki: Pki) -> None:
    with pytest.raises(TlsConfigError, match="needs a CA"):
        server_context(pki.server_cert, pki.server_key, require_client_cert=True)


def test_a_client_key_without_its_certificate_is_refused(pki: Pki) -> None:
    with pytest.raises(TlsConfigError, match="without a client certificate"):
        client_context(ca=pki.ca, key=pki.client_key)


def test_listener_settings_half_configured_are_an_error_never_plaintext(pki: Pki) -> None:
    assert tls_context(Settings(_env_file=None)) is None  # type: ignore[call-arg]
    with pytest.raises(TlsConfigError, match="RADFLOW_MLLP_TLS_KEY is not set"):
        tls_context(Settings(mllp_tls_cert=pki.server_cert))
    with pytest.raises(TlsConfigError, match="need RADFLOW_MLLP_TLS_CERT"):
        tls_context(Settings(mllp_tls_require_client_cert=True, mllp_tls_ca=pki.ca))
    context = tls_context(
        Settings(
            mllp_tls_cert=pki.server_cert,
            mllp_tls_key=pki.server_key,
            mllp_tls_ca=pki.ca,
            mllp_tls_require_client_cert=True,
        )
    )
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED


async def _echo_once(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[bytes, str]:
    """One TLS connection over loopback: the client sends a line, the server echoes it and
    reports the client certificate's commonName ("" when none)."""
    seen: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            cert = writer.get_extra_info("peercert") or {}
            seen.extend(v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName")
            writer.write(await reader.readline())
            await writer.drain()
        except (ssl.SSLError, ConnectionError):
            pass
        finally:
            writer.close()

    listening = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server)
    port = listening.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="localhost"
        )
        writer.write(b"MSH|ping\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        return answer, "".join(seen)
    finally:
        listening.close()


async def test_a_client_trusting_the_ca_talks_to_the_server(pki: Pki) -> None:
    answer, subject = await _echo_once(
        server_context(pki.server_cert, pki.server_key), client_context(ca=pki.ca)
    )
    assert answer == b"MSH|ping\n"
    assert subject == ""


async def test_a_client_that_does_not_trust_the_server_ca_refuses_it(pki: Pki) -> None:
    wrong_trust = client_context(ca=pki.rogue_ca)
    with pytest.raises(ssl.SSLCertVerificationError):
        await _echo_once(server_context(pki.server_cert, pki.server_key), wrong_trust)


async def test_verify_false_skips_the_server_check_for_lab_use(pki: Pki) -> None:
    answer, _ = await _echo_once(
        server_context(pki.server_cert, pki.server_key), client_context(verify=False)
    )
    assert answer == b"MSH|ping\n"


async def test_mutual_tls_accepts_a_client_cert_from_the_ca_and_sees_its_name(pki: Pki) -> None:
    server = server_context(pki.server_cert, pki.server_key, ca=pki.ca, require_client_cert=True)
    client = client_context(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    answer, subject = await _echo_once(server, client)
    assert answer == b"MSH|ping\n"
    assert subject == "his-client"


@pytest.mark.parametrize("presented", ["none", "rogue"])
async def test_mutual_tls_refuses_a_client_without_a_trusted_cert(pki: Pki, presented: str) -> None:
    server = server_context(pki.server_cert, pki.server_key, ca=pki.ca, require_client_cert=True)
    if presented == "rogue":
        client = client_context(ca=pki.ca, cert=pki.rogue_cert, key=pki.rogue_key)
    else:
        client = client_context(ca=pki.ca)
    # TLS 1.3: the client's handshake completes before the server checks its certificate, so
    # the refusal shows as an alert on the first read or as a stream closed with nothing in it
    try:
        answer, _ = await _echo_once(server, client)
    except (ssl.SSLError, ConnectionError):
        answer = b""
    assert answer == b"", "the server answered a client it could not verify"


async def test_the_listener_drops_a_stalled_handshake_and_keeps_serving_tls(pki: Pki, tmp_path: Path) -> None:
    """A peer that connects and says nothing is cut off after the read timeout (logged as a
    failed handshake); meanwhile and afterwards TLS peers get their ACKs."""
    from adapters.message_log import MessageLog, MessageLogWriter
    from adapters.sql import Database
    from interfaces.hl7.listener import MllpListener
    from tests.e2e.mllp import order, parse_ack

    settings = Settings(
        data_dir=tmp_path,
        mllp_tls_cert=pki.server_cert,
        mllp_tls_key=pki.server_key,
        mllp_read_timeout_s=0.5,
    )
    message_log = MessageLog(Database.for_file(settings, settings.messages_sqlite_path))
    message_log.create_schema()
    writer = MessageLogWriter(message_log)
    listener = MllpListener(settings, writer)
    port = await listener.start(port=0)
    try:
        quiet, silent = await asyncio.open_connection("127.0.0.1", port)  # plain TCP, never a ClientHello
        started = asyncio.get_running_loop().time()
        reader, tls = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context(ca=pki.ca), server_hostname="localhost"
        )
        tls.write(b"\x0b" + order("STALL1", "STALL1").encode() + b"\x1c\r")
        ack = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 5)
        assert parse_ack(ack[1:-2]).code == "AA"
        tls.close()
        await tls.wait_closed()
        while listener.tls_failures == 0 and asyncio.get_running_loop().time() - started < 5:
            await asyncio.sleep(0.05)
        assert listener.tls_failures == 1, "the silent peer was not cut off"
        assert await asyncio.wait_for(quiet.read(), 2) == b"", "the silent peer's socket is still open"
        silent.close()
    finally:
        await listener.stop()
        writer.close()
