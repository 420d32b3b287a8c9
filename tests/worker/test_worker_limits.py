"""What a worker sends fits in the broker's frames: a result or progress value too large fails
only its own job (no retry), a huge error text is shortened, and other jobs on the same
connection go on as if nothing happened."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from processes import eventually, running

from conveyor.broker import Broker
from conveyor.client import Client, JobFailed, JobState
from conveyor.worker import Job, ResultTooLarge, Worker

MAX_FRAME = 64 * 1024
BIG = 100_000
"""Characters of a value over ``MAX_FRAME`` once encoded."""

MakeBroker = Callable[..., Awaitable[Broker]]


class Jobs:
    """A handler whose jobs do what their payload says, while a ``hold`` job waits for
    ``release()``; counts the tries of each job."""

    def __init__(self) -> None:
        self.tries: dict[int, int] = {}
        self.progress_errors: list[str] = []
        self._gate = asyncio.Event()

    def release(self) -> None:
        self._gate.set()

    async def __call__(self, job: Job) -> Any:
        self.tries[job.id] = self.tries.get(job.id, 0) + 1
        match job.data:
            case "hold":
                await self._gate.wait()
                return "held"
            case "big result":
                return "x" * BIG
            case "big progress":
                try:
                    await job.progress("p" * BIG)
                except ResultTooLarge as exc:
                    self.progress_errors.append(str(exc))
                await job.progress(50)
                return "progressed"
            case "big error":
                raise ValueError("e" * BIG)
        raise AssertionError(f"unexpected payload {job.data!r}")


async def started(jobs: Jobs, job_id: int) -> None:
    await eventually(lambda: job_id in jobs.tries, f"job {job_id} started")


async def test_a_result_over_the_frame_limit_fails_only_its_job(make_broker: MakeBroker) -> None:
    broker = await make_broker(max_frame=MAX_FRAME)
    url = f"127.0.0.1:{broker.port}"
    jobs = Jobs()
    async with Client(url) as client, running(Worker("big", jobs, url=url, concurrency=2)):
        held = await client.add("big", "hold", attempts=3)
        await started(jobs, held)
        big = await client.add("big", "big result", attempts=3)
        with pytest.raises(JobFailed) as failed:
            await client.wait(big, timeout=10)
        # The job held all along finishes on the same connection, in its first try.
        jobs.release()
        assert await client.wait(held, timeout=10) == "held"
    error = failed.value
    assert error.error_type == "ResultTooLarge"
    encoded = BIG + 5  # a MessagePack str of BIG bytes has a 5-byte header
    assert error.error_message == (f"result of job {big} is {encoded:,} bytes encoded; the "
                                   f"broker's frame limit is {MAX_FRAME:,} bytes")
    assert error.job.attempt == 1 and error.job.state is JobState.FAILED  # not retried
    assert jobs.tries == {held: 1, big: 1}


async def test_a_progress_value_over_the_frame_limit_raises_in_the_handler(
        make_broker: MakeBroker) -> None:
    broker = await make_broker(max_frame=MAX_FRAME)
    url = f"127.0.0.1:{broker.port}"
    jobs = Jobs()
    async with Client(url) as client, running(Worker("progress", jobs, url=url, concurrency=2)):
        held = await client.add("progress", "hold")
        await started(jobs, held)
        job_id = await client.add("progress", "big progress")
        assert await client.wait(job_id, timeout=10) == "progressed"
        info = await client.get_job(job_id)
        jobs.release()
        assert await client.wait(held, timeout=10) == "held"
    assert info is not None and info.progress == 50
    assert jobs.progress_errors == [
        f"progress value of job {job_id} is {BIG + 5:,} bytes encoded; the broker's frame limit "
        f"is {MAX_FRAME:,} bytes"]
    assert jobs.tries == {held: 1, job_id: 1}


async def test_an_error_text_over_the_frame_limit_is_shortened(make_broker: MakeBroker) -> None:
    broker = await make_broker(max_frame=MAX_FRAME)
    url = f"127.0.0.1:{broker.port}"
    jobs = Jobs()
    async with Client(url) as client, running(Worker("errors", jobs, url=url, concurrency=2)):
        held = await client.add("errors", "hold")
        await started(jobs, held)
        job_id = await client.add("errors", "big error", attempts=2)
        with pytest.raises(JobFailed) as failed:
            await client.wait(job_id, timeout=10)
        jobs.release()
        assert await client.wait(held, timeout=10) == "held"
    error = failed.value
    assert error.error_type == "ValueError"
    assert error.error_message.startswith("eeee") and error.error_message.endswith(" bytes cut]")
    assert error.traceback.startswith("Traceback (most recent call last):")
    assert "ValueError: eee" in error.traceback and " bytes cut] eee" in error.traceback
    assert len(error.error_message.encode()) + len(error.traceback.encode()) < MAX_FRAME
    # The failure counted as a try, and the retry it asked for happened.
    assert error.job.attempt == 2
    assert jobs.tries == {held: 1, job_id: 2}
