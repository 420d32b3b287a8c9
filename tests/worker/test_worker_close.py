"""``Worker.close()`` returns once the worker has stopped: before ``run()``, during it, twice,
and from inside one of the worker's own jobs."""

from __future__ import annotations

import asyncio

from processes import eventually
from worker_support import subscribers

from conveyor.broker import Broker
from conveyor.client import Client, JobState
from conveyor.worker import Job, Worker, WorkerStatus


async def test_close_returns_once_running_jobs_finished_and_run_returned(
        broker: Broker, url: str) -> None:
    gate = asyncio.Event()
    started = asyncio.Event()

    async def held(job: Job) -> str:
        started.set()
        await gate.wait()
        return "finished"

    worker = Worker("close", held, url=url, grace=30)
    run = asyncio.create_task(worker.run())
    async with Client(url) as client:
        job_id = await client.add("close", None)
        await asyncio.wait_for(started.wait(), 10)
        closing = asyncio.create_task(worker.close())
        await eventually(lambda: broker.queues.counts("close")["workers"] == 1
                         and worker.status is WorkerStatus.CLOSING, "the shutdown began")
        # The shutdown waits for the running job, and close() for the shutdown.
        assert not closing.done() and not run.done()
        gate.set()
        await asyncio.wait_for(closing, 10)
        assert run.done() and worker.status is WorkerStatus.CLOSED
        await run
        assert subscribers(broker, "close") == 0
        assert await client.wait(job_id, timeout=5) == "finished"
    await worker.close()  # again: returns at once


async def test_close_before_run_makes_run_return_at_once(broker: Broker, url: str) -> None:
    async def never(job: Job) -> None:
        raise AssertionError("no job should run")

    worker = Worker("unused", never, url=url)
    await asyncio.wait_for(worker.close(), 5)
    await asyncio.wait_for(worker.close(), 5)
    assert worker.status is WorkerStatus.CLOSED
    await asyncio.wait_for(worker.run(), 5)
    assert worker.status is WorkerStatus.CLOSED
    assert subscribers(broker, "unused") == 0


async def test_close_from_a_handler_starts_the_shutdown_and_the_job_completes(
        url: str) -> None:
    worker: Worker

    async def closes(job: Job) -> str:
        await worker.close()  # returns without waiting for the shutdown, which waits for us
        return "closed from inside"

    worker = Worker("inside", closes, url=url, grace=30)
    async with Client(url) as client:
        job_id = await client.add("inside", None)
        await asyncio.wait_for(worker.run(), 10)
        info = await client.get_job(job_id)
    assert worker.status is WorkerStatus.CLOSED
    assert info is not None and info.state is JobState.COMPLETED
    assert info.result == "closed from inside"
