"""The outbound MLLP client's reading of ACKs: MSA-1, the echo of our MSH-10, and the reason."""

from __future__ import annotations

import asyncio

import pytest

from interfaces.hl7.mllp_client import DeliveryError, parse_ack, send_message

MESSAGE = "MSH|^~\\&|RADFLOW|RADFLOW|RIS|HOSP|20240315103000||ORM^O01|RF123|P|2.5.1\rPID|1||P1"


def test_reads_code_control_id_and_reason() -> None:
    ack = parse_ack("MSH|^~\\&|RIS|HOSP|RADFLOW|RADFLOW|20240315||ACK|A1|P|2.5.1\rMSA|AE|RF123|bad PID")
    assert (ack.code, ack.control_id, ack.reason, ack.accepted) == ("AE", "RF123", "bad PID", False)


def test_takes_the_reason_from_err_when_msa3_is_empty() -> None:
    ack = parse_ack("MSH|^~\\&|RIS|HOSP\rMSA|AR|RF123\rERR||PID^1^3|101^Required field missing^HL70357|E")
    assert ack.code == "AR" and ack.reason == "Required field missing"
    ack = parse_ack("MSH|^~\\&|RIS|HOSP\rMSA|AE|RF123\rERR||||E||||unknown placer order")
    assert ack.reason == "unknown placer order"
    assert parse_ack("MSH|^~\\&|RIS\nMSA|CA|RF9").accepted  # enhanced mode commit accept, LF separators


def test_an_answer_without_msa_is_no_ack() -> None:
    with pytest.raises(DeliveryError, match="no MSA"):
        parse_ack("MSH|^~\\&|RIS|HOSP\rERR|||207")


async def _answering(reply: bytes) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\x1c\x0d")
        if reply:
            writer.write(b"\x0b" + reply + b"\x1c\x0d")
            await writer.drain()
            writer.close()
        else:
            await asyncio.sleep(5)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


async def test_an_ack_for_another_message_does_not_count() -> None:
    server, port = await _answering(b"MSH|^~\\&|RIS|HOSP\rMSA|AA|SOMEONE-ELSE")
    async with server:
        with pytest.raises(DeliveryError, match="answers 'SOMEONE-ELSE', not our message 'RF123'"):
            await send_message("127.0.0.1", port, MESSAGE, timeout_s=2)


async def test_silence_times_out() -> None:
    server, port = await _answering(b"")
    async with server:
        with pytest.raises(DeliveryError, match="no ACK .* within 0.2 s"):
            await send_message("127.0.0.1", port, MESSAGE, timeout_s=0.2)


async def test_a_matching_aa_is_accepted() -> None:
    server, port = await _answering(b"MSH|^~\\&|RIS|HOSP\rMSA|AA|RF123")
    async with server:
        ack = await send_message("127.0.0.1", port, MESSAGE, timeout_s=2)
    assert ack.accepted and ack.control_id == "RF123"
