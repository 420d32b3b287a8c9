"""What the broker keeps stays bounded by what is live, whatever clients do: through a real broker.

- The deadline heap holds no entries for removed, drained, promoted or forgotten jobs beyond a
  constant factor of the live deadlines.
- Queues left unused are forgotten.
- A subscription's lease is at least a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import pytest
from lifecycle_support import running

from conveyor.broker import Broker
from conveyor.broker.testing import MIN_LEASE, Deadlines
from conveyor.client import Client, Connection, JobSpec, ProtocolViolation
from conveyor.protocol import ErrorCode, Subscribe
from conveyor.worker import Job, Worker

T = TypeVar("T")
MakeBroker = Callable[..., Awaitable[Broker]]

HOUR = 3600.0


async def in_batches(calls: Iterable[Awaitable[T]], size: int = 500) -> list[T]:
    """Await ``calls`` ``size`` at a time (each batch pipelined on the connection)."""
    pending = list(calls)
    results: list[T] = []
    for start in range(0, len(pending), size):
        results += await asyncio.gather(*pending[start:start + size])
    return results


def assert_bounded(deadlines: Deadlines) -> None:
    assert deadlines.entries <= 3 * len(deadlines) + 16, (deadlines.entries, len(deadlines))


async def test_jobs_that_leave_leave_no_deadline_behind(broker: Broker, url: str) -> None:
    deadlines = broker.queues.deadlines

    async def done(job: Job) -> str:
        return "done"

    async with Client(url) as client, running(Worker("kept", done, url=url)):
        for _ in range(4):
            # Removed one by one, promoted (then drained), and drained while delayed.
            ids = await client.add_bulk("later", [JobSpec(n, delay=HOUR) for n in range(3000)])
            await in_batches(client.remove(job_id) for job_id in ids[:1000])
            await in_batches(client.promote(job_id) for job_id in ids[1000:2000])
            assert_bounded(deadlines)
            assert await client.drain("later") == 2000
            assert_bounded(deadlines)
            # Finished jobs with a keep_result of their own, forgotten by a clean.
            kept = await client.add_bulk("kept", [JobSpec(n, keep_result=HOUR)
                                                  for n in range(1000)])
            await in_batches(client.wait(job_id, timeout=30) for job_id in kept)
            assert await client.clean("kept", "completed") == 1000
            assert_bounded(deadlines)
        counts = await client.counts("later")
    assert (counts["waiting"], counts["delayed"]) == (0, 0)
    # What is left: at most the lease of the one subscription.
    assert len(deadlines) <= 1 and deadlines.entries <= 3 + 16


# Unused queues.

QUEUE_NAMES = 100_000


async def test_100k_queues_used_once_are_forgotten(broker: Broker, url: str) -> None:
    """Every request that names a queue may create it; one left with nothing in it is forgotten,
    so a client naming 100,000 queues does not leave 100,000 behind."""
    async with Client(url) as client:
        await client.add("kept", "a job")  # a queue in use
        await client.pause("paused")  # and one that is paused
        # Created and left unused at once (a resume creates the queue it names).
        await in_batches((client.resume(f"q{n}") for n in range(QUEUE_NAMES)), size=2000)
        # Used, then emptied: a job added then removed, and a queue drained.
        for n in range(100):
            await client.remove(await client.add(f"r{n}", n))
        await client.add_bulk("drained", list(range(100)))
        await client.drain("drained")
        names = {queue.name for queue in await client.queues()}
        assert len(broker.queues.queues) <= 2 * 2 + 1024 + 2
        assert {"kept", "paused"} <= names and len(names) <= 1024 + 2
        # A forgotten queue reads as one that never existed, and comes back when used.
        assert await client.counts("q7") == {"waiting": 0, "active": 0, "delayed": 0,
                                              "completed": 0, "failed": 0, "workers": 0,
                                              "waiting-children": 0}
        await client.add("q7", "again")
        assert (await client.counts("q7"))["waiting"] == 1
        assert (await client.counts("kept"))["waiting"] == 1


# Leases.


@pytest.mark.parametrize("lease", [0.001, 0.999])
async def test_a_subscription_with_a_lease_under_a_second_is_refused(
        broker: Broker, url: str, lease: float) -> None:
    connection = await Connection.open(url)
    try:
        with pytest.raises(ProtocolViolation) as refused:
            await connection.request(lambda req: Subscribe(req=req, queue="short", window=1,
                                                           lease=lease))
        assert refused.value.code == ErrorCode.INVALID_FIELD
        assert "$.lease" in str(refused.value) and f"{MIN_LEASE:g} s" in str(refused.value)
        assert broker.queues.counts("short")["workers"] == 0
        # The connection goes on, and a lease of exactly the minimum is taken.
        await connection.request(lambda req: Subscribe(req=req, queue="short", window=1,
                                                       lease=MIN_LEASE))
        assert broker.queues.counts("short")["workers"] == 1
    finally:
        await connection.close()
