"""``WorkerLost`` says why: the job's worker was lost once too often, and its error names how the
last loss happened (the lease ran out, or the connection dropped). A release is a worker handing
the job back on purpose: it is not a loss, whatever the number of releases.

The state machine first, then a real broker with raw subscribers that drop, stay silent or
release.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from lifecycle_support import RawWorker
from queue_state import raw

from conveyor.broker import Broker
from conveyor.broker.testing import Queues
from conveyor.client import Client, JobFailed
from conveyor.protocol import Ack, JobState, Release

MakeBroker = Callable[..., Awaitable[Broker]]


# The state machine.


def test_a_job_lost_with_a_dropped_connection_says_so() -> None:
    queues = Queues(max_redeliveries=1)
    queues.add("q", [raw("x")], 0.0)
    for n in range(2):
        queues.subscribe(f"w{n}", "q", 1)
        queues.dispatch(float(n))
        queues.drop(f"w{n}", float(n))
    job = queues.jobs[1]
    assert job.state is JobState.FAILED and job.error is not None
    assert job.error.type == "WorkerLost"
    assert job.error.message == ("lost with its worker 2 times, more than the 1 redeliveries "
                                 "allowed; the last time, the worker's connection dropped")


def test_a_job_lost_with_a_silent_worker_says_its_lease_ran_out() -> None:
    queues = Queues(max_redeliveries=0)
    queues.subscribe("w", "q", 1, lease=10.0)
    queues.add("q", [raw("x")], 0.0)
    queues.dispatch(0.0)
    queues.tick(10.0)
    job = queues.jobs[1]
    assert job.state is JobState.FAILED and job.error is not None
    assert job.error.message.endswith(
        "the last time, the worker's lease of 10 s ran out (it was not heard from for that long)")


def test_releases_are_not_losses() -> None:
    queues = Queues(max_redeliveries=1)
    queues.subscribe("w", "q", 1)
    queues.add("q", [raw("x")], 0.0)
    job = queues.jobs[1]
    for _ in range(10):
        queues.dispatch(0.0)
        assert queues.release("w", 1, job.lease, 0.0) is job
    assert job.state is JobState.WAITING and job.drops == 0 and job.error is None


# A real broker.


async def failure(client: Client, job_id: int) -> str:
    """The message of the job's ``WorkerLost`` error, once it failed."""
    with pytest.raises(JobFailed) as failed:
        await client.wait(job_id, timeout=15)
    assert failed.value.error_type == "WorkerLost"
    return failed.value.error_message


async def test_a_job_whose_workers_keep_dropping_fails_saying_the_connection_dropped(
        make_broker: MakeBroker) -> None:
    broker = await make_broker(max_redeliveries=1)
    url = f"127.0.0.1:{broker.port}"
    async with Client(url) as client:
        job_id = await client.add("drops", "x")
        for _ in range(2):
            worker = await RawWorker.open(url, "drops")
            assert (await worker.delivery()).job == job_id
            await worker.connection.close()
        message = await failure(client, job_id)
    assert message.endswith("the last time, the worker's connection dropped"), message
    assert "2 times" in message


async def test_a_job_whose_worker_goes_silent_fails_saying_its_lease_ran_out(
        make_broker: MakeBroker) -> None:
    broker = await make_broker(max_redeliveries=0)
    url = f"127.0.0.1:{broker.port}"
    worker = await RawWorker.open(url, "silent", lease=1.0)
    try:
        async with Client(url) as client:
            job_id = await client.add("silent", "x")
            assert (await worker.delivery()).job == job_id
            message = await failure(client, job_id)
    finally:
        await worker.connection.close()
    assert message.endswith("the last time, the worker's lease of 1 s ran out (it was not heard "
                            "from for that long)"), message


async def test_a_job_handed_back_many_times_is_not_lost(make_broker: MakeBroker) -> None:
    broker = await make_broker(max_redeliveries=1)
    url = f"127.0.0.1:{broker.port}"
    worker = await RawWorker.open(url, "handed")
    try:
        async with Client(url) as client:
            job_id = await client.add("handed", "x")
            for _ in range(5):
                delivery = await worker.delivery()
                worker.connection.send(Release(job=job_id, lease=delivery.lease))
            delivery = await worker.delivery()
            assert delivery.attempt == 1  # every release gave the try back
            worker.connection.send(Ack(job=job_id, lease=delivery.lease, result=raw("done")))
            assert await client.wait(job_id, timeout=15) == "done"
    finally:
        await worker.connection.close()
