"""Delivery through a real broker to real worker processes: spreading, concurrency, redelivery
after a crash, exactly-once processing, graceful shutdown, and results and failures reaching
``client.wait``.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import handlers
import pytest
from processes import WorkerProcess, eventually, running

from conveyor.broker import Broker
from conveyor.client import Client, JobFailed, JobState
from conveyor.worker import Job, Worker

StartWorker = Callable[..., WorkerProcess]
WaitFor = Callable[..., Awaitable[Any]]
"""The ``wait_for_workers``, ``wait_for_counts`` and ``wait_for_files`` fixtures."""

JOB_SECONDS = 1.0
"""How long the jobs that should run together sleep: each starts before any of them ends (how
close together they start is measured by ``bench/spread.py``)."""


@pytest.mark.parametrize("processes", [3, 8])
async def test_one_bulk_add_starts_a_job_on_every_idle_worker_process_at_once(
    broker: Broker, url: str, start_worker: StartWorker, wait_for_workers: WaitFor,
    processes: int
) -> None:
    queue = f"spread-{processes}"
    workers = start_worker("examples.tasks:sleep", queue=queue, url=url, processes=processes)
    await wait_for_workers(broker, queue, processes, workers)
    async with Client(url) as client:
        ids = await client.add_bulk(queue, [{"seconds": JOB_SECONDS}] * processes)
        results = await asyncio.gather(*(client.wait(job, timeout=30) for job in ids))
    starts = [result["started"] for result in results]
    assert len({result["pid"] for result in results}) == processes, results
    assert max(starts) - min(starts) < JOB_SECONDS, starts  # all ran at once


async def test_a_worker_with_concurrency_3_starts_3_jobs_at_once(
    broker: Broker, url: str, start_worker: StartWorker, wait_for_workers: WaitFor
) -> None:
    queue = "concurrent"
    worker = start_worker("examples.tasks:sleep", queue=queue, url=url, concurrency=3)
    await wait_for_workers(broker, queue, 1, worker)
    async with Client(url) as client:
        ids = await client.add_bulk(queue, [{"seconds": JOB_SECONDS}] * 3)
        results = await asyncio.gather(*(client.wait(job, timeout=30) for job in ids))
    starts = [result["started"] for result in results]
    assert {result["pid"] for result in results} == {worker.pid}
    assert max(starts) - min(starts) < JOB_SECONDS, starts  # all ran at once


@pytest.mark.parametrize(("windows", "expected"), [((4, 4), [2, 2]), ((4, 2), [3, 1])])
async def test_a_bulk_add_goes_to_the_workers_with_the_most_free_slots(
    broker: Broker, url: str, wait_for_workers: WaitFor,
    windows: tuple[int, int], expected: list[int]
) -> None:
    # Four jobs at once to two idle workers. Filling the first worker's window before the next
    # would give 4 and 0; spreading one by one, ignoring free slots, 2 and 2 in both cases.
    queue = "most-free"
    gate = asyncio.Event()
    held: dict[str, list[int]] = {"a": [], "b": []}

    def holder(name: str) -> Callable[[Job], Awaitable[None]]:
        async def hold(job: Job) -> None:
            held[name].append(job.id)
            await gate.wait()
        return hold

    workers = [Worker(queue, holder(name), url=url, concurrency=window, name=name)
               for name, window in zip(held, windows, strict=True)]
    tasks = [asyncio.create_task(worker.run()) for worker in workers]
    try:
        async with Client(url) as client:
            await wait_for_workers(broker, queue, 2)
            ids = await client.add_bulk(queue, range(4))
            # Dispatched as they were added: every job is already active.
            assert (await client.counts(queue))["active"] == 4
            await eventually(lambda: sum(map(len, held.values())) >= 4, "every job started",
                             timeout=10)
            assert [len(held["a"]), len(held["b"])] == expected, held
            gate.set()
            await asyncio.gather(*(client.wait(job_id, timeout=10) for job_id in ids))
    finally:
        for worker in workers:
            await worker.close()
        await asyncio.gather(*tasks)


async def test_a_job_whose_worker_is_killed_completes_on_another_worker(
    broker: Broker, url: str, start_worker: StartWorker, wait_for_workers: WaitFor,
    wait_for_files: WaitFor, tmp_path: Path
) -> None:
    queue = "crash"
    workers = [start_worker("handlers:hold", queue=queue, url=url) for _ in range(2)]
    await wait_for_workers(broker, queue, 2, *workers)
    starts = tmp_path / "starts"
    starts.mkdir()
    async with Client(url) as client:
        job = await client.add(queue, {"seconds": 1, "dir": str(starts)})
        [first] = await wait_for_files(starts, 1)
        victim = next(worker for worker in workers if worker.pid == int(first))
        survivor = next(worker for worker in workers if worker is not victim)
        os.kill(victim.pid, signal.SIGKILL)
        result = await client.wait(job, timeout=30)
        assert result["pid"] == survivor.pid
        assert await victim.wait(timeout=10) == -signal.SIGKILL
        counts = await client.counts(queue)
    assert (counts["completed"], counts["failed"], counts["active"]) == (1, 0, 0)


async def test_100k_jobs_are_each_processed_exactly_once_by_2_worker_processes(
    broker: Broker, url: str, start_worker: StartWorker, wait_for_workers: WaitFor,
    wait_for_counts: WaitFor, tmp_path: Path
) -> None:
    queue = "many"
    records = tmp_path / "records"
    records.mkdir()
    workers = start_worker("handlers:record", queue=queue, url=url, processes=2, concurrency=20,
                           env={handlers.RECORDS_ENV: str(records)})
    await wait_for_workers(broker, queue, 2, workers)
    async with Client(url) as client:
        ids = await client.add_bulk(queue, range(100_000))
        assert len(set(ids)) == 100_000
        counts = await wait_for_counts(client, queue, timeout=120, completed=100_000)
        assert (counts["waiting"], counts["active"], counts["failed"]) == (0, 0, 0)
        workers.signal(signal.SIGTERM)
        assert await workers.wait(timeout=30) == 0, workers.log
    runs = collections.Counter[int]()
    files = list(records.iterdir())
    for path in files:
        lines = path.read_text().split()
        assert lines, f"worker process {path.stem} processed no job"
        runs.update(int(line) for line in lines)
    assert len(files) == 2
    assert set(runs) == set(ids)
    assert [job for job, times in runs.items() if times != 1] == []


async def test_sigterm_lets_running_jobs_finish_and_exits_0(
    broker: Broker, url: str, start_worker: StartWorker, wait_for_workers: WaitFor,
    wait_for_files: WaitFor, wait_for_counts: WaitFor,
    tmp_path: Path,
) -> None:
    queue = "graceful"
    workers = start_worker("handlers:hold", queue=queue, url=url, processes=2, grace=10)
    await wait_for_workers(broker, queue, 2, workers)
    starts = tmp_path / "starts"
    starts.mkdir()
    async with Client(url) as client:
        # Two jobs run; the third waits for a free slot, which no worker offers once signalled.
        ids = await client.add_bulk(queue, [{"seconds": 1, "dir": str(starts)}] * 3)
        await wait_for_files(starts, 2)
        signalled = time.monotonic()
        workers.signal(signal.SIGTERM)
        assert await workers.wait(timeout=20) == 0, workers.log
        assert time.monotonic() - signalled < 10
        results = await asyncio.gather(*(client.wait(job, timeout=5) for job in ids[:2]))
        assert len({result["pid"] for result in results}) == 2
        counts = await wait_for_counts(client, queue, active=0)
        assert (counts["completed"], counts["waiting"], counts["failed"]) == (2, 1, 0)


@pytest.mark.parametrize("handler", ["handlers:hold", "handlers:hold_sync"])
async def test_sigterm_with_a_short_grace_hands_a_long_job_back(
    broker: Broker, url: str, start_worker: StartWorker, wait_for_workers: WaitFor,
    wait_for_files: WaitFor, wait_for_counts: WaitFor,
    tmp_path: Path, handler: str,
) -> None:
    # An async handler is cancelled; a plain one keeps its thread, which must not keep the
    # process alive past the grace period.
    queue = "released"
    worker = start_worker(handler, queue=queue, url=url, grace=0.5)
    await wait_for_workers(broker, queue, 1, worker)
    starts = tmp_path / "starts"
    starts.mkdir()
    async with Client(url) as client:
        job = await client.add(queue, {"seconds": 60, "dir": str(starts)})
        await wait_for_files(starts, 1)
        signalled = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert await worker.wait(timeout=20) == 0, worker.log
        assert time.monotonic() - signalled < 10
        counts = await wait_for_counts(client, queue, active=0)
        assert (counts["waiting"], counts["completed"], counts["failed"]) == (1, 0, 0)
        info = await client.get_job(job)
        assert info is not None and info.state is JobState.WAITING



async def test_many_concurrent_waits_each_get_their_own_result(url: str) -> None:
    queue = "echo"
    payloads = [{"n": n, "text": f"job {n}"} for n in range(500)]
    async with Client(url) as client:
        ids = await client.add_bulk(queue, payloads)
        # Every wait is pending before any job runs.
        waits = [asyncio.ensure_future(client.wait(job, timeout=30)) for job in ids]
        await asyncio.sleep(0.05)
        assert not any(wait.done() for wait in waits)
        async with running(Worker(queue, handlers.echo, url=url, concurrency=20)):
            assert await asyncio.gather(*waits) == payloads
            # A wait on a finished job returns at once.
            assert await asyncio.gather(*(client.wait(job, timeout=5) for job in ids)) == payloads


async def test_a_raising_handler_fails_the_wait_with_type_message_and_traceback(url: str) -> None:
    queue = "failing"
    async with Client(url) as client:
        job = await client.add(queue, {"order": 42})
        async with running(Worker(queue, handlers.explode, url=url)):
            with pytest.raises(JobFailed) as failed:
                await client.wait(job, timeout=30)
        counts = await client.counts(queue)
        info = await client.get_job(job)
    error = failed.value
    assert error.error_type == "ValueError"
    assert error.error_message == "cannot process {'order': 42}"
    assert "Traceback (most recent call last)" in error.traceback
    assert "in explode" in error.traceback
    assert "ValueError: cannot process {'order': 42}" in error.traceback
    assert "ValueError" in str(error) and str(job) in str(error)
    assert (counts["failed"], counts["completed"], counts["active"]) == (1, 0, 0)
    assert info is not None and info.state is JobState.FAILED
    assert info.error is not None and info.error.type == "ValueError"
