"""A request the broker cannot apply never strands a job nor drops a connection.

Through a real broker: a worker fails a job with an exponential backoff more than 1,024 times
(``2.0 ** 1024`` overflows a float: the 1,025th ``fail`` used to raise inside the read loop,
leaving the job active with no holder and dropping the worker's connection); and a request that
fails for an unexpected reason is answered ``INTERNAL``, changes nothing, is logged once, and the
connection goes on.
"""

from __future__ import annotations

import logging

import pytest
from lifecycle_support import RawWorker, running
from processes import eventually, wait_for_workers
from queue_state import BrokenRandom

from conveyor.broker import Broker
from conveyor.client import (
    Client,
    JobError,
    JobFailed,
    JobState,
    RequestRefused,
    exponential,
)
from conveyor.protocol import ErrorCode, Fail
from conveyor.worker import Job, Worker

TRIES = 1030


async def test_a_worker_fails_a_job_past_1024_tries(broker: Broker, url: str) -> None:
    tries: list[int] = []

    async def always_fails(job: Job) -> None:
        tries.append(job.attempt)
        raise RuntimeError(f"try {job.attempt}")

    async with Client(url) as client, running(Worker("many", always_fails, url=url)):
        await wait_for_workers(broker, "many", 1)
        sessions = set(broker.sessions)
        job_id = await client.add("many", "x", attempts=TRIES, backoff=exponential(0.0))
        with pytest.raises(JobFailed) as failed:
            await client.wait(job_id, timeout=20)
        # The worker kept its one connection all along.
        assert set(broker.sessions) == sessions
        counts = await client.counts("many")
    assert tries == list(range(1, TRIES + 1))
    assert failed.value.job.attempt == TRIES and failed.value.error_message == f"try {TRIES}"
    assert (counts["active"], counts["waiting"], counts["failed"]) == (0, 0, 1)


async def test_an_unexpected_error_answers_internal_and_the_connection_goes_on(
        broker: Broker, url: str, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    worker = await RawWorker.open(url, "bug")
    try:
        async with Client(url) as client:
            job_id = await client.add("bug", "x", attempts=2,
                                      backoff=exponential(5.0, jitter=0.5))
            delivery = await worker.delivery()

            def broken(queue: str, state: JobState, offset: int, limit: int) -> object:
                raise ZeroDivisionError("a bug")

            # A request (its reply carries its ``req``) and a notification (a jittered backoff
            # draws a random number), each failing in the middle.
            monkeypatch.setattr(broker.queues, "list_jobs", broken)
            monkeypatch.setattr(broker.queues, "rng", BrokenRandom())
            with caplog.at_level(logging.ERROR, logger="broker"):
                with pytest.raises(RequestRefused) as refused:
                    await client.get_jobs("bug", "active")
                worker.connection.send(Fail(job=job_id, lease=delivery.lease,
                                 error=JobError(type="E", message="m")))
                await eventually(lambda: len(caplog.records) >= 2, what="both failures logged")
            assert refused.value.code == ErrorCode.INTERNAL
            assert [record.exc_info is not None for record in caplog.records] == [True, True]
            # Nothing changed: the job is still the worker's, under the same lease.
            info = await client.get_job(job_id)
            assert info is not None and info.state is JobState.ACTIVE and info.attempt == 1
            assert (await client.counts("bug"))["active"] == 1
            # Both connections go on; once the bug is gone the same fail goes through.
            monkeypatch.undo()
            assert [queue.name for queue in await client.queues()] == ["bug"]
            worker.connection.send(Fail(job=job_id, lease=delivery.lease,
                             error=JobError(type="E", message="m")))
            await eventually(lambda: broker.queues.counts("bug")["delayed"] == 1,
                             what="the job waits for its retry")
    finally:
        await worker.connection.close()
