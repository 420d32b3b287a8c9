"""Following jobs: ``wait`` on many jobs at once, event streams in order, and readers that fall
behind being cut off (by the client's buffer limit, and by the broker's backlog limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import defaultdict
from typing import Any

import msgspec
import pytest
from lifecycle_support import running

import conveyor.client.events as client_events
from conveyor.broker import Broker
from conveyor.client import Client, EventsLost, JobEvent, JobFailed, fixed
from conveyor.protocol import PROTOCOL_VERSION
from conveyor.worker import Job, Worker


async def compute(job: Job) -> dict[str, Any]:
    """Square the payload; every tenth job (payload ending in 3) fails."""
    n = job.data
    if n % 10 == 3:
        raise ValueError(f"bad {n}")
    return {"n": n, "square": n * n}


async def test_1000_waits_at_once_each_get_their_own_outcome(url: str) -> None:
    async with Client(url) as client:
        ids = await client.add_bulk("many", range(1000))
        waits = [asyncio.ensure_future(client.wait(job_id, timeout=30)) for job_id in ids]
        await asyncio.sleep(0.05)
        assert not any(wait.done() for wait in waits)
        async with running(Worker("many", compute, url=url, concurrency=50)):
            outcomes = await asyncio.gather(*waits, return_exceptions=True)
    for n, (job_id, outcome) in enumerate(zip(ids, outcomes, strict=True)):
        if n % 10 == 3:
            assert isinstance(outcome, JobFailed), (n, outcome)
            assert outcome.job.id == job_id and outcome.error_message == f"bad {n}"
        else:
            assert outcome == {"n": n, "square": n * n}


async def lifecycle_handler(job: Job) -> str:
    kind = job.data["kind"]
    if kind == "progress":
        await job.progress(25)
        await job.progress({"done": 75})
    elif kind == "retried" and job.attempt == 1:
        raise ValueError("first try fails")
    elif kind == "failing":
        raise RuntimeError("always fails")
    return f"{kind} ok on try {job.attempt}"


async def collect(stream: Any, until: int) -> list[JobEvent]:
    """Read ``stream`` until ``until`` jobs have finished (completed or failed)."""
    events: list[JobEvent] = []
    finished = 0
    async with asyncio.timeout(15):
        async for event in stream:
            events.append(event)
            finished += event.kind in ("completed", "failed")
            if finished == until:
                return events
    raise AssertionError("the stream ended")


async def test_events_of_each_job_come_in_lifecycle_order(url: str) -> None:
    queue = "watched"
    async with Client(url) as client:
        stream = client.events(queue)
        second = client.events(queue)  # a second reader of the same queue sees the same
        jobs = {
            "progress": await client.add(queue, {"kind": "progress"}),
            "retried": await client.add(queue, {"kind": "retried"}, attempts=2,
                                        backoff=fixed(0.1)),
            "failing": await client.add(queue, {"kind": "failing"}),
            "delayed": await client.add(queue, {"kind": "delayed"}, delay=0.2),
        }
        async with running(Worker(queue, lifecycle_handler, url=url)):
            events = await collect(stream, until=len(jobs))
            assert await collect(second, until=len(jobs)) == events
        await stream.aclose()
        await second.aclose()
    per_job: dict[int, list[JobEvent]] = defaultdict(list)
    for event in events:
        assert event.queue == queue
        per_job[event.job].append(event)
    assert set(per_job) == set(jobs.values())
    for job_events in per_job.values():
        times = [event.at for event in job_events]
        assert times == sorted(times)

    def kinds(name: str) -> list[tuple[str, int]]:
        return [(event.kind, event.attempt) for event in per_job[jobs[name]]]

    assert kinds("progress") == [("added", 0), ("active", 1), ("progress", 1), ("progress", 1),
                                 ("completed", 1)]
    progress = per_job[jobs["progress"]]
    assert [event.value for event in progress[2:4]] == [25, {"done": 75}]
    assert progress[-1].value == "progress ok on try 1"

    assert kinds("retried") == [("added", 0), ("active", 1), ("retrying", 1), ("delayed", 1),
                                ("active", 2), ("completed", 2)]
    retried = per_job[jobs["retried"]]
    retrying, delayed = retried[2], retried[3]
    assert retrying.error is not None and retrying.error.type == "ValueError"
    assert retrying.error.message == "first try fails"
    assert retrying.run_at == delayed.run_at == pytest.approx(retrying.at + 0.1)
    assert delayed.run_at is not None and retried[4].at >= delayed.run_at
    assert retried[-1].value == "retried ok on try 2"

    assert kinds("failing") == [("added", 0), ("active", 1), ("failed", 1)]
    failed = per_job[jobs["failing"]][-1]
    assert failed.error is not None and failed.error.type == "RuntimeError"
    assert "always fails" in failed.error.traceback

    assert kinds("delayed") == [("added", 0), ("delayed", 0), ("active", 1), ("completed", 1)]
    added, delayed_event, active, _ = per_job[jobs["delayed"]]
    assert delayed_event.run_at == pytest.approx(added.at + 0.2)
    assert delayed_event.run_at is not None and active.at >= delayed_event.run_at


async def test_a_closed_stream_stops_and_the_queue_is_no_longer_watched(
    broker: Broker, url: str
) -> None:
    async with Client(url) as client:
        stream = client.events("closing")
        await client.add("closing", 1)
        first = await anext(stream)
        assert first.kind == "added"
        await stream.aclose()
        await stream.aclose()  # idempotent
        assert "closing" not in broker.queues.watched
        with pytest.raises(StopAsyncIteration):
            await anext(stream)


async def test_a_stream_nobody_reads_is_cut_off_after_the_client_buffer(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_events, "EVENT_BUFFER", 50)
    async with Client(url) as producer:
        stream = producer.events("flood")
        await producer.add_bulk("flood", range(30))  # 30 "added" events, within the buffer
        await producer.counts("flood")  # a round trip: those events have arrived
        await producer.add_bulk("flood", range(30))  # 60 in all: over the buffer
        await producer.counts("flood")
        # What came before the cut is still read, then the loss is reported.
        got = []
        with pytest.raises(EventsLost, match="50"):
            async with asyncio.timeout(5):
                async for event in stream:
                    got.append(event)
        assert [event.kind for event in got] == ["added"] * 30
        # The connection itself is fine.
        assert (await producer.counts("flood"))["waiting"] == 60


class RawWatcher:
    """A bare connection that watches a queue and then reads nothing until told to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, queue: str) -> RawWatcher:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        watcher = cls(reader, writer)
        watcher.send({"t": "hello", "version": PROTOCOL_VERSION, "client": "raw"})
        watcher.send({"t": "watch", "req": 1, "queue": queue})
        assert (await watcher.receive())["t"] == "welcome"
        assert (await watcher.receive()) == {"t": "ok", "req": 1}
        return watcher

    def send(self, message: dict[str, Any]) -> None:
        body = msgspec.msgpack.encode(message)
        self.writer.write(struct.pack(">I", len(body)) + body)

    async def receive(self) -> dict[str, Any]:
        (length,) = struct.unpack(">I", await self.reader.readexactly(4))
        message = msgspec.msgpack.decode(await self.reader.readexactly(length))
        assert isinstance(message, dict)
        return message


async def test_the_broker_cuts_off_a_watcher_that_stops_reading(
    broker: Broker, url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(broker.core.watchers, "backlog_limit", 256 * 1024)  # bytes, not 16 MiB
    queue = "noisy"
    watcher = await RawWatcher.open(broker.port, queue)
    big = "x" * 64 * 1024

    def cut_off() -> bool:
        return queue not in broker.queues.watched

    async def chatty(job: Job) -> None:
        # Each progress report is one 64 KiB event for the watcher, who reads none of them;
        # the socket buffers fill up (a few MiB), then the broker's backlog limit is reached.
        for _ in range(2000):
            if cut_off():
                return
            await job.progress(big)
            await asyncio.sleep(0)

    try:
        async with Client(url) as client, running(Worker(queue, chatty, url=url)):
            job_id = await client.add(queue, "x")
            await client.wait(job_id, timeout=60)
            assert cut_off()
            # Only the watcher was cut off: the producer and the worker carry on.
            assert await client.wait(await client.add(queue, "y"), timeout=10) is None
        # The watcher reads some of what was sent before the cut, then the connection ends: the
        # broker dropped it at once with all it held for it (SLOW_CONSUMER is only logged).
        async with asyncio.timeout(30):
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionResetError):
                while (message := await watcher.receive())["t"] == "events":
                    pass
                raise AssertionError(f"the watcher was sent {message} after its events")
        assert any("SLOW_CONSUMER" in record.getMessage() and queue in record.getMessage()
                   for record in caplog.records)
    finally:
        watcher.writer.close()
