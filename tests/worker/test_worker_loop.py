"""A worker warns when its event loop was blocked for over a third of its lease (a blocking call
in an async handler), naming the jobs running then."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from processes import eventually, running

from conveyor.client import Client
from conveyor.worker import Job, Worker

LEASE = 1.5
"""Seconds; the loop is blocked for half of it (over the third that is warned about), short
enough that the broker does not take the job back meanwhile."""


def blocked_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records
            if record.levelno == logging.WARNING and "event loop was blocked" in record.message]


async def test_a_blocking_call_in_an_async_handler_is_warned_about_naming_the_job(
        url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="conveyor.worker")

    async def handler(job: Job) -> str:
        if job.data == "block":
            time.sleep(LEASE / 2)  # the mistake: blocks the worker's event loop
        else:
            await asyncio.sleep(LEASE / 2)
        return str(job.data)

    worker = Worker("lag", handler, url=url, lease=LEASE, concurrency=2)
    async with Client(url) as client, running(worker):
        polite = await client.add("lag", "sleep", name="polite")
        assert await client.wait(polite, timeout=10) == "sleep"
        assert blocked_warnings(caplog) == []  # a handler that awaits blocks nothing
        blocking = await client.add("lag", "block", name="resize")
        assert await client.wait(blocking, timeout=10) == "block"
        await eventually(lambda: blocked_warnings(caplog), "the blocked loop warned about",
                         timeout=10)
    [warning] = blocked_warnings(caplog)
    assert warning.message.count(f"job {blocking} (resize on lag)") == 1
    assert f"job {polite}" not in warning.message
    assert f"over a third of the {LEASE:g} s lease" in warning.message
    blocked = float(warning.message.split("blocked for ")[1].split(" s")[0])
    assert LEASE / 3 < blocked <= LEASE / 2 + 0.5
