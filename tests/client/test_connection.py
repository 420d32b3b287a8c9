"""The client's connection: ``Connection.open`` given up (cancelled at any point, or timed out)
leaves nothing behind (no open file descriptor, no exception nobody reads), and messages of a
type the client does not know, which a later broker may send, do not break it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from processes import eventually

from conveyor.client import Client, Connection, ConnectionLost, ProtocolViolation
from conveyor.protocol import (
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    ClientMessage,
    Counts,
    FrameEncoder,
    FrameReader,
    GetCounts,
    Hello,
    MessageDecoder,
    Welcome,
)

TRIES = 150


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
async def silent_url() -> AsyncIterator[str]:
    """A server that accepts connections and never answers ``hello``."""
    peers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer)
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
        for writer in peers:
            writer.close()
        await server.wait_closed()


async def all_closed(before: int) -> None:
    """Return once as many descriptors are open as ``before``: closed transports close their
    sockets a loop pass or two later, the silent server its side once it reads the EOF."""
    await eventually(lambda: open_fds() == before, f"back to {before} open descriptors")


async def test_cancelled_connects_close_their_sockets(silent_url: str) -> None:
    before = open_fds()
    for n in range(TRIES):
        opening = asyncio.ensure_future(Connection.open(silent_url, timeout=30))
        # Cancel at every stage: connecting, connected, hello sent, waiting for welcome.
        for _ in range(n % 15):
            await asyncio.sleep(0)
        opening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await opening
    await all_closed(before)


async def test_timed_out_handshakes_close_their_sockets(silent_url: str) -> None:
    before = open_fds()
    for n in range(TRIES // 5):
        with pytest.raises(ConnectionLost, match="did not answer the handshake|no answer"):
            await Connection.open(silent_url, timeout=0.001 * (n % 5 + 1))
    await all_closed(before)


# Messages of a type the client does not know (a later broker's).


def frame(message: dict[str, Any]) -> bytes:
    body = msgspec.msgpack.encode(message)
    return struct.pack(">I", len(body)) + body


@pytest.fixture
async def newer_broker() -> AsyncIterator[str]:
    """A stand-in for a later broker: it pushes a message of a new type right after
    ``welcome`` and before every reply, and answers ``get_counts`` of queue ``"new"`` with a
    reply of a new type."""
    decoder: MessageDecoder[ClientMessage] = MessageDecoder(ClientMessage)
    encoder = FrameEncoder()
    push = frame({"t": "novelty", "note": "a push this client does not know"})

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = FrameReader()
        while data := await reader.read(65536):
            for body in frames.feed(data):
                message = decoder.decode(body)
                if isinstance(message, Hello):
                    writer.write(encoder.frame(Welcome(version=PROTOCOL_VERSION, server="newer",
                                                       max_frame=DEFAULT_MAX_FRAME)) + push)
                elif isinstance(message, GetCounts):
                    writer.write(push)
                    if message.queue == "new":
                        writer.write(frame({"t": "counts_v2", "req": message.req}))
                    else:
                        writer.write(encoder.frame(Counts(req=message.req, waiting=1, active=0,
                                                          delayed=0, completed=0, failed=0)))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def test_pushed_messages_of_unknown_types_are_ignored(newer_broker: str) -> None:
    async with Client(newer_broker, reconnect=False) as client:
        assert (await client.counts("q"))["waiting"] == 1
        assert (await client.counts("q"))["waiting"] == 1
        assert client.connection.failure is None


async def test_a_reply_of_an_unknown_type_fails_only_its_request(newer_broker: str) -> None:
    async with Client(newer_broker, reconnect=False) as client:
        with pytest.raises(ProtocolViolation, match="does not know.*counts_v2"):
            await client.counts("new")
        assert (await client.counts("q"))["waiting"] == 1
        assert client.connection.failure is None


async def test_a_number_out_of_the_protocols_range_is_refused_and_the_connection_goes_on(
        url: str) -> None:
    async with Client(url) as client:
        job_id = await client.add("q", 1)
        with pytest.raises(ValueError, match="out of the protocol's range"):
            await client.get_job(10**30)
        with pytest.raises(ValueError, match="out of the protocol's range"):
            await client.get_jobs("q", "waiting", offset=2**64)
        # Nothing half-sent: the connection and its next requests are fine.
        assert (await client.counts("q"))["waiting"] == 1
        info = await client.get_job(job_id)
        assert info is not None and info.data == 1
