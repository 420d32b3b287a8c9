"""Queue limits through a real broker: set, read, change and clear them at run time; a global
concurrency cap over several workers; a rate that holds across a restart and a compaction; who
may set them; and a handler that reports its service rate limiting (``RateLimited``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from integration_support import compacted
from processes import eventually, running, wait_for_workers

from conveyor.broker import Broker, Permission, User, Users, make_secret
from conveyor.client import Client, Forbidden
from conveyor.protocol import QueueLimits
from conveyor.worker import Job, RateLimited, Worker

MakeBroker = Callable[..., Awaitable[Broker]]



async def limits_of(client: Client, queue: str) -> QueueLimits | None:
    found = (await client.stats(queue)).queues  # none for a queue the broker does not know
    return found[0].limits if found else None


async def test_limits_are_read_changed_and_cleared_at_run_time(url: str) -> None:
    async with Client(url) as client:
        assert await limits_of(client, "q") is None
        await client.set_limits("q", rate=10, per=2.0, concurrency=3)
        assert await limits_of(client, "q") == QueueLimits(rate=10, per=2.0, concurrency=3)
        await client.set_limits("q", concurrency=1)
        assert await limits_of(client, "q") == QueueLimits(concurrency=1)
        await client.clear_limits("q")
        assert await limits_of(client, "q") is None
        for bad in ({"rate": 0}, {"concurrency": -1}, {"rate": 1, "per": 0.0},
                    {"rate": 1, "per": float("nan")}, {"concurrency": 10**10}):
            with pytest.raises(ValueError):
                await client.set_limits("q", **bad)
        assert await limits_of(client, "q") is None


async def test_concurrency_caps_active_jobs_across_workers(url: str) -> None:
    gate = asyncio.Event()
    running_now = 0
    most = 0

    async def handle(job: Job) -> None:
        nonlocal running_now, most
        running_now += 1
        most = max(most, running_now)
        await gate.wait()
        running_now -= 1

    async with Client(url) as client:
        await client.set_limits("q", concurrency=3)
        async with running(Worker("q", handle, url=url, concurrency=4)), \
                running(Worker("q", handle, url=url, concurrency=4)):
            await wait_for_workers(client, "q", 2)
            ids = await client.add_bulk("q", list(range(12)))
            await eventually(lambda: running_now == 3, "three jobs running")
            counts = await client.counts("q")
            assert (counts["active"], counts["waiting"]) == (3, 9)
            # Raised at run time: more start at once.
            await client.set_limits("q", concurrency=5)
            await eventually(lambda: running_now == 5, "five jobs running")
            gate.set()
            for job_id in ids:
                await client.wait(job_id, timeout=10)
    assert most == 5


async def test_limits_survive_a_restart_and_a_compaction(tmp_path: Path) -> None:
    data = tmp_path / "data"
    broker = Broker(port=0, data_dir=data, fsync="always", compact_floor=8192,
                    compact_ratio=1.5)
    await broker.start()
    try:
        assert broker.log is not None
        async with Client(f"127.0.0.1:{broker.port}") as client:
            await client.set_limits("rated", rate=2, per=60.0)
            await client.set_limits("capped", concurrency=2)
            await client.set_limits("cleared", concurrency=2)
            await client.clear_limits("cleared")
            await compacted(client, broker)
            await client.add_bulk("rated", [1, 2, 3])
    finally:
        await broker.close()
    broker = Broker(port=0, data_dir=data)
    await broker.start()
    try:
        url = f"127.0.0.1:{broker.port}"
        async with Client(url) as client:
            assert await limits_of(client, "rated") == QueueLimits(rate=2, per=60.0)
            assert await limits_of(client, "capped") == QueueLimits(concurrency=2)
            assert "cleared" not in [q.name for q in await client.queues()]
            # The rate holds after the restart: one start now, the next 30 s later (without
            # the limit, the worker's window of 10 would take all three in one pass).
            async def handle(job: Job) -> None:
                pass

            async with running(Worker("rated", handle, url=url, concurrency=10)):
                async def one_done() -> bool:
                    return (await client.counts("rated"))["completed"] == 1

                await eventually(one_done, "the first job completed")
                counts = await client.counts("rated")
                assert (counts["waiting"], counts["active"]) == (2, 0)
    finally:
        await broker.close()


async def test_setting_limits_needs_the_admin_permission(make_broker: MakeBroker) -> None:
    secret = make_secret("pw-Quokka-1")
    users = Users({
        "root": User(name="root", secret=secret, rules={p: ("*",) for p in Permission}),
        "worker": User(name="worker", secret=secret,
                       rules={Permission.CONSUME: ("*",), Permission.READ: ("*",)}),
    })
    broker = await make_broker(users=users)
    root = f"conveyor://root:pw-Quokka-1@127.0.0.1:{broker.port}"
    other = f"conveyor://worker:pw-Quokka-1@127.0.0.1:{broker.port}"
    async with Client(root) as admin, Client(other) as client:
        await admin.set_limits("q", concurrency=2)
        with pytest.raises(Forbidden, match="admin"):
            await client.set_limits("q", concurrency=100)
        with pytest.raises(Forbidden, match="admin"):
            await client.clear_limits("q")
        assert await limits_of(client, "q") == QueueLimits(concurrency=2)


async def test_rate_limited_hands_the_job_back_without_using_an_attempt(url: str) -> None:
    tries: list[int] = []

    async def handle(job: Job) -> str:
        tries.append(job.attempt)
        if len(tries) == 1:
            raise RateLimited(0.2)
        return "sent"

    async with Client(url) as client:
        async with running(Worker("q", handle, url=url, concurrency=2)):
            job_id = await client.add("q", {"to": "a@b"})  # one attempt only
            assert await client.wait(job_id, timeout=10) == "sent"
        info = await client.get_job(job_id)
        assert info is not None and info.attempt == 1 and info.error is None
        assert tries == [1, 1]  # the rate-limited try was given back
        assert await limits_of(client, "q") is None  # a hold is not a limit
