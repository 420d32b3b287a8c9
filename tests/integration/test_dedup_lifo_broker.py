"""Idempotency keys with a time to live (``dedup=``) and LIFO adds (``lifo=True``) through a real
broker: within the time the key returns the job it names, after it a new job takes the key; a
LIFO job runs before the jobs already waiting at its priority. Both hold across restarts and
compactions. A running broker measures a time to live on the monotonic clock (a step of the wall
clock, from a ``SteppedClock``, changes nothing); across a restart only the wall clock tells how
long the broker was down, so a step while it is down counts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from integration_support import compacted
from processes import eventually

from conveyor.broker import Broker
from conveyor.broker.testing import SteppedClock
from conveyor.client import Client, JobSpec, JobState

MakeBroker = Callable[..., Awaitable[Broker]]


def address(broker: Broker) -> str:
    return f"127.0.0.1:{broker.port}"


async def key_freed(client: Client, key: str) -> None:
    """Wait until no job holds ``key`` (its time to live ran out)."""

    async def freed() -> bool:
        return await client.find_job(key) is None

    await eventually(freed, what=f"the key {key!r} to be free")


async def waiting_order(client: Client, queue: str) -> list[Any]:
    page = await client.get_jobs(queue, JobState.WAITING, limit=100)
    return [job.data for job in page]


async def test_a_key_returns_its_job_within_the_time_to_live_and_a_new_job_after(
        make_broker: MakeBroker) -> None:
    clock = SteppedClock()
    broker = await make_broker(clock=clock)
    async with Client(address(broker)) as client:
        first = await client.add("reports", {"day": 1}, id="daily", dedup=60)
        assert await client.add("reports", {"day": 1}, id="daily", dedup=60) == first
        assert await client.add_bulk("reports", [JobSpec("x", id="daily")]) == [first]
        clock.step(61)  # an operator sets the clock: no time passed
        assert await client.add("reports", {"day": 1}, id="daily", dedup=60) == first
        brief = await client.add("reports", {"day": 1}, id="brief", dedup=0.2)
        await key_freed(client, "brief")
        second = await client.add("reports", {"day": 2}, id="brief", dedup=60)
        assert second != brief
        found = await client.find_job("brief")
        assert found is not None and found.id == second and found.data == {"day": 2}
        old = await client.get_job(brief)
        assert old is not None and old.data == {"day": 1} and old.key == "brief"
        assert (await client.counts("reports"))["waiting"] == 3


async def test_dedup_holds_across_a_restart_and_runs_out_after_it(
        make_broker: MakeBroker, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    clock = SteppedClock()
    first = await make_broker(data_dir=data_dir, clock=clock)
    async with Client(address(first)) as client:
        kept = await client.add("q", "a", id="k", dedup=3600)
    await first.close()
    second = await make_broker(data_dir=data_dir, clock=clock)
    async with Client(address(second)) as client:
        assert await client.add("q", "again", id="k", dedup=3600) == kept
    await second.close()
    clock.step(3601)  # the broker is down past the time to live
    third = await make_broker(data_dir=data_dir, clock=clock)
    async with Client(address(third)) as client:
        fresh = await client.add("q", "new", id="k", dedup=3600)
        assert fresh != kept
    await third.close()
    fourth = await make_broker(data_dir=data_dir, clock=clock)
    async with Client(address(fourth)) as client:
        found = await client.find_job("k")
        assert found is not None and found.id == fresh
        assert await client.add("q", "more", id="k") == fresh
        assert await client.get_job(kept) is not None


async def test_dedup_and_lifo_survive_a_compaction(make_broker: MakeBroker,
                                                   tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    clock = SteppedClock()
    options: dict[str, Any] = {"data_dir": data_dir, "clock": clock, "compact_floor": 4096,
                               "compact_ratio": 2.0}
    broker = await make_broker(**options)
    async with Client(address(broker)) as client:
        await client.pause("held")
        old = await client.add("held", "old", id="k", dedup=0.2)
        await key_freed(client, "k")
        new = await client.add("held", "new", id="k", dedup=3600)
        await client.add("held", "fifo")
        await client.add("held", "lifo", lifo=True)
        order = await waiting_order(client, "held")
        assert order == ["lifo", "old", "new", "fifo"]
        await compacted(client, broker)
    await broker.close()
    restarted = await make_broker(**options)
    async with Client(address(restarted)) as client:
        assert await waiting_order(client, "held") == order
        assert await client.add("held", "dup", id="k") == new
        found = await client.find_job("k")
        assert found is not None and found.id == new
        assert await client.get_job(old) is not None


async def test_lifo_jobs_run_first_within_their_priority_and_keep_their_place_on_restart(
        make_broker: MakeBroker, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    broker = await make_broker(data_dir=data_dir)
    async with Client(address(broker)) as client:
        await client.pause("stack")
        await client.add_bulk("stack", ["f1", "f2"])
        await client.add("stack", "l1", lifo=True)
        await client.add_bulk("stack", ["l2", "f3", "l3"], lifo=True)
        await client.add_bulk("stack", [JobSpec("l4", lifo=True), "f4"])
        await client.add("stack", "urgent-fifo", priority=5)
        await client.add("stack", "urgent-lifo", priority=5, lifo=True)
        expected = ["urgent-lifo", "urgent-fifo", "l4", "l3", "f3", "l2", "l1", "f1", "f2", "f4"]
        assert await waiting_order(client, "stack") == expected
    await broker.close()
    restarted = await make_broker(data_dir=data_dir)
    async with Client(address(restarted)) as client:
        assert await waiting_order(client, "stack") == expected
