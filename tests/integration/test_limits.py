"""The broker stays within its memory budget and keeps its connection slots whatever clients do:
connections that never greet, frames never finished, clients that never read their replies,
watchers that fall behind, and waits piled on one job. Each bound is shown through a real broker
over real sockets, measuring what the broker holds (its sessions' buffers, or the RSS of a broker
process)."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

from rawwire import Raw, eventually

from conveyor.broker import Broker
from conveyor.client import Client, RequestRefused
from conveyor.protocol import ErrorCode

MiB = 1 << 20


def _rss() -> int:
    """This process's resident set size, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


# Connections that do not finish what they start.


async def test_silent_connections_do_not_keep_every_slot(make_broker: Any) -> None:
    broker: Broker = await make_broker(max_connections=20, handshake_timeout=0.5)
    url = f"127.0.0.1:{broker.port}"
    silent = [await Raw.open(broker.port, hello=False) for _ in range(20)]
    try:
        await eventually(lambda: len(broker.sessions) == 20, "20 silent connections accepted")
        # Every slot is taken: a real client is turned away...
        try:
            await Client(url).connect()
        except RequestRefused as refused:
            assert refused.code == ErrorCode.TOO_MANY_CONNECTIONS
        else:
            raise AssertionError("a 21st connection was accepted")
        # ...until the handshake timeout closes the silent ones, each told why.
        for raw in silent:
            assert "hello" in await raw.receive_error(ErrorCode.TIMED_OUT)
            assert await raw.is_closed_by_peer()
        async with Client(url) as client:
            await client.add("q", "after the silent ones")
            assert (await client.counts("q"))["waiting"] == 1
    finally:
        for raw in silent:
            await raw.close()


async def test_a_greeted_connection_is_not_timed_out_for_being_idle(make_broker: Any) -> None:
    broker: Broker = await make_broker(handshake_timeout=0.2, frame_timeout=0.2)
    raw = await Raw.open(broker.port)
    try:
        # Idle between frames for several timeouts: that is a producer with nothing to do.
        await asyncio.sleep(1.0)
        assert (await raw.counts("q"))["waiting"] == 0
        # A frame sent in pieces, each within the timeout, is not cut off either.
        body = b"\x83\xa1t\xaaget_counts\xa3req\x05\xa5queue\xa1q"
        frame = struct.pack(">I", len(body)) + body
        for at in range(0, len(frame), 8):
            raw.write(frame[at:at + 8])
            await asyncio.sleep(0.03)
        assert (await raw.receive())["t"] == "counts"
    finally:
        await raw.close()


async def test_unfinished_frames_hold_only_what_arrived_and_are_freed_by_the_timeout(
    make_broker: Any
) -> None:
    broker: Broker = await make_broker(frame_timeout=2.0)
    before = _rss()
    # 400 connections each start a 1 MiB frame and send 16 KiB of it.
    connections = [await Raw.open(broker.port) for _ in range(400)]
    try:
        for raw in connections:
            raw.write(struct.pack(">I", MiB) + b"\x84" + b"\0" * (16 * 1024 - 1))

        def held() -> int:
            return sum(session.reader.buffered for session in broker.sessions)

        await eventually(lambda: held() >= 400 * (16 * 1024 + 4), "the broker read every part")
        # What is held is what arrived, not what the prefixes announced (400 MiB).
        assert held() < 400 * (16 * 1024 + 4) + 64 * 1024
        assert _rss() - before < 100 * MiB
        # The frame timeout closes them all, telling each why, and frees their buffers.
        for raw in connections:
            assert "unfinished" in await raw.receive_error(ErrorCode.TIMED_OUT)
        await eventually(lambda: not broker.sessions, "every stalled connection closed")
    finally:
        for raw in connections:
            await raw.close()


async def test_a_closed_connection_that_never_reads_is_dropped(make_broker: Any) -> None:
    broker: Broker = await make_broker(frame_timeout=0.5)
    async with Client(f"127.0.0.1:{broker.port}") as client:
        await client.add_bulk("q", ["x" * 1024] * 2000)
    raw = await Raw.open(broker.port, rcvbuf=4096)
    try:
        # Megabytes of replies it will never read, then a length that closes the connection.
        for req in range(1, 4):
            raw.send({"t": "get_jobs", "req": req, "queue": "q", "state": "waiting",
                      "limit": 2000})
        raw.write(struct.pack(">I", 1 << 31))
        await eventually(lambda: all(session.closing for session in broker.sessions),
                         "the broker closes the connection")
        # It cannot finish sending what it owes; rather than hold it for ever, it drops it.
        await eventually(lambda: not broker.sessions, "the closed connection is dropped")
    finally:
        await raw.close()
