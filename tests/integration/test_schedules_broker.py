"""Repeatable jobs through a real broker: a worker gets each due time's job, schedules survive a
restart and a compaction, due times missed while the broker was down give one job under
``once`` and none under ``skip``, and a broker killed right after a due time makes no second
job for it."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from integration_support import compacted, start_broker_process
from processes import eventually
from rawwire import Raw

from conveyor.broker import Broker
from conveyor.broker.testing import SteppedClock
from conveyor.client import Client, JobInfo, JobState, ProtocolViolation, UnknownJob
from conveyor.worker import Job, Worker

MakeBroker = Callable[..., Awaitable[Broker]]


def address(broker: Broker) -> str:
    return f"127.0.0.1:{broker.port}"


def due_time(job: JobInfo) -> float:
    assert job.key is not None and job.key.startswith("schedule:")
    return float(job.key.rsplit(":", 1)[1])


async def test_a_worker_gets_the_job_of_each_due_time(url: str) -> None:
    got: list[tuple[Any, str | None]] = []

    async def handle(job: Job) -> None:
        got.append((job.data, job.name))

    async with Client(url) as client:
        worker = Worker("ticks", handle, url=url, concurrency=1)
        running = asyncio.create_task(worker.run())
        try:
            await client.set_schedule("tick", "ticks", {"n": 1}, every=0.05, name="tick",
                                      attempts=2)
            (info,) = await client.schedules()
            assert info.schedule.every == 0.05 and info.schedule.attempts == 2
            assert info.next_run > time.time() - 1
            await eventually(lambda: len(got) >= 3, what="three scheduled jobs")
            assert got[0] == ({"n": 1}, "tick")
            await client.remove_schedule("tick")
            assert await client.schedules() == []
            with pytest.raises(UnknownJob):
                await client.remove_schedule("tick")
        finally:
            await worker.close()
            await running


async def test_bad_schedules_are_refused(url: str) -> None:
    async with Client(url) as client:
        with pytest.raises(ValueError):
            await client.set_schedule("s", "q", 1)
        with pytest.raises(ValueError):
            await client.set_schedule("s", "q", 1, every=1, cron="* * * * *")
        with pytest.raises(ProtocolViolation, match="cron"):
            await client.set_schedule("s", "q", 1, cron="not a cron")
        with pytest.raises(ProtocolViolation, match="time zone"):
            await client.set_schedule("s", "q", 1, cron="0 9 * * *", tz="Mars/Olympus")
        assert await client.schedules() == []


async def test_missed_due_times_give_one_job_under_once_and_none_under_skip(
        make_broker: MakeBroker, tmp_path: Path) -> None:
    clock = SteppedClock()
    options: dict[str, Any] = {"data_dir": tmp_path / "data", "clock": clock,
                               "compact_floor": 4096, "compact_ratio": 2.0}
    first = await make_broker(**options)
    async with Client(address(first)) as client:
        await client.set_schedule("once", "hourly", "a", every=3600)
        await client.set_schedule("skip", "skipped", "b", every=3600, missed="skip",
                                  priority=3)
        set_at = time.time()
    await first.close()
    clock.step(3 * 3600)  # down over three due times
    second = await make_broker(**options)
    async with Client(address(second)) as client:
        infos = {info.schedule.id: info for info in await client.schedules()}
        assert infos["skip"].schedule.priority == 3 and infos["skip"].schedule.missed == "skip"
        now = clock.wall()
        assert now < infos["skip"].next_run < now + 3600
        await eventually(lambda: second.queues.counts("hourly")["waiting"] == 1,
                         what="the missed due time's job")
        (job,) = await client.get_jobs("hourly", JobState.WAITING)
        assert job.data == "a"
        assert set_at + 3 * 3600 - 5 < due_time(job) <= now
        assert await client.get_jobs("skipped", JobState.WAITING) == []
    # The schedules and that job's due time survive a compaction and another restart.
    async with Client(address(second)) as client:
        await compacted(client, second)
    await second.close()
    third = await make_broker(**options)
    async with Client(address(third)) as client:
        assert sorted(info.schedule.id for info in await client.schedules()) == ["once", "skip"]
        assert (await client.counts("hourly"))["waiting"] == 1


def test_a_broker_killed_right_after_due_times_makes_no_second_job_for_one(
        tmp_path: Path) -> None:
    async def main() -> None:
        broker = start_broker_process(tmp_path)
        try:
            async with Client(broker.url) as client:
                await client.pause("beats")  # the jobs stay to be counted
                await client.set_schedule("beat", "beats", "x", every=0.1)
                await _wait_jobs(client, 3)
            broker.stop(signal.SIGKILL)
            broker = start_broker_process(tmp_path)
            async with Client(broker.url) as client:
                before = len(await _all_jobs(client))
                await _wait_jobs(client, before + 3)
                jobs = await _all_jobs(client)
        finally:
            broker.stop()
        times = sorted(due_time(job) for job in jobs)
        assert len(set(times)) == len(times), times
        # One schedule, one anchor: every due time is a whole number of periods from the first.
        steps = [(t - times[0]) / 0.1 for t in times]
        assert all(abs(step - round(step)) < 1e-3 for step in steps), steps

    asyncio.run(main())


async def _all_jobs(client: Client) -> list[JobInfo]:
    return await client.get_jobs("beats", JobState.WAITING, limit=1000)


async def _wait_jobs(client: Client, count: int) -> None:
    deadline = time.monotonic() + 20
    while len(await _all_jobs(client)) < count:
        assert time.monotonic() < deadline, "the schedule made too few jobs"
        await asyncio.sleep(0.02)


async def test_schedules_are_listed_in_pages_that_fit_the_frame(make_broker: MakeBroker) -> None:
    # 300 schedules of 1 KB each: more than one frame of 64 KiB holds.
    broker = await make_broker(max_frame=64 * 1024)
    async with Client(f"conveyor://{address(broker)}") as client:
        for n in range(300):
            await client.set_schedule(f"s{n:03}", "q", "x" * 1000, every=3600)
        listed = await client.schedules()
        assert [info.schedule.id for info in listed] == [f"s{n:03}" for n in range(300)]
        await client.remove_schedule("s150")
        assert len(await client.schedules()) == 299
    raw = await Raw.open(broker.port)
    try:
        raw.send({"t": "get_schedules", "req": 1})
        frame = await raw.receive_frame()  # the body: the 4-byte length is read already
        assert len(frame) + 4 <= 64 * 1024
        page = msgspec.msgpack.decode(frame)
        assert page["more"] and 0 < len(page["schedules"]) < 299
    finally:
        await raw.close()


async def test_the_statistics_count_each_queues_schedules(url: str) -> None:
    async with Client(url) as client:
        await client.add("reports", 0)  # the queue exists
        for n in range(3):
            await client.set_schedule(f"r{n}", "reports", n, every=3600)
        await client.set_schedule("e", "emails", 0, cron="0 9 * * *")
        (reports,) = (await client.stats("reports")).queues
        assert reports.schedules == 3
        await client.remove_schedule("r1")
        (reports,) = (await client.stats("reports")).queues
        assert reports.schedules == 2
