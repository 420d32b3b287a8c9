"""Queue control through the client against a real broker: pause and resume, listing jobs in each
state, remove, retry of failed jobs, drain, clean, idempotency keys (also across a restart), and
retention (a job's own ``keep_result``, the broker's ``keep_age``).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from lifecycle_support import running
from processes import eventually, wait_for_workers

from conveyor.broker import Broker
from conveyor.client import Client, InvalidState, JobSpec, JobState, UnknownJob
from conveyor.worker import Job, Worker

MakeBroker = Callable[..., Awaitable[Broker]]


class Handler:
    """Runs jobs by payload: ``{"fail": True}`` raises (while ``broken``), ``{"block": True}``
    waits until ``unblock()``; anything else is returned. Notes every job it starts."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.broken = True
        self._gate = asyncio.Event()

    def unblock(self) -> None:
        self._gate.set()

    async def __call__(self, job: Job) -> Any:
        self.started.append(job.id)
        data = job.data
        if isinstance(data, dict):
            if data.get("fail") and self.broken:
                raise ValueError(f"job {job.id} failed")
            if data.get("block"):
                await self._gate.wait()
        return data


async def counts_of(client: Client, queue: str) -> tuple[int, ...]:
    """(waiting, active, delayed, completed, failed)."""
    c = await client.counts(queue)
    return (c["waiting"], c["active"], c["delayed"], c["completed"], c["failed"])


async def settle(client: Client, queue: str, **expected: int) -> None:
    async def reached() -> bool:
        counts = await client.counts(queue)
        return all(counts[key] == value for key, value in expected.items())

    await eventually(reached, timeout=15, what=f"counts of {queue!r} reach {expected}")


# Pause.
#
# Once a worker is subscribed to a queue, a job the broker may deliver is delivered in the loop
# pass that made it waiting, before any later reply: the tests wait for that first.


async def test_a_paused_queue_takes_jobs_but_delivers_none_until_resumed(url: str) -> None:
    handler = Handler()
    async with Client(url) as client:
        await client.pause("p")
        async with running(Worker("p", handler, url=url, concurrency=5)):
            await wait_for_workers(client, "p", 1, timeout=15)
            ids = await client.add_bulk("p", range(5))
            # Not paused, the jobs would be active by now (dispatched as they were added).
            assert await counts_of(client, "p") == (5, 0, 0, 0, 0)
            assert handler.started == []
            await client.pause("p")  # pausing twice is harmless
            await client.resume("p")
            results = await asyncio.gather(*(client.wait(job_id, timeout=10) for job_id in ids))
    assert results == list(range(5))
    assert handler.started == ids


async def test_pausing_lets_running_jobs_finish_and_holds_back_the_rest(url: str) -> None:
    handler = Handler()
    async with Client(url) as client, running(Worker("hold", handler, url=url, concurrency=1)):
        first, *rest = await client.add_bulk("hold", [{"block": True}, 1, 2])
        await settle(client, "hold", active=1)
        await client.pause("hold")
        handler.unblock()
        await client.wait(first, timeout=10)
        # Not paused, the next job would be active by now (dispatched as the slot freed).
        assert await counts_of(client, "hold") == (2, 0, 0, 1, 0)
        assert handler.started == [first]
        await client.resume("hold")
        assert [await client.wait(job_id, timeout=10) for job_id in rest] == [1, 2]


# Listing.


async def test_get_jobs_lists_each_state_in_order_with_offset_and_limit(url: str) -> None:
    queue = "listing"
    handler = Handler()
    async with Client(url) as client:
        # Completed and failed, in a known order: one worker, one job at a time.
        finished = await client.add_bulk(queue, [1, {"fail": True}, 2, {"fail": True}, 3])
        async with running(Worker(queue, handler, url=url)):
            await settle(client, queue, completed=3, failed=2)
        # Two active (held by a worker that blocks on them), then a waiting line and delayed
        # jobs that nobody takes (the worker's window is full).
        blocker = Worker(queue, handler, url=url, concurrency=2, grace=0.1)
        async with running(blocker):
            active = await client.add_bulk(queue, [{"block": True, "n": n} for n in range(2)])
            await settle(client, queue, active=2)
            waiting = await client.add_bulk(queue, [
                JobSpec("w0"), JobSpec("w1", priority=5), JobSpec("w2"),
                JobSpec("w3", priority=5), JobSpec("w4", priority=1)])
            delayed = await client.add_bulk(queue, [
                JobSpec("d0", delay=300), JobSpec("d1", delay=100), JobSpec("d2", delay=200)])
            expected = {
                JobState.WAITING: [waiting[1], waiting[3], waiting[4], waiting[0], waiting[2]],
                JobState.DELAYED: [delayed[1], delayed[2], delayed[0]],
                JobState.ACTIVE: active,
                JobState.COMPLETED: [finished[4], finished[2], finished[0]],  # latest first
                JobState.FAILED: [finished[3], finished[1]],
            }
            for state, ids in expected.items():
                jobs = await client.get_jobs(queue, state)
                assert [job.id for job in jobs] == ids, state
                assert all(job.state is state and job.queue == queue for job in jobs)
                assert [job.id for job in await client.get_jobs(queue, state.value)] == ids
                pages = []
                for offset in range(0, len(ids), 2):
                    page = await client.get_jobs(queue, state, offset=offset, limit=2)
                    assert len(page) == min(2, len(ids) - offset)
                    pages += [job.id for job in page]
                assert pages == ids, state
                assert await client.get_jobs(queue, state, offset=len(ids)) == []
                assert await client.get_jobs(queue, state, limit=0) == []
            delayed_jobs = await client.get_jobs(queue, JobState.DELAYED)
            run_ats = [job.run_at for job in delayed_jobs]
            assert all(run_at is not None for run_at in run_ats)
            assert run_ats == sorted(run_ats)  # type: ignore[type-var]
            assert [job.priority for job in await client.get_jobs(queue, "waiting")] == \
                [5, 5, 1, 0, 0]
            handler.unblock()
        assert await client.get_jobs("no-such-queue", JobState.WAITING) == []


# Remove.


async def test_remove_takes_out_any_job_that_is_not_active(url: str) -> None:
    queue = "removal"
    handler = Handler()
    async with Client(url) as client:
        done, failed = await client.add_bulk(queue, [1, {"fail": True}])
        async with running(Worker(queue, handler, url=url)):
            await settle(client, queue, completed=1, failed=1)
        async with running(Worker(queue, handler, url=url, grace=0.1)):
            active = await client.add(queue, {"block": True})
            await settle(client, queue, active=1)
            waiting = await client.add(queue, "waiting")
            delayed = await client.add(queue, "delayed", delay=60)
            with pytest.raises(InvalidState, match="active"):
                await client.remove(active)
            with pytest.raises(UnknownJob):
                await client.remove(99_999)
            for job_id in (waiting, delayed, done, failed):
                await client.remove(job_id)
                assert await client.get_job(job_id) is None
                with pytest.raises(UnknownJob):
                    await client.remove(job_id)
            # Removed jobs leave the lines; the lifetime counters stay.
            assert await counts_of(client, queue) == (0, 1, 0, 1, 1)
            handler.unblock()
            await client.wait(active, timeout=10)


async def test_a_wait_on_a_job_removed_or_drained_before_it_ran_ends(url: str) -> None:
    async with Client(url) as client:
        removed, drained = await client.add_bulk("unrun", ["removed", "drained"])
        waits = [asyncio.ensure_future(client.wait(job_id, timeout=10))
                 for job_id in (removed, drained)]
        await asyncio.sleep(0.05)
        await client.remove(removed)
        assert await client.drain("unrun") == 1
        for wait in waits:
            with pytest.raises(UnknownJob, match="removed"):
                await wait


# Retrying failed jobs.


async def test_retry_failed_puts_a_queues_failed_jobs_back_with_fresh_attempts(url: str) -> None:
    queue = "retry-all"
    handler = Handler()
    async with Client(url) as client, running(Worker(queue, handler, url=url)):
        failing = await client.add_bulk(queue, [{"fail": True, "n": n} for n in range(3)],
                                        attempts=2)
        fine = await client.add(queue, "fine")
        await settle(client, queue, failed=3, completed=1)
        info = await client.get_job(failing[0])
        assert info is not None and info.attempt == 2
        handler.broken = False
        assert await client.retry_failed(queue) == 3
        for job_id in failing:
            assert (await client.wait(job_id, timeout=10))["fail"] is True
            info = await client.get_job(job_id)
            # Attempts start over: the retried job succeeded on its first new try.
            assert info is not None and info.state is JobState.COMPLETED and info.attempt == 1
            assert info.error is None
        assert await client.retry_failed(queue) == 0
        assert await client.retry_failed("nothing-here") == 0
        assert await counts_of(client, queue) == (0, 0, 0, 4, 3)
        info = await client.get_job(fine)
        assert info is not None and info.state is JobState.COMPLETED


async def test_retry_failed_of_one_job(url: str) -> None:
    queue = "retry-one"
    handler = Handler()
    async with Client(url) as client, running(Worker(queue, handler, url=url)):
        first, second = await client.add_bulk(queue, [{"fail": True}, {"fail": True}])
        done = await client.add(queue, "done")
        await settle(client, queue, failed=2, completed=1)
        handler.broken = False
        assert await client.retry_failed(job_id=second) == 1
        await client.wait(second, timeout=10)
        info = await client.get_job(first)
        assert info is not None and info.state is JobState.FAILED
        with pytest.raises(InvalidState, match="completed"):
            await client.retry_failed(job_id=done)
        with pytest.raises(UnknownJob):
            await client.retry_failed(job_id=99_999)
        with pytest.raises(ValueError):
            await client.retry_failed()
        with pytest.raises(ValueError):
            await client.retry_failed(queue, job_id=first)


# Drain and clean.


async def test_drain_removes_waiting_and_delayed_jobs_only(url: str) -> None:
    queue = "drained"
    handler = Handler()
    async with Client(url) as client:
        done = await client.add(queue, "done")
        async with running(Worker(queue, handler, url=url, grace=0.1)):
            await client.wait(done, timeout=10)
            active = await client.add(queue, {"block": True})
            await settle(client, queue, active=1)
            waiting = await client.add_bulk(queue, range(4))
            delayed = await client.add_bulk(queue, range(3), delay=60)
            assert await client.drain(queue) == 7
            assert await counts_of(client, queue) == (0, 1, 0, 1, 0)
            for job_id in waiting + delayed:
                assert await client.get_job(job_id) is None
            assert await client.drain(queue) == 0
            handler.unblock()
            await client.wait(active, timeout=10)
        assert await client.get_job(done) is not None
        assert await client.drain("never-used") == 0


async def test_clean_removes_finished_jobs_older_than_asked(url: str) -> None:
    queue = "cleaned"
    handler = Handler()
    async with Client(url) as client, running(Worker(queue, handler, url=url)):
        old = await client.add_bulk(queue, [1, 2, {"fail": True}])
        await settle(client, queue, completed=2, failed=1)
        await asyncio.sleep(0.5)
        new = await client.add_bulk(queue, [3, {"fail": True}])
        await settle(client, queue, completed=3, failed=2)
        assert await client.clean(queue, JobState.COMPLETED, older_than=0.3) == 2
        assert [job.id for job in await client.get_jobs(queue, "completed")] == [new[0]]
        assert await client.clean(queue, "failed", older_than=0.3) == 1
        assert [job.id for job in await client.get_jobs(queue, "failed")] == [new[1]]
        for job_id in old:
            assert await client.get_job(job_id) is None
        assert await client.clean(queue, "completed", older_than=60) == 0
        assert await client.clean(queue, "completed") == 1
        assert await client.clean(queue, "failed") == 1
        with pytest.raises(InvalidState):
            await client.clean(queue, JobState.WAITING)
        # The lifetime counters are not affected.
        assert await counts_of(client, queue) == (0, 0, 0, 3, 2)


# Idempotency keys.


async def test_adding_an_existing_key_returns_the_existing_job(url: str) -> None:
    queue = "keys"
    async with Client(url) as client:
        first = await client.add(queue, "first", id="order-1")
        assert await client.add(queue, "second", id="order-1", priority=9) == first
        info = await client.get_job(first)
        assert info is not None and info.data == "first" and info.key == "order-1"
        assert info.priority == 0
        ids = await client.add_bulk(queue, [JobSpec("a", id="k"), JobSpec("b", id="k"),
                                            JobSpec("c"), JobSpec("d", id="order-1")])
        assert ids[0] == ids[1] and ids[3] == first and len(set(ids)) == 3
        info = await client.get_job(ids[0])
        assert info is not None and info.data == "a"
        # The same key is found in a later bulk, and whatever the queue.
        assert await client.add_bulk("elsewhere", ["e"], id="k") == [ids[0]]
        assert await counts_of(client, queue) == (3, 0, 0, 0, 0)
        assert (await client.counts("elsewhere"))["waiting"] == 0
        # A key is free again once its job is gone.
        await client.remove(first)
        again = await client.add(queue, "again", id="order-1")
        assert again != first and again > max(ids)


async def test_a_completed_job_keeps_its_key(url: str) -> None:
    async with Client(url) as client:
        job_id = await client.add("kept", "x", id="once")
        async with running(Worker("kept", Handler(), url=url)):
            await client.wait(job_id, timeout=10)
        assert await client.add("kept", "x", id="once") == job_id
        assert (await client.counts("kept"))["waiting"] == 0


async def test_keys_and_pause_survive_a_broker_restart(make_broker: MakeBroker,
                                                       tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = await make_broker(data_dir=data_dir)
    async with Client(f"127.0.0.1:{first.port}") as client:
        job_id = await client.add("restart", "x", id="key-1")
        await client.pause("restart")
        delayed = await client.add("restart", "later", delay=0.5, id="key-2")
    await first.close()
    second = await make_broker(data_dir=data_dir)
    url = f"127.0.0.1:{second.port}"
    handler = Handler()
    async with Client(url) as client:
        assert await client.add("restart", "y", id="key-1") == job_id
        assert await client.add_bulk("restart", [JobSpec("z", id="key-2")]) == [delayed]
        assert await counts_of(client, "restart") == (1, 0, 1, 0, 0)
        async with running(Worker("restart", handler, url=url)):
            await wait_for_workers(client, "restart", 1, timeout=15)
            # The delayed job comes due and waits, with the other: the queue is still paused.
            await settle(client, "restart", waiting=2, delayed=0)
            assert await counts_of(client, "restart") == (2, 0, 0, 0, 0)
            assert handler.started == []
            await client.resume("restart")
            assert await client.wait(job_id, timeout=10) == "x"
            assert await client.wait(delayed, timeout=10) == "later"


# Retention.


async def test_a_jobs_own_keep_result_forgets_it_after_that_time(url: str) -> None:
    handler = Handler()
    async with Client(url) as client, running(Worker("brief", handler, url=url)):
        short = await client.add("brief", "short", keep_result=0.3, id="short-key")
        default = await client.add("brief", "default")
        assert await client.wait(short, timeout=10) == "short"
        await client.wait(default, timeout=10)
        info = await client.get_job(short)
        assert info is not None and info.finished_at is not None
        await eventually(lambda: _gone(client, short), timeout=10, what="the job was forgotten")
        assert time.time() - info.finished_at >= 0.3
        assert await client.get_job(default) is not None
        with pytest.raises(UnknownJob):
            await client.wait(short, timeout=1)
        # Its key went with it.
        assert await client.add("brief", "again", id="short-key") != short
        assert (await client.counts("brief"))["completed"] == 2


async def _gone(client: Client, job_id: int) -> bool:
    return await client.get_job(job_id) is None


async def test_keep_result_zero_forgets_the_job_once_its_waiters_are_told(url: str) -> None:
    async with Client(url) as client:
        job_id = await client.add("forget", "x", keep_result=0)
        waiting = asyncio.ensure_future(client.wait(job_id, timeout=10))
        await asyncio.sleep(0.05)
        async with running(Worker("forget", Handler(), url=url)):
            assert await waiting == "x"
        assert await client.get_job(job_id) is None
        assert (await client.counts("forget"))["completed"] == 1


async def test_the_brokers_keep_age_forgets_finished_jobs(make_broker: MakeBroker) -> None:
    broker = await make_broker(keep_age=0.3)
    url = f"127.0.0.1:{broker.port}"
    handler = Handler()
    async with Client(url) as client, running(Worker("aging", handler, url=url)):
        ids = await client.add_bulk("aging", [1, {"fail": True}, 3])
        await settle(client, "aging", completed=2, failed=1)
        infos = [await client.get_job(job_id) for job_id in ids]
        for job_id, info in zip(ids, infos, strict=True):
            assert info is not None and info.finished_at is not None
            await eventually(functools.partial(_gone, client, job_id), timeout=10,
                             what=f"job {job_id} was forgotten")
            assert time.time() - info.finished_at >= 0.3
        assert await counts_of(client, "aging") == (0, 0, 0, 2, 1)
        # A job finished later lives its own full age.
        late = await client.add("aging", 4)
        await client.wait(late, timeout=10)
        assert await client.get_job(late) is not None
