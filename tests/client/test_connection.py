"""``Connection.open`` given up (cancelled at any point, or timed out) leaves nothing behind: no
open file descriptor, and no exception nobody reads."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import pytest

from conveyor.client import Connection, ConnectionLost

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


async def settle() -> None:
    """Let closed transports finish closing (their sockets close a loop pass or two later)."""
    for _ in range(10):
        await asyncio.sleep(0.001)


async def test_cancelled_connects_close_their_sockets(silent_url: str) -> None:
    await settle()
    before = open_fds()
    for n in range(TRIES):
        opening = asyncio.ensure_future(Connection.open(silent_url, timeout=30))
        # Cancel at every stage: connecting, connected, hello sent, waiting for welcome.
        for _ in range(n % 15):
            await asyncio.sleep(0)
        opening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await opening
    await settle()
    assert open_fds() == before


async def test_timed_out_handshakes_close_their_sockets(silent_url: str) -> None:
    await settle()
    before = open_fds()
    for n in range(TRIES // 5):
        with pytest.raises(ConnectionLost, match="did not answer the handshake|no answer"):
            await Connection.open(silent_url, timeout=0.001 * (n % 5 + 1))
    await settle()
    assert open_fds() == before
