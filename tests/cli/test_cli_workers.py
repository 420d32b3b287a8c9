"""``conveyor workers`` and ``conveyor job --key`` against a real broker."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from cli_support import conveyor
from processes import eventually, wait_for_workers

from conveyor.broker import Broker
from conveyor.client import Client
from conveyor.worker import Job, Worker


@asynccontextmanager
async def holding_worker(url: str, queue: str, *, name: str,
                         window: int) -> AsyncIterator[asyncio.Event]:
    """A worker on ``queue`` whose jobs run until the event it yields is set."""
    gate = asyncio.Event()

    async def hold(job: Job) -> str:
        await gate.wait()
        return "done"

    worker = Worker(queue, hold, url=url, concurrency=window, name=name)
    running = asyncio.ensure_future(worker.run())
    try:
        yield gate
    finally:
        gate.set()
        await worker.close()
        await running


async def test_workers_lists_each_worker_with_its_queue_and_jobs_held(broker: Broker,
                                                                     url: str) -> None:
    async with (Client(url) as client,
                holding_worker(url, "emails", name="mailer", window=4),
                holding_worker(url, "reports", name="reporter", window=2)):
        await wait_for_workers(broker, "emails", 1)
        await wait_for_workers(broker, "reports", 1)
        await client.add_bulk("emails", [1, 2, 3])
        await eventually(lambda: broker.queues.counts("emails")["active"] == 3,
                         "three jobs held")
        table, as_json, narrowed = await asyncio.gather(
            conveyor("workers", url=url), conveyor("workers", "--json", url=url),
            conveyor("workers", "--queue", "reports", "--json", url=url))
    lines = table.ok().stdout.splitlines()
    mailer = next(line for line in lines if "mailer" in line)
    assert "emails 3/4" in mailer
    assert socket.gethostname() in mailer and str(os.getpid()) in mailer
    assert "ago" in mailer  # last heard
    reporter = next(line for line in lines if "reporter" in line)
    assert "reports 0/2" in reporter
    records = as_json.ok().json()
    assert [w["name"] for w in records] == ["mailer", "reporter"]
    assert records[0]["subscriptions"] == [{"queue": "emails", "window": 4, "held": 3}]
    assert records[0]["pid"] == os.getpid() and records[0]["address"].startswith("127.0.0.1:")
    assert [w["name"] for w in narrowed.ok().json()] == ["reporter"]


async def test_workers_says_so_when_none_is_connected(url: str) -> None:
    table, as_json = await asyncio.gather(conveyor("workers", url=url),
                                          conveyor("workers", "--json", url=url))
    assert "no workers connected" in table.ok().stdout
    assert as_json.ok().json() == []


async def test_job_by_idempotency_key(url: str) -> None:
    async with Client(url) as client:
        job_id = await client.add("orders", {"order": 17}, id="order-17")
    shown, as_json, missing, neither, both = await asyncio.gather(
        conveyor("job", "--key", "order-17", url=url),
        conveyor("job", "--key", "order-17", "--json", url=url),
        conveyor("job", "--key", "order-18", url=url),
        conveyor("job", url=url),
        conveyor("job", str(job_id), "--key", "order-17", url=url))
    assert shown.ok().stdout.split()[:2] == ["job", str(job_id)]
    assert '{"order":17}' in shown.stdout and "order-17" in shown.stdout
    assert as_json.ok().json()["id"] == job_id
    assert missing.returncode == 1
    assert missing.error_line() == "conveyor: no job with the key 'order-18'"
    for result in (neither, both):
        assert result.returncode == 2, result
        assert "either a job ID or --key KEY" in result.error_line()
