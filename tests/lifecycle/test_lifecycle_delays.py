"""Delayed jobs: they become waiting when due, in due order, never early; ``promote`` makes one
waiting now.

The ordering test runs on the wall clock (a real broker and worker in this process): every one
of 10,000 jobs starts after its time, in due order, and within ``LATE_MAX`` (a bound loose
enough for a loaded machine, that only a timer firing a second late or not at all would break).
How close to its time a job starts is measured by ``bench/timers.py``.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from lifecycle_support import running
from processes import eventually, wait_for_workers
from queue_state import raw, state

from conveyor.broker import Broker
from conveyor.broker.testing import Queues, StateError
from conveyor.client import Client, InvalidState, JobSpec, JobState, UnknownJob
from conveyor.protocol import JobDef
from conveyor.worker import Job, Worker

JOBS = 10_000
SPREAD = 2.0
"""Seconds over which the delayed jobs fall due."""
MARGIN = 1.0
"""Seconds from the bulk add to the first due time: the add itself must not eat into it."""
LATE_MAX = 1.0
"""Seconds: the most any delayed job may start after its time."""


async def test_10k_delayed_jobs_start_in_due_order_none_early(
    broker: Broker, url: str
) -> None:
    rng = random.Random(2024)
    starts: list[tuple[int, float]] = []

    async def note_start(job: Job) -> None:
        starts.append((job.id, time.time()))

    worker = Worker("later", note_start, url=url, concurrency=JOBS)
    async with Client(url) as client, running(worker):
        await wait_for_workers(broker, "later", 1)
        # Every job gets a random delay of up to 2 s, counted from a moment just after the
        # bulk add is done, so the add itself (a few frames) does not eat into the early ones.
        base = time.time() + MARGIN
        due = [base + rng.uniform(0, SPREAD) for _ in range(JOBS)]
        ids = await client.add_bulk("later", [JobSpec(n, run_at=at) for n, at in enumerate(due)])
        assert time.time() < base, "the bulk add took longer than the margin"
        run_at = dict(zip(ids, due, strict=True))
        assert (await client.counts("later"))["delayed"] == JOBS
        await eventually(lambda: len(starts) == JOBS, timeout=30, what="every job started")
        await eventually(lambda: broker.queues.counts("later")["completed"] == JOBS,
                         what="every job completed")
    # Due order: a job never starts before one that was due earlier.
    order = [job_id for job_id, _ in starts]
    assert order == sorted(ids, key=run_at.__getitem__)
    lateness = [started - run_at[job_id] for job_id, started in starts]
    assert min(lateness) >= 0, "a job started before its time"
    assert max(lateness) <= LATE_MAX, f"a job started {max(lateness):.3f} s after its time"


async def test_a_delayed_job_waits_for_its_delay(url: str) -> None:
    started: list[float] = []

    async def note(job: Job) -> None:
        started.append(time.monotonic())

    async with Client(url) as client, running(Worker("wait", note, url=url)):
        added = time.monotonic()
        job_id = await client.add("wait", "x", delay=0.3)
        info = await client.get_job(job_id)
        assert info is not None and info.state is JobState.DELAYED
        assert info.run_at is not None and info.run_at > time.time()
        await client.wait(job_id, timeout=10)
    assert started[0] - added >= 0.3


async def test_promote_makes_a_delayed_job_run_now(url: str) -> None:
    ran: list[int] = []

    async def note(job: Job) -> None:
        ran.append(job.id)

    async with Client(url) as client, running(Worker("promo", note, url=url)):
        late = await client.add("promo", "late", delay=3600)
        other = await client.add("promo", "other", delay=3600)
        await asyncio.sleep(0.05)
        assert ran == []
        await client.promote(late)
        await client.wait(late, timeout=5)
        assert ran == [late]
        info = await client.get_job(other)
        assert info is not None and info.state is JobState.DELAYED
        # Only delayed jobs can be promoted.
        with pytest.raises(InvalidState):
            await client.promote(late)
        with pytest.raises(UnknownJob):
            await client.promote(10_000)


async def test_promote_of_a_waiting_job_is_refused(url: str) -> None:
    async with Client(url) as client:
        job_id = await client.add("idle", "x")
        with pytest.raises(InvalidState, match="waiting"):
            await client.promote(job_id)
        info = await client.get_job(job_id)
        assert info is not None and info.state is JobState.WAITING


def test_promote_puts_the_job_at_the_tail_of_its_priority_now() -> None:
    queues = Queues()
    (early, delayed, high) = queues.create("q", [
        JobDef(data=raw(0)), JobDef(data=raw(1), delay=50.0),
        JobDef(data=raw(2), priority=1)], 10.0)
    queues.enqueue([early, delayed, high])
    assert delayed.state is JobState.DELAYED and delayed.run_at == 60.0
    assert queues.promote(delayed.id) is delayed
    assert state(delayed) is JobState.WAITING and delayed.run_at is None
    assert [job.id for job in queues.queue("q").waiting] == [high.id, early.id, delayed.id]
    assert queues.counts("q")["delayed"] == 0
    # Its old due time changes nothing when it comes.
    queues.tick(60.0)
    assert [job.id for job in queues.queue("q").waiting] == [high.id, early.id, delayed.id]
    with pytest.raises(StateError):
        queues.promote(delayed.id)
    assert queues.promote(999) is None


def test_due_jobs_join_their_queue_in_due_order_at_each_tick() -> None:
    queues = Queues()
    rng = random.Random(5)
    delays = [rng.choice([1.0, 2.0, 3.0, 3.0, 7.5]) for _ in range(40)]
    jobs = queues.create("q", [JobDef(data=raw(n), delay=d) for n, d in enumerate(delays)], 0.0)
    queues.enqueue(jobs)
    assert queues.counts("q")["delayed"] == 40
    for now in (0.5, 1.0, 2.9, 3.0, 7.4, 8.0):
        queues.tick(now)
        in_due_order = sorted(jobs, key=lambda job: (delays[job.id - 1], job.id))
        expected = [job.id for job in in_due_order if delays[job.id - 1] <= now]
        assert [job.id for job in queues.queue("q").waiting] == expected, now
        assert queues.counts("q")["delayed"] == 40 - len(expected)
        assert queues.next_deadline() == (min(d for d in delays if d > now)
                                          if len(expected) < 40 else None)
