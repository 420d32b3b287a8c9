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

import msgspec
from processes import eventually
from rawwire import Raw

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
        # Idle between frames for several timeouts: that is a producer with nothing to do. Each
        # connection below, greeted after it and leaving a frame unfinished, is timed out: the
        # frame timeout passed three times over while ``raw`` said nothing.
        for _ in range(3):
            stalled = await Raw.open(broker.port)
            try:
                stalled.write(struct.pack(">I", 64))
                assert "unfinished" in await stalled.receive_error(ErrorCode.TIMED_OUT)
            finally:
                await stalled.close()
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


# Clients that do not read what they asked for.


async def _fill(url: str, jobs: int, size: int) -> None:
    async with Client(url) as client:
        await client.add_bulk("q", ["x" * size] * jobs)


async def test_a_client_that_never_reads_makes_the_broker_stop_reading_it(
    broker: Broker, url: str
) -> None:
    await _fill(url, 3000, 1024)
    raw = await Raw.open(broker.port, rcvbuf=4096)
    try:
        # 100 requests whose replies are a megabyte each, pipelined, and one small one.
        for req in range(1, 101):
            raw.send({"t": "get_jobs", "req": req, "queue": "q", "state": "waiting",
                      "limit": 10_000})
        raw.send({"t": "get_counts", "req": 101, "queue": "q"})
        await raw.writer.drain()
        [session] = broker.sessions
        await eventually(lambda: session.held is not None, "the broker stops reading")
        # What the broker holds for it is bounded, not 100 MiB of replies.
        assert session.backlog() < 4 * MiB
        # Once it reads, every request is answered, in order, none lost.
        for req in range(1, 101):
            frame = await raw.receive_frame()
            assert len(frame) <= broker.max_frame
            reply = msgspec.msgpack.decode(frame)
            assert (reply["t"], reply["req"], reply["total"]) == ("jobs", req, 3000)
            assert 0 < len(reply["jobs"]) < 3000
        assert (await raw.receive())["req"] == 101
        assert session.held is None
    finally:
        await raw.close()


async def test_get_jobs_from_a_client_that_never_reads_does_not_grow_the_broker(
    start_broker: Any
) -> None:
    process = start_broker("--in-memory")
    url = process.url
    port = int(url.rsplit(":", 1)[1])
    await _fill(url, 10_000, 1024)

    def rss() -> int:
        status = Path(f"/proc/{process.process.pid}/status").read_text()
        return next(int(line.split()[1]) * 1024 for line in status.splitlines()
                    if line.startswith("VmRSS:"))

    async with Client(url) as client:
        await client.counts("q")
        before = rss()
        raw = await Raw.open(port, rcvbuf=4096)
        try:
            # Ten requests of 540 bytes whose unbounded replies would be 10 MiB each.
            for req in range(1, 11):
                raw.send({"t": "get_jobs", "req": req, "queue": "q", "state": "waiting",
                          "limit": 10_000})
            await raw.writer.drain()
            # The broker read them (they arrived before this request was sent).
            await client.counts("q")
            grown = rss() - before
            assert grown < 32 * MiB, f"broker RSS grew by {grown / MiB:.0f} MiB"
            # A short page: fewer than asked although more remain; the client pages on.
            reply = msgspec.msgpack.decode(await raw.receive_frame())
            assert reply["req"] == 1 and reply["total"] == 10_000
            assert 0 < len(reply["jobs"]) < 10_000
        finally:
            await raw.close()


# Watchers that fall behind.


async def test_watchers_that_never_read_are_cut_off_and_their_memory_freed_at_once(
    make_broker: Any
) -> None:
    # Closing (rather than resetting) a reader that never reads would hold its output until the
    # frame timeout at best: make that long, so only an immediate drop passes.
    broker: Broker = await make_broker(frame_timeout=120.0)
    # The cut-off is 16 MiB; 1 MiB here keeps 50 watchers' worth of events small in the test.
    broker.core.watchers.backlog_limit = MiB
    before = _rss()
    watchers = [await Raw.open(broker.port, rcvbuf=4096) for _ in range(50)]
    worker = await Raw.open(broker.port)
    try:
        for raw in watchers:
            raw.send({"t": "watch", "req": 1, "queue": "q"})
            assert (await raw.receive())["t"] == "ok"
        # From now on the watchers read nothing. A worker reports progress with large values.
        worker.send({"t": "subscribe", "req": 1, "queue": "q", "window": 1})
        assert (await worker.receive())["t"] == "ok"
        async with Client(f"127.0.0.1:{broker.port}") as client:
            job_id = await client.add("q", "job")
            deliver = await worker.receive()
            job = deliver["jobs"][0]
            value = "v" * (64 * 1024)
            for _ in range(100):
                worker.send({"t": "progress", "job": job["job"], "lease": job["lease"],
                             "progress": value})
                await worker.writer.drain()
                await asyncio.sleep(0)
            # Every watcher is dropped, and what was queued for it goes with it.
            await eventually(lambda: len(broker.sessions) == 2,
                             "the watchers are cut off and their connections gone")
            assert sum(session.backlog() for session in broker.sessions) < MiB
            assert _rss() - before < 200 * MiB
            for raw in watchers:
                assert await raw.is_closed_by_peer()
            # The worker, which kept reading, is unaffected.
            worker.send({"t": "ack", "job": job["job"], "lease": job["lease"], "result": "ok"})
            assert await client.wait(job_id, timeout=5) == "ok"
    finally:
        for raw in watchers:
            await raw.close()
        await worker.close()


# Waits.


async def test_many_waits_on_one_large_job_cost_little_until_they_are_read(
    broker: Broker, url: str
) -> None:
    async with Client(url) as client:
        job_id = await client.add("q", b"x" * 100_000)
        raw = await Raw.open(broker.port, limit=MiB)
        worker = await Raw.open(broker.port)
        try:
            for req in range(1, 5001):
                raw.send({"t": "wait", "req": req, "job": job_id})
            await raw.writer.drain()
            await eventually(lambda: sum(broker.core.waiters.pending(s)
                                         for s in broker.sessions) == 5000,
                             "the broker has the 5,000 waits")
            [session] = [s for s in broker.sessions if broker.core.waiters.pending(s)]
            worker.send({"t": "subscribe", "req": 1, "queue": "q", "window": 1})
            deliver = await worker.receive()
            if deliver["t"] == "ok":
                deliver = await worker.receive()
            job = deliver["jobs"][0]
            worker.send({"t": "ack", "job": job["job"], "lease": job["lease"], "result": 1})
            await eventually(lambda: broker.core.waiters.pending(session) == 0,
                             "the job finishes")
            # 5,000 replies of 100 KB are owed: what the broker holds is a few of them.
            assert session.backlog() < 4 * MiB
            # Read, they all come, in order.
            for req in range(1, 5001):
                reply = msgspec.msgpack.decode(await raw.receive_frame())
                assert (reply["t"], reply["req"], reply["job"]["id"]) == ("finished", req, job_id)
            raw.send({"t": "get_counts", "req": 9999, "queue": "q"})
            assert (await raw.receive())["req"] == 9999
        finally:
            await raw.close()
            await worker.close()


async def test_a_client_side_timeout_or_cancellation_withdraws_the_wait(
    broker: Broker, url: str
) -> None:
    async with Client(url) as client:
        job_id = await client.add("q", "never runs")
        [session] = broker.sessions

        def pending() -> int:
            return broker.core.waiters.pending(session)

        for _ in range(3):
            try:
                await client.wait(job_id, timeout=0.01)
            except TimeoutError:
                pass
            else:
                raise AssertionError("the wait did not time out")
        await eventually(lambda: pending() == 0, "the timed-out waits are withdrawn")
        waiting = asyncio.ensure_future(client.wait(job_id))
        await eventually(lambda: pending() == 1, "the wait reaches the broker")
        waiting.cancel()
        await eventually(lambda: pending() == 0, "the cancelled wait is withdrawn")
        # A wait that is not withdrawn is still answered.
        kept = asyncio.ensure_future(client.wait(job_id))
        await eventually(lambda: pending() == 1, "the wait reaches the broker")
        async with Client(url) as worker_side:
            raw = await Raw.open(broker.port)
            try:
                raw.send({"t": "subscribe", "req": 1, "queue": "q", "window": 1})
                assert (await raw.receive())["t"] == "ok"
                job = (await raw.receive())["jobs"][0]
                raw.send({"t": "ack", "job": job["job"], "lease": job["lease"], "result": "r"})
                assert await asyncio.wait_for(kept, 5) == "r"
            finally:
                await raw.close()
            assert await worker_side.counts("q") == {"waiting": 0, "active": 0, "delayed": 0,
                                                     "completed": 1, "failed": 0, "workers": 0,
                                                     "waiting-children": 0}


async def test_the_pending_waits_of_a_connection_are_capped(make_broker: Any) -> None:
    broker: Broker = await make_broker(max_waits=100)
    async with Client(f"127.0.0.1:{broker.port}") as client:
        job_id = await client.add("q", "never runs")
    raw = await Raw.open(broker.port)
    try:
        for req in range(1, 102):
            raw.send({"t": "wait", "req": req, "job": job_id})
        text = await raw.receive_error(ErrorCode.LIMIT_EXCEEDED, req=101)
        assert "100" in text and "wait" in text
        # Withdrawing one makes room for another.
        raw.send({"t": "unwait", "job": job_id, "wait": 7})
        raw.send({"t": "wait", "req": 102, "job": job_id})
        raw.send({"t": "wait", "req": 103, "job": job_id})
        await raw.receive_error(ErrorCode.LIMIT_EXCEEDED, req=103)
        # Removing the job answers the 100 pending waits, and only those.
        raw.send({"t": "remove", "req": 104, "job": job_id})
        replies = [await raw.receive() for _ in range(101)]
        assert {"t": "ok", "req": 104} in replies
        refused = sorted(r["req"] for r in replies if r["t"] == "error")
        assert refused == [n for n in range(1, 101) if n != 7] + [102]
        assert all(ErrorCode(r["code"]) is ErrorCode.UNKNOWN_JOB for r in replies
                   if r["t"] == "error")
    finally:
        await raw.close()


async def test_the_limits_are_broker_options(start_broker: Any) -> None:
    process = start_broker("--in-memory", "--handshake-timeout", "0.3", "--frame-timeout", "0.3",
                           "--max-waits", "1")
    port = int(process.url.rsplit(":", 1)[1])
    silent = await Raw.open(port, hello=False)
    stalled = await Raw.open(port)
    raw = await Raw.open(port)
    try:
        assert "0.3 s" in await silent.receive_error(ErrorCode.TIMED_OUT)
        stalled.write(struct.pack(">I", 100))
        assert "0.3 s" in await stalled.receive_error(ErrorCode.TIMED_OUT)
        raw.send({"t": "add", "req": 1, "queue": "q", "jobs": [{"data": 1}]})
        job_id = (await raw.receive())["ids"][0]
        raw.send({"t": "wait", "req": 2, "job": job_id})
        raw.send({"t": "wait", "req": 3, "job": job_id})
        await raw.receive_error(ErrorCode.LIMIT_EXCEEDED, req=3)
    finally:
        for connection in (silent, stalled, raw):
            await connection.close()
