"""Job groups through a real broker and real workers: a tenant with many jobs does not starve one
with few, a per-group cap holds across workers, and groups and their limits survive a restart
and a compaction."""

from __future__ import annotations

import asyncio
from pathlib import Path

from integration_support import compacted
from processes import eventually, running, wait_for_workers

from conveyor.broker import Broker
from conveyor.client import Client, JobSpec, JobState
from conveyor.protocol import QueueLimits
from conveyor.worker import Job, Worker


async def limits_of(client: Client, queue: str) -> QueueLimits | None:
    found = (await client.stats(queue)).queues
    return found[0].limits if found else None


async def test_a_tenant_with_many_jobs_does_not_starve_one_with_few(url: str) -> None:
    order: list[str | None] = []

    async def handle(job: Job) -> None:
        order.append(job.group)

    async with Client(url) as client:
        await client.add_bulk("q", list(range(400)), group="big")
        small = await client.add_bulk("q", list(range(5)), group="small")
        await client.add_bulk("q", list(range(3)))  # no group: a lane of its own
        async with running(Worker("q", handle, url=url, concurrency=2)):
            for job_id in small:
                await client.wait(job_id, timeout=10)
        # Taken in turns: the five jobs of "small" and the three of no group start within the
        # first starts, whatever "big" holds (plus the jobs of a window taken in one pass).
        last_small = max(index for index, group in enumerate(order) if group == "small")
        last_plain = max(index for index, group in enumerate(order) if group is None)
        assert last_small < 5 * 3 + 2 and last_plain < 3 * 3 + 2, order[:20]
        (stats,) = (await client.stats("q")).queues
        assert stats.groups >= 1  # "big" still has waiting or running jobs


async def test_a_group_cap_holds_across_two_workers(url: str) -> None:
    gate = asyncio.Event()
    running_now: dict[str, int] = {}
    most: dict[str, int] = {}

    async def handle(job: Job) -> None:
        group = str(job.group)
        running_now[group] = running_now.get(group, 0) + 1
        most[group] = max(most.get(group, 0), running_now[group])
        await gate.wait()
        running_now[group] -= 1

    async with Client(url) as client:
        await client.set_limits("q", group_concurrency=2)
        async with running(Worker("q", handle, url=url, concurrency=4)), \
                running(Worker("q", handle, url=url, concurrency=4)):
            await wait_for_workers(client, "q", 2)
            ids = await client.add_bulk("q", [JobSpec(n, group="a") for n in range(6)]
                                        + [JobSpec(n, group="b") for n in range(3)])
            await eventually(lambda: sum(running_now.values()) == 4, "four jobs running")
            counts = await client.counts("q")
            assert (counts["active"], counts["waiting"]) == (4, 5)  # free slots stay free
            assert running_now == {"a": 2, "b": 2}
            (stats,) = (await client.stats("q")).queues
            assert stats.groups == 2
            gate.set()
            for job_id in ids:
                await client.wait(job_id, timeout=10)
    assert most == {"a": 2, "b": 2}


async def test_groups_and_group_limits_survive_a_restart_and_a_compaction(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    limits = QueueLimits(concurrency=10, group_concurrency=1, group_rate=100, group_per=2.0)
    broker = Broker(port=0, data_dir=data, fsync="always", compact_floor=8192,
                    compact_ratio=1.5)
    await broker.start()
    try:
        async with Client(f"127.0.0.1:{broker.port}") as client:
            await client.set_limits("q", concurrency=10, group_concurrency=1, group_rate=100,
                                    group_per=2.0)
            before = await client.add_bulk("q", ["x", "y"], group="before")
            await compacted(client, broker)
            after = await client.add_bulk("q", ["x", "y"], group="after")
            delayed = await client.add("q", "z", group="later", delay=3600)
    finally:
        await broker.close()
    broker = Broker(port=0, data_dir=data)
    await broker.start()
    try:
        url = f"127.0.0.1:{broker.port}"
        async with Client(url) as client:
            assert await limits_of(client, "q") == limits
            for job_id, group in [(before[0], "before"), (after[1], "after"),
                                  (delayed, "later")]:
                info = await client.get_job(job_id)
                assert info is not None and info.group == group
            gate = asyncio.Event()
            seen: list[str | None] = []

            async def handle(job: Job) -> None:
                seen.append(job.group)
                await gate.wait()

            async with running(Worker("q", handle, url=url, concurrency=10)):
                # One of each group at once: the cap of one per group held across the restart.
                await eventually(lambda: len(seen) == 2, "one job of each group running")
                counts = await client.counts("q")
                assert (counts["active"], counts["waiting"]) == (2, 2)
                assert sorted(str(group) for group in seen) == ["after", "before"]
                await client.promote(delayed)
                await eventually(lambda: len(seen) == 3, "the promoted job running")
                assert seen[-1] == "later"
                gate.set()
                for job_id in before + after + [delayed]:
                    await client.wait(job_id, timeout=10)
            waiting = await client.get_jobs("q", JobState.WAITING)
            assert waiting == []
    finally:
        await broker.close()
