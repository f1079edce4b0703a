"""MLLP framing over a real asyncio.StreamReader fed by hand: <VT> message <FS><CR>."""

from __future__ import annotations

import asyncio

import pytest

from interfaces.hl7.framing import END, START, FrameTooLarge, frame, read_frame

MAX = 1024
TIMEOUT = 1.0


def reader_with(*chunks: bytes, eof: bool = True, limit: int = 2**16) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=limit)
    for chunk in chunks:
        reader.feed_data(chunk)
    if eof:
        reader.feed_eof()
    return reader


async def all_frames(reader: asyncio.StreamReader, max_bytes: int = MAX) -> list[bytes]:
    frames = []
    while (message := await read_frame(reader, max_bytes, TIMEOUT)) is not None:
        frames.append(message)
    return frames


def test_a_frame_is_the_message_between_vt_and_fs_cr() -> None:
    assert frame(b"MSH|x") == b"\x0bMSH|x\x1c\x0d"
    assert (START, END) == (b"\x0b", b"\x1c\r")


async def test_several_frames_in_one_read_come_out_one_by_one() -> None:
    reader = reader_with(frame(b"MSH|1") + frame(b"MSH|2\rPID|1") + frame(b"MSH|3"))
    assert await all_frames(reader) == [b"MSH|1", b"MSH|2\rPID|1", b"MSH|3"]


async def test_a_clean_end_of_stream_gives_none() -> None:
    assert await read_frame(reader_with(), MAX, TIMEOUT) is None


async def test_a_frame_split_across_reads_at_every_byte_is_reassembled() -> None:
    wire = frame(b"MSH|^~\\&|HIS\rPID|1||P1") + frame(b"MSH|2")
    for cut in range(1, len(wire)):
        assert await all_frames(reader_with(wire[:cut], wire[cut:])) == [b"MSH|^~\\&|HIS\rPID|1||P1", b"MSH|2"], cut


async def test_a_frame_trickling_in_byte_by_byte_is_read_whole() -> None:
    reader = asyncio.StreamReader()

    async def trickle() -> None:
        for byte in frame(b"MSH|slow"):
            reader.feed_data(bytes([byte]))
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.create_task(trickle())
    assert await all_frames(reader) == [b"MSH|slow"]
    await feeder


async def test_noise_between_frames_is_skipped() -> None:
    reader = reader_with(b"\r\n", frame(b"MSH|1"), b"\r\n\x00garbage\x1c\r", frame(b"MSH|2"), b"\n")
    assert await all_frames(reader) == [b"MSH|1", b"MSH|2"]


async def test_a_message_containing_a_lone_fs_or_cr_is_not_cut_there() -> None:
    reader = reader_with(frame(b"MSH|a\x1cb\rc"))
    assert await all_frames(reader) == [b"MSH|a\x1cb\rc"]


async def test_a_frame_of_exactly_the_maximum_size_is_accepted() -> None:
    assert await all_frames(reader_with(frame(b"x" * MAX))) == [b"x" * MAX]


@pytest.mark.parametrize("limit", [2**16, 64], ids=["within-buffer", "past-buffer-limit"])
async def test_an_oversized_frame_is_refused_and_the_next_frame_is_still_read(limit: int) -> None:
    reader = reader_with(frame(b"x" * (MAX + 1)), frame(b"MSH|after"), limit=limit)
    with pytest.raises(FrameTooLarge):
        await read_frame(reader, MAX, TIMEOUT)
    assert await all_frames(reader) == [b"MSH|after"]


async def test_frames_larger_than_the_reader_buffer_but_within_the_maximum_are_read() -> None:
    big = bytes(range(256)).replace(b"\x1c", b"") * 3
    reader = reader_with(frame(big), frame(b"MSH|2"), limit=64)
    assert await all_frames(reader) == [big, b"MSH|2"]


async def test_a_peer_that_sends_nothing_times_out() -> None:
    reader = reader_with(eof=False)
    with pytest.raises(TimeoutError):
        await read_frame(reader, MAX, 0.05)


async def test_a_peer_that_stalls_mid_frame_times_out() -> None:
    reader = reader_with(START + b"MSH|half a mess", eof=False)
    with pytest.raises(TimeoutError):
        await read_frame(reader, MAX, 0.05)


async def test_a_slow_peer_that_keeps_sending_is_not_cut_off_mid_frame() -> None:
    # each gap is shorter than the timeout, the whole frame takes longer than it
    reader = asyncio.StreamReader()
    timeout, gap = 0.3, 0.1

    async def send_slowly() -> None:
        reader.feed_data(START)
        for part in (b"MSH|", b"^~\\&|", b"HIS|", b"GEN", b"|RF"):
            await asyncio.sleep(gap)
            reader.feed_data(part)
        reader.feed_data(END)

    sender = asyncio.create_task(send_slowly())
    started = asyncio.get_running_loop().time()
    assert await read_frame(reader, MAX, timeout) == b"MSH|^~\\&|HIS|GEN|RF"
    assert asyncio.get_running_loop().time() - started > timeout
    await sender


async def test_end_of_stream_mid_frame_raises_incomplete_read() -> None:
    reader = reader_with(frame(b"MSH|1"), START + b"MSH|cut off")
    assert await read_frame(reader, MAX, TIMEOUT) == b"MSH|1"
    with pytest.raises(asyncio.IncompleteReadError):
        await read_frame(reader, MAX, TIMEOUT)
