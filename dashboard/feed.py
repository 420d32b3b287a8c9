"""The live data behind the pages: one task polls the broker's statistics every ``refresh``
seconds and hands each snapshot to every open overview, queue and workers page; a job page
follows its job's events.

One poll serves every browser, however many are open: a slow browser is not queued a backlog,
it gets the latest snapshot when it is ready for one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final

from conveyor.client import (
    Client,
    ConveyorError,
    Forbidden,
    JobEvent,
    JobInfo,
    Stats,
)

from .sse import KEEPALIVE, message
from .views import broker_view, event_view, job_view, queue_view, worker_view
from .watches import JobEvents, JobWatches

__all__ = ["HISTORY", "Feed", "Snapshot", "job_updates"]

HISTORY: Final = 60
"""Snapshots of throughput kept per queue, for the sparklines."""
JOB_KEEPALIVE: Final = 15.0
"""Seconds of silence after which a job page's stream sends a comment (idle proxies)."""
CHANGING: Final = frozenset({"active", "progress", "completed", "failed", "retrying", "delayed"})
"""Event kinds after which the job's record is read again (its state or figures changed)."""


@dataclass(slots=True)
class Snapshot:
    """One poll of the broker: ``stats`` (None when it could not be reached, ``error`` says why)
    and the messages sent to browsers, encoded once for all of them."""

    seq: int
    at: float
    stats: Stats | None
    error: str | None
    full: bytes = b""
    """With the whole throughput history: a browser's first message."""
    delta: bytes = b""
    """With this poll's throughput only: the following messages."""


@dataclass(slots=True)
class _Throughput:
    """A queue's recent throughput: jobs a second added and finished, one pair per poll."""

    points: collections.deque[tuple[float, float]] = field(
        default_factory=lambda: collections.deque(maxlen=HISTORY))
    last: tuple[float, int, int] | None = None
    """(monotonic time, added, completed + failed) at the previous poll."""

    def sample(self, now: float, added: int, finished: int) -> tuple[float, float]:
        point = (0.0, 0.0)
        if self.last is not None and now > self.last[0]:
            elapsed = now - self.last[0]
            # A counter that went down (the broker restarted) gives 0, not a negative rate.
            point = (max(added - self.last[1], 0) / elapsed,
                     max(finished - self.last[2], 0) / elapsed)
        self.last = (now, added, finished)
        self.points.append(point)
        return point


class Feed:
    """Polls ``fetch`` (``client.stats``) every ``refresh`` seconds until ``closing`` is set."""

    def __init__(self, fetch: Callable[[], Awaitable[Stats]], *, refresh: float,
                 closing: asyncio.Event) -> None:
        self.fetch = fetch
        self.refresh = refresh
        self.closing = closing
        self.latest: Snapshot | None = None
        self._seq = 0
        self._tick = asyncio.Event()
        """Set (and replaced) at every snapshot: what subscribers wait on."""
        self._throughput: dict[str, _Throughput] = {}
        self._readers = 0
        """Browsers following the feed now."""
        self._wanted = asyncio.Event()
        """Set while ``_readers`` is above 0."""

    @property
    def readers(self) -> int:
        """Browsers following the feed now."""
        return self._readers

    async def run(self) -> None:
        """Poll while a browser follows the feed, until ``closing`` is set (or the task is
        cancelled)."""
        loop = asyncio.get_running_loop()
        while not self.closing.is_set():
            if not self._readers:
                # Nobody watches: no poll (a dashboard scraped only for /metrics, or left
                # without a page open, does not ask a big broker for everything every second).
                self.latest = None  # stale by the time a browser comes: it waits for a poll
                await _first(self._wanted.wait(), self.closing.wait())
                continue
            started = loop.time()
            try:
                stats: Stats | None = await self.fetch()
                error = None
            except (ConveyorError, ValueError) as exc:
                # ValueError: the address or a secret or TLS file it names cannot be used (now).
                stats, error = None, str(exc) or type(exc).__name__
            self.publish(stats, error, loop.time())
            took = loop.time() - started
            # At least as long as the poll took: a poll slower than ``refresh`` (a broker with
            # 10,000 queues) must not keep the dashboard busy all the time.
            pause = max(self.refresh - took, took)
            try:
                async with asyncio.timeout(pause):
                    await self.closing.wait()
            except TimeoutError:
                pass
        self.close()

    def close(self) -> None:
        """Wake every subscriber for the last time."""
        self.closing.set()
        self._tick.set()

    def publish(self, stats: Stats | None, error: str | None, now: float) -> Snapshot:
        """Make a snapshot of ``stats`` (taken at monotonic ``now``) and wake the subscribers."""
        self._seq += 1
        wall = time.time()
        snapshot = Snapshot(self._seq, wall, stats, error)
        full: dict[str, Any] = {"up": stats is not None, "error": error, "at": wall}
        delta = dict(full)
        if stats is not None:
            queues_full, queues_delta = [], []
            for queue in stats.queues:
                throughput = self._throughput.setdefault(queue.name, _Throughput())
                point = throughput.sample(now, queue.added, queue.completed + queue.failed)
                view = queue_view(queue)
                queues_full.append({**view, "history": list(throughput.points)})
                queues_delta.append({**view, "point": point})
            known = {queue.name for queue in stats.queues}
            for gone in self._throughput.keys() - known:
                del self._throughput[gone]
            common = {"broker": broker_view(stats.broker),
                      "workers": [worker_view(worker, wall) for worker in stats.workers]}
            full |= common | {"queues": queues_full}
            delta |= common | {"queues": queues_delta}
        snapshot.full, snapshot.delta = message(full), message(delta)
        self.latest = snapshot
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()
        return snapshot

    async def updates(self) -> AsyncGenerator[bytes]:
        """A browser's stream: the latest snapshot in full, then each new one (in full again
        after one was missed, so the browser's history has no gap)."""
        self._readers += 1
        self._wanted.set()
        sent: Snapshot | None = None
        try:
            while not self.closing.is_set():
                latest = self.latest
                if latest is not None and latest is not sent:
                    yield (latest.full if sent is None or latest.seq != sent.seq + 1
                           else latest.delta)
                    sent = latest
                    continue
                tick = self._tick
                if self.closing.is_set():
                    break
                await tick.wait()
        finally:
            self._readers -= 1
            if not self._readers:
                self._wanted.clear()


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    """Wait until the first of ``waits`` is done (the others are cancelled)."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)


async def job_updates(connect: Callable[[], Awaitable[Client]], watches: JobWatches,
                      job_id: int, *, retry: float,
                      closing: asyncio.Event) -> AsyncGenerator[bytes]:
    """A job page's stream (``connect`` gives the connected client; ``watches`` the queues'
    shared event streams): the job's record, then each of its events as it happens, with the
    record again after every event that changes it. When the broker is lost, a ``down``
    message, then it starts over once the broker answers again."""
    while not closing.is_set():
        try:
            client = await connect()
            job = await client.get_job(job_id)
            if job is None:
                yield message({"type": "gone"})
                return
            async with watches.watch(client, job.queue, job_id) as events:
                # Read again now that the events are watched: nothing between the two is missed.
                job = await client.get_job(job_id)
                if job is None:
                    yield message({"type": "gone"})
                    return
                yield _job_message(job)
                async with contextlib.aclosing(_job_events(events)) as stream:
                    async for event in stream:
                        if event is None:
                            yield KEEPALIVE
                            continue
                        yield message({"type": "event", "event": event_view(event)})
                        if event.kind in CHANGING:
                            job = await client.get_job(job_id)
                            if job is None:
                                yield message({"type": "gone"})
                                return
                            yield _job_message(job)
        except Forbidden as exc:
            yield message({"type": "error", "status": 403, "message": exc.message})
            return
        except ConveyorError as exc:
            # The broker was lost (or the stream fell behind): say so, then start over.
            yield message({"type": "down", "message": str(exc)})
        try:
            async with asyncio.timeout(retry):
                await closing.wait()
        except TimeoutError:
            pass


async def _job_events(events: JobEvents) -> AsyncGenerator[JobEvent | None]:
    """The events of ``events``; None after ``JOB_KEEPALIVE`` seconds without any."""
    while True:
        try:
            async with asyncio.timeout(JOB_KEEPALIVE):
                event = await events.get()
        except TimeoutError:
            yield None
            continue
        if event is None:
            return
        yield event


def _job_message(job: JobInfo) -> bytes:
    return message({"type": "job", "job": job_view(job)})
