"""MLLP over TLS against the real processes: a TLS client (python-hl7's asyncio streams, which
nobody here wrote) gets its AA and the exam appears; a plaintext client gets no ACK and the
listener keeps serving; with client certificates required, peers without a trusted one are
refused. Outbound: radflow's MLLP client delivers to a peer serving TLS."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import hl7
import pytest
from hl7.mllp import open_hl7_connection, start_hl7_server

from adapters.tls import client_context, server_context
from interfaces.hl7 import mllp_client
from tests.conftest import ROOT, Stack, make_stack, running_stack
from tests.e2e.mllp import MllpConnection, log_rows, order, parse_ack, wait_for_exam
from tests.tls_certs import Pki, make_pki

REFUSED = (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, EOFError)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_env(pki: Pki, require_client_cert: bool = False) -> dict[str, str]:
    env = {"RADFLOW_MLLP_TLS_CERT": str(pki.server_cert), "RADFLOW_MLLP_TLS_KEY": str(pki.server_key)}
    if require_client_cert:
        env |= {"RADFLOW_MLLP_TLS_CA": str(pki.ca), "RADFLOW_MLLP_TLS_REQUIRE_CLIENT_CERT": "true"}
    return env


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory, temporal_address: str, pki: Pki) -> Iterator[Stack]:
    """The whole stack, its MLLP listener serving TLS (no client certificate asked)."""
    with running_stack(tmp_path_factory.mktemp("tls"), temporal_address, tls_env(pki)) as stack:
        yield stack


@pytest.fixture(scope="module")
def mutual_stack(
    tmp_path_factory: pytest.TempPathFactory, temporal_address: str, pki: Pki
) -> Iterator[Stack]:
    """Only the listener (ACKs need no worker), demanding client certificates from our CA."""
    stack = make_stack(
        tmp_path_factory.mktemp("mtls"), temporal_address, tls_env(pki, require_client_cert=True)
    )
    stack.start("listen")
    try:
        stack.wait_for_port(stack.mllp_port)
        yield stack
    finally:
        stack.stop_all()


async def _tls_exchange(port: int, payload: str, context: ssl.SSLContext) -> bytes:
    reader, writer = await open_hl7_connection(
        "127.0.0.1", port, encoding="utf-8", ssl=context, server_hostname="localhost"
    )
    try:
        writer.writeblock(payload.encode())
        await writer.drain()
        return bytes(await asyncio.wait_for(reader.readblock(), 10))
    finally:
        writer.close()
        with contextlib.suppress(*REFUSED):
            await writer.wait_closed()


def tls_exchange(port: int, payload: str, context: ssl.SSLContext) -> bytes:
    """One message over TLS with python-hl7's client streams; the ACK's bytes."""
    return asyncio.run(_tls_exchange(port, payload, context))


def refused(port: int, payload: str, context: ssl.SSLContext) -> str:
    """The reason the exchange failed; fails the test if an ACK came back."""
    try:
        ack = tls_exchange(port, payload, context)
    except REFUSED as error:
        return f"{type(error).__name__}: {error}"
    raise AssertionError(f"an ACK came back over a connection that should be refused: {ack!r}")


def unique(tag: str) -> str:
    return f"{tag}{time.monotonic_ns() % 10**12}"


def test_a_tls_client_gets_its_ack_and_the_exam_appears(tls_stack: Stack, pki: Pki) -> None:
    accession, control_id = unique("TLS"), unique("C")
    ack = parse_ack(
        tls_exchange(tls_stack.mllp_port, order(accession, control_id), client_context(ca=pki.ca))
    )
    assert (ack.code, ack.control_id) == ("AA", control_id), ack.raw
    exam = wait_for_exam(tls_stack, accession)
    assert exam["patient"]["id"] == "MRN1"
    (row,) = log_rows(tls_stack, "control_id = ?", (control_id,))
    assert row["status"] == "accepted"


def test_a_plaintext_client_gets_no_ack_and_the_listener_keeps_serving(tls_stack: Stack, pki: Pki) -> None:
    control_id = unique("PLAIN")
    with MllpConnection(tls_stack.mllp_port) as plain:
        plain.send(order(unique("PLAIN"), control_id).encode())
        assert plain.closed_by_peer(within=15), "the listener kept a plaintext connection open"
        assert b"MSA" not in plain.unread, plain.unread
    assert log_rows(tls_stack, "control_id = ?", (control_id,)) == []
    tls_stack.wait_until(lambda: "mllp tls handshake failed" in tls_stack.log("listen"))
    # still serving TLS, on the same process
    accession = unique("AFTER")
    ack = parse_ack(
        tls_exchange(tls_stack.mllp_port, order(accession, unique("C")), client_context(ca=pki.ca))
    )
    assert ack.code == "AA", ack.raw
    wait_for_exam(tls_stack, accession)
    assert all(p.poll() is None for p in tls_stack.processes.values()), "a radflow process died"


def test_a_client_that_does_not_trust_our_certificate_hangs_up_without_sending(
    tls_stack: Stack, pki: Pki
) -> None:
    control_id = unique("UNTRUSTED")
    reason = refused(tls_stack.mllp_port, order(unique("U"), control_id), client_context(ca=pki.rogue_ca))
    assert "CERTIFICATE_VERIFY_FAILED" in reason or "certificate verify failed" in reason, reason
    assert log_rows(tls_stack, "control_id = ?", (control_id,)) == []


def test_radflow_hl7_send_speaks_tls(tls_stack: Stack, pki: Pki, tmp_path: Path) -> None:
    message = tmp_path / "order.hl7"
    control_id = unique("CLI")
    message.write_text(order(unique("CLI"), control_id))
    command = [sys.executable, "-m", "api.cli", "hl7", "send", "--host", "localhost"]
    command += ["--port", str(tls_stack.mllp_port), str(message)]
    env = tls_stack.env
    done = subprocess.run(
        [*command, "--tls", "--ca", str(pki.ca)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"{message}: AA" in done.stdout
    # the system trust store does not know our throwaway CA: a clear error, exit 2, nothing sent
    unverified = subprocess.run(
        [*command, "--tls"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert unverified.returncode == 2
    assert "certificate verify failed" in unverified.stderr
    assert len(log_rows(tls_stack, "control_id = ?", (control_id,))) == 1


def test_mutual_tls_accepts_a_client_with_a_certificate_from_our_ca(mutual_stack: Stack, pki: Pki) -> None:
    context = client_context(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    control_id = unique("MTLS")
    ack = parse_ack(tls_exchange(mutual_stack.mllp_port, order(unique("M"), control_id), context))
    assert (ack.code, ack.control_id) == ("AA", control_id), ack.raw
    mutual_stack.wait_until(lambda: "his-client" in mutual_stack.log("listen"))


@pytest.mark.parametrize("client", ["no certificate", "certificate from another CA"])
def test_mutual_tls_refuses_a_client_without_a_trusted_certificate(
    mutual_stack: Stack, pki: Pki, client: str
) -> None:
    if client == "no certificate":
        context = client_context(ca=pki.ca)
    else:
        context = client_context(ca=pki.ca, cert=pki.rogue_cert, key=pki.rogue_key)
    control_id = unique("NOCERT")
    before = mutual_stack.log("listen").count("mllp tls handshake failed")
    refused(mutual_stack.mllp_port, order(unique("N"), control_id), context)
    mutual_stack.wait_until(lambda: mutual_stack.log("listen").count("mllp tls handshake failed") > before)
    assert log_rows(mutual_stack, "control_id = ?", (control_id,)) == []
    good = client_context(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    assert (
        parse_ack(tls_exchange(mutual_stack.mllp_port, order(unique("OK"), unique("C")), good)).code == "AA"
    )
    assert mutual_stack.processes["listen"].poll() is None


# --- outbound: radflow's MLLP client to a peer serving TLS ------------------------------------


async def _serve_tls_peer(context: ssl.SSLContext, received: list[str]) -> asyncio.Server:
    """python-hl7's asyncio MLLP server wrapped in TLS; answers AA to each message."""

    async def client(reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        try:
            while not reader.at_eof():
                message = await reader.readmessage()
                received.append(str(message.segment("MSH")[10]))
                writer.writemessage(message.create_ack("AA"))
                await writer.drain()
        except REFUSED:
            pass
        finally:
            writer.close()

    return await start_hl7_server(client, "127.0.0.1", 0, encoding="utf-8", ssl=context)


async def test_outbound_delivery_over_tls_to_a_python_hl7_peer(pki: Pki) -> None:
    received: list[str] = []
    server = server_context(pki.server_cert, pki.server_key, ca=pki.ca, require_client_cert=True)
    peer = await _serve_tls_peer(server, received)
    port = peer.sockets[0].getsockname()[1]
    try:
        control_id = unique("OUT")
        context = client_context(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
        ack = await mllp_client.send_message(
            "localhost", port, order("OUT1", control_id), timeout_s=10, ssl_context=context
        )
        assert (ack.code, ack.control_id) == ("AA", control_id)
        assert received == [control_id]
        # without the client certificate the peer refuses: a delivery error, not an ACK
        with pytest.raises(mllp_client.DeliveryError):
            await mllp_client.send_message(
                "localhost",
                port,
                order("OUT2", unique("OUT")),
                timeout_s=10,
                ssl_context=client_context(ca=pki.ca),
            )
        assert received == [control_id]
    finally:
        peer.close()
        await peer.wait_closed()


async def test_a_destination_configured_with_tls_delivers_over_mutual_tls(pki: Pki) -> None:
    """The context deliver_hl7 builds from a destination's `tls:` block (ca, cert, key) is
    accepted by a peer that demands a client certificate."""
    from adapters.outbound_config import TlsOptions

    received: list[str] = []
    server = server_context(pki.server_cert, pki.server_key, ca=pki.ca, require_client_cert=True)
    peer = await _serve_tls_peer(server, received)
    port = peer.sockets[0].getsockname()[1]
    try:
        options = TlsOptions(ca=str(pki.ca), cert=str(pki.client_cert), key=str(pki.client_key))
        control_id = unique("DEST")
        ack = await mllp_client.send_message(
            "localhost", port, order("DEST1", control_id), timeout_s=10, ssl_context=options.client_context()
        )
        assert (ack.code, received) == ("AA", [control_id])
    finally:
        peer.close()
        await peer.wait_closed()
