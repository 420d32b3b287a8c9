"""Job names travel from ``add`` to the worker, the job record, events and a restart; every
queue is listed with its counts and rates."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from conveyor.broker import Broker
from conveyor.client import Client, JobSpec
from conveyor.protocol import MAX_JOB_NAME, Add, JobDef
from conveyor.worker import Job, Worker


async def test_a_name_reaches_the_worker_the_record_and_the_events(url: str) -> None:
    seen: list[str | None] = []

    async def handle(job: Job) -> str | None:
        seen.append(job.name)
        return job.name

    async with Client(url) as client:
        events = client.events("mail")
        first = await client.add("mail", {"to": "a"}, name="send_welcome")
        ids = await client.add_bulk("mail", [JobSpec({"to": "b"}, name="send_digest"), {"x": 1}])
        worker = Worker("mail", handle, url=url, concurrency=3)
        running = asyncio.create_task(worker.run())
        try:
            results = [await client.wait(job_id, timeout=10) for job_id in [first, *ids]]
        finally:
            await worker.close()
            await running
        assert results == ["send_welcome", "send_digest", None]
        assert sorted(seen, key=str) == sorted(["send_welcome", "send_digest", None], key=str)
        info = await client.get_job(first)
        assert info is not None and info.name == "send_welcome"
        listed = await client.get_jobs("mail", "completed")
        assert {job.id: job.name for job in listed}[ids[0]] == "send_digest"
        names = set()
        async for event in events:
            if event.kind == "added":
                names.add(event.name)
            if len(names) == 3:
                break
        await events.aclose()
        assert names == {"send_welcome", "send_digest", None}


async def test_a_name_survives_a_restart(tmp_path: Path) -> None:
    broker = Broker(port=0, data_dir=tmp_path)
    await broker.start()
    async with Client(f"127.0.0.1:{broker.port}") as client:
        job_id = await client.add("q", 1, name="resize")
    await broker.close()
    broker = Broker(port=0, data_dir=tmp_path)
    await broker.start()
    try:
        async with Client(f"127.0.0.1:{broker.port}") as client:
            info = await client.get_job(job_id)
            assert info is not None and info.name == "resize"
    finally:
        await broker.close()


@pytest.mark.parametrize("name", ["", "x" * (MAX_JOB_NAME + 1), 7])
async def test_a_bad_name_is_refused_before_sending(url: str, name: object) -> None:
    async with Client(url) as client:
        with pytest.raises(ValueError, match="name must be a string"):
            await client.add("q", 1, name=name)  # type: ignore[arg-type]
        assert (await client.counts("q"))["waiting"] == 0


async def test_the_broker_refuses_an_overlong_name_from_the_wire(url: str) -> None:
    async with Client(url) as client:
        bad = JobDef(data=msgspec.Raw(b"\x01"), name="x" * (MAX_JOB_NAME + 1))
        with pytest.raises(Exception, match="name"):
            await client.connection.request(lambda req: Add(req=req, queue="q", jobs=[bad]))
        assert (await client.counts("q"))["waiting"] == 0


async def test_queues_lists_every_queue_with_counts_and_rates(url: str) -> None:
    async with Client(url) as client:
        assert await client.queues() == []
        await client.add_bulk("b", range(5))
        await client.add("a", 1)
        await client.pause("a")
        summaries = await client.queues()
        assert [summary.name for summary in summaries] == ["a", "b"]
        a, b = summaries
        assert a.paused and not b.paused
        assert (a.waiting, b.waiting) == (1, 5)
        assert b.added_rate == pytest.approx(5 / 60)
        assert b.completed_rate == 0.0
