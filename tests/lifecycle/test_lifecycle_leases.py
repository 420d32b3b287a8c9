"""Leases and timeouts.

Every delivery is a lease: a subscriber that stays connected but goes silent for a whole lease
loses its jobs to other workers, and an ack it sends later is rejected. The worker library
speaks up every third of a lease while it runs jobs, so a long job on a live worker is never
taken away. A try that runs over the job's ``timeout`` is cancelled by the worker and counts as
a failed try.

The state machine is checked with a fake clock; then real worker processes are frozen with
SIGSTOP.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import pytest
from lifecycle_handlers import starts
from lifecycle_support import StartWorker, running
from processes import eventually, wait_for_workers
from queue_state import raw, state

from conveyor.broker import Broker
from conveyor.broker.testing import Job, Queues
from conveyor.client import Client, JobFailed, JobState
from conveyor.worker import Job as WorkerJob
from conveyor.worker import Worker

LEASE = 1.0
"""Seconds: the short lease the worker processes here run with."""


def held(queues: Queues, owner: str) -> list[Job]:
    consumer = queues.consumer(owner, "q")
    assert consumer is not None
    return list(consumer.held.values())


# The state machine, with a fake clock.


def test_a_silent_subscriber_loses_its_jobs_when_its_lease_runs_out() -> None:
    queues = Queues()
    queues.subscribe("a", "q", 1, lease=10.0)
    queues.subscribe("b", "q", 1, lease=10.0)
    queues.add("q", [raw(1), raw(2)], 0.0)
    queues.dispatch(0.0)
    (lost,) = held(queues, "a")
    (kept,) = held(queues, "b")
    old_lease = lost.lease
    queues.extend("b", "q", 5.0)  # b speaks up; a says nothing
    assert queues.next_deadline() == 10.0
    queues.tick(9.99)
    assert lost.state is JobState.ACTIVE
    queues.tick(10.0)
    # a's job is waiting again at the head, its try given back; b keeps its own.
    assert state(lost) is JobState.WAITING and lost.attempt == 0 and lost.drops == 1
    assert [job.id for job in queues.queue("q").waiting] == [lost.id]
    assert held(queues, "a") == [] and held(queues, "b") == [kept]
    # The silent subscriber gets nothing more; the job goes to the next free slot elsewhere.
    assert queues.dispatch(10.0) == []
    queues.ack("b", kept.id, kept.lease, raw("done"), 11.0)
    ((consumer, [again]),) = queues.dispatch(11.0)
    assert consumer.owner == "b" and again is lost and lost.attempt == 1
    # a's late ack is rejected and changes nothing.
    assert queues.ack("a", lost.id, old_lease, raw("late"), 12.0) is None
    assert lost.state is JobState.ACTIVE and lost.holder is consumer
    # Once a is heard from it takes jobs again.
    queues.extend("a", "q", 12.0)
    queues.add("q", [raw(3)], 12.0)
    ((consumer, [job]),) = queues.dispatch(12.0)
    assert consumer.owner == "a" and job.data == raw(3)


def test_speaking_up_keeps_a_lease_for_as_long_as_it_takes() -> None:
    queues = Queues()
    queues.subscribe("a", "q", 2, lease=3.0)
    queues.subscribe("b", "q", 2, lease=3.0)
    queues.add("q", [raw(1)], 0.0)
    queues.dispatch(0.0)
    (job,) = held(queues, "a")
    for second in range(1, 100):
        if second % 2 == 0:
            queues.extend("a", "q", float(second))
        else:
            # Progress reports count as speaking up, too.
            assert queues.progress("a", job.id, job.lease, raw(second), float(second))
        queues.tick(float(second))
        assert job.state is JobState.ACTIVE and job.holder is not None
        assert job.holder.owner == "a" and job.attempt == 1
    assert queues.ack("a", job.id, job.lease, raw("ok"), 100.0) is job


def test_a_lease_starts_when_an_idle_subscriber_gets_a_job() -> None:
    queues = Queues()
    queues.subscribe("a", "q", 1, lease=5.0)
    assert queues.next_deadline() is None  # nothing held: no lease runs
    queues.add("q", [raw(1)], 100.0)
    queues.dispatch(100.0)
    (job,) = held(queues, "a")
    assert queues.next_deadline() == 105.0
    queues.tick(104.9)
    assert job.state is JobState.ACTIVE
    queues.tick(105.0)
    assert state(job) is JobState.WAITING


# Real worker processes.


async def test_a_frozen_worker_loses_its_job_to_another_after_the_lease(
    broker: Broker, url: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    queue = "frozen"
    workers = [start_worker("lifecycle_handlers:hold", queue=queue, url=url, lease=LEASE)
               for _ in range(2)]
    await wait_for_workers(broker, queue, 2, *workers)
    marks = tmp_path / "starts"
    marks.mkdir()
    async with Client(url) as client:
        job_id = await client.add(queue, {"seconds": 2.5, "dir": str(marks)})
        [(_, attempt, first_pid, _)] = await eventually(lambda: starts(marks),
                                                        what="the first try started")
        victim = next(worker for worker in workers if worker.pid == first_pid)
        victim.signal(signal.SIGSTOP)
        stopped = time.time()
        # Its last heartbeat was at most a third of a lease ago: the lease runs out between
        # 2/3 of a lease and one lease after the stop.
        second = await eventually(lambda: starts(marks)[1:], timeout=10,
                                  what="the job was redelivered")
        [(_, again, second_pid, restarted)] = second
        assert second_pid != first_pid
        assert LEASE * 0.5 <= restarted - stopped <= LEASE + 2.0, restarted - stopped
        # The lost try was given back: the redelivery is try 1 again.
        assert attempt == again == 1
        # The frozen worker wakes up, finishes its copy and acks under the lease it lost.
        victim.signal(signal.SIGCONT)
        result = await client.wait(job_id, timeout=10)
        await asyncio.sleep(0.2)
        info = await client.get_job(job_id)
        counts = await client.counts(queue)
        # Heard from again, the woken worker takes jobs again: two jobs go to two workers.
        more = await client.add_bulk(queue, [{"seconds": 0.5, "dir": str(marks)}] * 2)
        pids = {(await client.wait(job, timeout=10))["pid"] for job in more}
        assert pids == {first_pid, second_pid}
    assert result["pid"] == second_pid
    assert info is not None and info.state is JobState.COMPLETED
    assert info.result["pid"] == second_pid, "the late ack of the lost lease was accepted"
    assert (counts["completed"], counts["failed"], counts["active"]) == (1, 0, 0)


@pytest.mark.parametrize("handler", ["lifecycle_handlers:hold", "lifecycle_handlers:hold_sync"])
async def test_a_job_longer_than_the_lease_on_a_live_worker_is_never_redelivered(
    broker: Broker, url: str, start_worker: StartWorker, tmp_path: Path, handler: str
) -> None:
    queue = "long"
    workers = [start_worker(handler, queue=queue, url=url, lease=LEASE) for _ in range(2)]
    await wait_for_workers(broker, queue, 2, *workers)
    marks = tmp_path / "starts"
    marks.mkdir()
    async with Client(url) as client:
        job_id = await client.add(queue, {"seconds": 3 * LEASE, "dir": str(marks)})
        result = await client.wait(job_id, timeout=20)
        counts = await client.counts(queue)
    [(job, attempt, pid, _)] = starts(marks)
    assert (job, attempt, pid) == (job_id, 1, result["pid"])
    assert result["attempt"] == 1
    assert (counts["completed"], counts["failed"], counts["waiting"]) == (1, 0, 0)


async def test_a_try_over_its_timeout_is_cancelled_and_retried(url: str) -> None:
    tries: list[tuple[int, int, float | None]] = []
    cancelled: list[int] = []

    async def slow(job: WorkerJob) -> None:
        tries.append((job.attempt, job.attempts, job.timeout))
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(job.attempt)
            raise

    async with Client(url) as client, running(Worker("slow", slow, url=url)):
        began = time.monotonic()
        job_id = await client.add("slow", "x", attempts=2, timeout=0.3)
        with pytest.raises(JobFailed) as failed:
            await client.wait(job_id, timeout=15)
        elapsed = time.monotonic() - began
    assert tries == [(1, 2, 0.3), (2, 2, 0.3)]
    assert cancelled == [1, 2]
    assert 0.6 <= elapsed < 5.0
    error = failed.value
    assert error.error_type == "TimeoutError"
    assert "timeout of 0.3 s" in error.error_message and str(job_id) in error.error_message
    assert error.job.attempt == 2 and error.job.state is JobState.FAILED


async def test_a_plain_handlers_timeout_counts_from_when_a_thread_runs_it(url: str) -> None:
    """A plain handler over its timeout fails its try on time, while its thread runs on (Python
    cannot stop it). The next job, delivered to the freed slot, waits for that thread: its own
    timeout starts when it runs, so it is not failed for a time it spent waiting."""
    ran: list[str] = []
    release = threading.Event()

    def blocking(job: WorkerJob) -> str:
        ran.append(job.data)
        if job.data == "slow":
            release.wait(30)  # until the test lets it go: far over its timeout
        return str(job.data)

    async with Client(url) as client, running(Worker("threads", blocking, url=url, grace=2)):
        slow = await client.add("threads", "slow", timeout=0.3)
        quick = await client.add("threads", "quick", timeout=0.3)
        with pytest.raises(JobFailed, match="timeout of 0.3 s"):
            await client.wait(slow, timeout=10)
        assert not release.is_set()  # failed on time, not when the thread returned
        # The quick job is delivered to the freed slot and waits for the thread, over its own
        # timeout, before it runs.
        await eventually(lambda: _state(client, quick, JobState.ACTIVE), what="quick delivered")
        await asyncio.sleep(0.5)
        assert ran == ["slow"]
        release.set()
        assert await client.wait(quick, timeout=10) == "quick"
    assert ran == ["slow", "quick"]


async def _state(client: Client, job_id: int, state: JobState) -> bool:
    info = await client.get_job(job_id)
    return info is not None and info.state is state


async def test_a_try_within_its_timeout_completes(url: str) -> None:
    async def quick(job: WorkerJob) -> str:
        await asyncio.sleep(0.05)
        return "done"

    async with Client(url) as client, running(Worker("quick", quick, url=url)):
        job_id = await client.add("quick", "x", timeout=2.0)
        assert await client.wait(job_id, timeout=10) == "done"
