"""A real broker whose wall clock steps an hour forward or back (``SteppedClock``: the system's
clocks, the wall one set off by the test) while workers hold jobs and jobs wait for their time.

A forward step must not take jobs from healthy workers nor run them twice; a backward step must
not stretch leases (a silent worker still loses its job after its lease) nor delays (a job due in
half a second still runs in about half a second).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from lifecycle_support import RawWorker, running
from processes import eventually, wait_for_workers

from conveyor.broker import Broker
from conveyor.broker.testing import SteppedClock
from conveyor.client import Client
from conveyor.worker import Job, Worker

HOUR = 3600.0
LEASE = 1.5
"""Seconds: the lease of a silent subscriber."""


async def tick_passes(client: Client) -> None:
    """Return once the broker's timer has fired after now: a job delayed by a little while has
    been run by the worker on the ``marks`` queue."""
    job_id = await client.add("marks", "tick", delay=0.2)
    # Generous: a timer armed on the wall clock fires late after a step (then the test fails
    # on what it checks, not here).
    await client.wait(job_id, timeout=45)


async def mark(job: Job) -> str:
    return str(job.data)


async def test_a_forward_step_takes_no_job_from_a_healthy_worker(
        make_broker: Callable[..., Awaitable[Broker]]) -> None:
    clock = SteppedClock()
    broker = await make_broker(clock=clock)
    url = f"127.0.0.1:{broker.port}"
    tries: list[tuple[str, int]] = []
    release = asyncio.Event()

    def handler(name: str):  # type: ignore[no-untyped-def]
        async def run(job: Job) -> str:
            tries.append((name, job.attempt))
            await release.wait()
            return name
        return run

    # The default lease of 30 s: the workers speak up every 10 s, not during the test.
    workers = [Worker("long", handler(name), url=url) for name in ("a", "b")]
    async with Client(url) as client, running(*workers, Worker("marks", mark, url=url)):
        await wait_for_workers(broker, "long", 2)
        job_id = await client.add("long", "x")
        await eventually(lambda: tries, what="the job started")
        clock.step(HOUR)
        # The timer fires, an hour past the lease as the wall clock reads it.
        await tick_passes(client)
        # The timer has fired: had it taken the job back, the job would count a drop and be
        # waiting for (or on its way to) the other worker.
        assert broker.queues.jobs[job_id].drops == 0, "the job was taken back"
        assert len(tries) == 1, f"the job ran again: {tries}"
        info = await client.get_job(job_id)
        assert info is not None and info.state.value == "active" and info.attempt == 1
        release.set()
        result = await client.wait(job_id, timeout=15)
    assert tries == [(result, 1)]


async def test_a_backward_step_does_not_stretch_the_lease_of_a_silent_worker(
        make_broker: Callable[..., Awaitable[Broker]]) -> None:
    clock = SteppedClock()
    broker = await make_broker(clock=clock)
    url = f"127.0.0.1:{broker.port}"
    silent = await RawWorker.open(url, "q", lease=LEASE)
    try:
        async with Client(url) as client:
            job_id = await client.add("q", "x")
            delivery = await silent.delivery()
            assert delivery.job == job_id
            clock.step(-HOUR)
            taken = time.monotonic()
            async with running(Worker("q", mark, url=url)):
                assert await client.wait(job_id, timeout=15) == "x"
            # Without the step the job comes back after LEASE seconds; give a loaded machine
            # a margin, far below the hour a stretched lease would take.
            assert time.monotonic() - taken < LEASE + 10
    finally:
        await silent.connection.close()


@pytest.mark.parametrize("step", [HOUR, -HOUR])
async def test_a_delayed_job_runs_after_its_delay_whatever_the_wall_clock_does(
        make_broker: Callable[..., Awaitable[Broker]], step: float) -> None:
    clock = SteppedClock()
    broker = await make_broker(clock=clock)
    url = f"127.0.0.1:{broker.port}"
    async with Client(url) as client, running(Worker("later", mark, url=url),
                                              Worker("marks", mark, url=url)):
        soon = await client.add("later", "soon", delay=0.5)
        late = await client.add("later", "late", delay=HOUR / 2)
        added = time.monotonic()
        clock.step(step)
        assert await client.wait(soon, timeout=15) == "soon"
        assert 0.4 < time.monotonic() - added < 10
        await tick_passes(client)
        info = await client.get_job(late)
        assert info is not None and info.state.value == "delayed"
