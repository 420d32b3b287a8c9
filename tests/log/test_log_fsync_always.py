"""``--fsync always``: nothing is acknowledged or dispatched before an fsync covers it, whatever
path the add takes (an idempotency key matching a job still waiting for its fsync, a full disk
in between, a shutdown)."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest
from log_support import Failpoints
from processes import eventually
from queue_state import raw

from conveyor.broker import Broker, BrokerStatus, FsyncPolicy
from conveyor.broker.testing import Log, Queues
from conveyor.client import Client, JobSpec, JobState, RequestRefused
from conveyor.protocol import ErrorCode


def no_space(detail: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


async def test_an_add_matching_the_key_of_a_job_waiting_for_its_fsync_waits_for_that_fsync(
    tmp_path: Path, failpoints: Failpoints,
) -> None:
    broker = Broker(port=0, data_dir=tmp_path / "data", fsync="always")
    await broker.start()
    url = f"127.0.0.1:{broker.port}"
    fsync = failpoints.gate("log.fsync")
    try:
        async with Client(url) as first, Client(url) as second:
            adding = asyncio.ensure_future(first.add("q", "once", id="k"))
            await fsync.reached()  # the fsync covering the first add is under way, held
            again = asyncio.ensure_future(second.add("q", "twice", id="k"))
            # Requests on one connection are handled in order, each pass flushed before the
            # next reply: by the second reply, the second add has been through a whole flush.
            await second.counts("q")
            counts = await second.counts("q")
            assert not again.done(), "acknowledged before the fsync covering its job"
            assert counts["waiting"] == 0, "dispatchable before the fsync covering it"
            assert not adding.done()

            fsync.open()
            job_id = await asyncio.wait_for(adding, 10)
            assert await asyncio.wait_for(again, 10) == job_id
            assert (await second.counts("q"))["waiting"] == 1
    finally:
        fsync.open()
        await broker.close()


async def test_a_full_disk_forgets_only_the_jobs_of_the_pass_that_found_it_full(
    tmp_path: Path, failpoints: Failpoints,
) -> None:
    data = tmp_path / "data"
    broker = Broker(port=0, data_dir=data, fsync="always")
    await broker.start()
    url = f"127.0.0.1:{broker.port}"
    fsync = failpoints.gate("log.fsync")
    try:
        async with Client(url) as first, Client(url) as second:
            adding = asyncio.ensure_future(first.add("q", "written, waiting for fsync", id="k"))
            await fsync.reached()
            # The next write finds the disk full: the add that matches the key and creates
            # another job is refused, and only that other job is forgotten.
            failpoints.install("log.write", no_space)
            with pytest.raises(RequestRefused) as refused:
                await second.add_bulk("q", [JobSpec("duplicate", id="k"), "new"])
            assert refused.value.code == ErrorCode.DISK_FULL
            failpoints.install("log.write", None)

            fsync.open()
            job_id = await asyncio.wait_for(adding, 10)
            job = await second.get_job(job_id)
            assert job is not None and job.data == "written, waiting for fsync"
            assert job.state is JobState.WAITING
            assert await second.get_job(job_id + 1) is None
            # The key is still the job's: adding it again returns the same job.
            assert await second.add("q", "again", id="k") == job_id
    finally:
        fsync.open()
        await broker.close()

    restarted = Broker(port=0, data_dir=data)
    await restarted.start()
    try:
        async with Client(f"127.0.0.1:{restarted.port}") as client:
            job = await client.get_job(job_id)
            assert job is not None and job.data == "written, waiting for fsync"
            assert (await client.counts("q"))["waiting"] == 1
    finally:
        await restarted.close()


async def test_adds_waiting_for_their_fsync_when_the_broker_shuts_down_are_answered(
    tmp_path: Path, failpoints: Failpoints,
) -> None:
    data = tmp_path / "data"
    broker = Broker(port=0, data_dir=data, fsync="always")
    await broker.start()
    fsync = failpoints.gate("log.fsync")
    closing: asyncio.Future[None] | None = None
    try:
        async with Client(f"127.0.0.1:{broker.port}") as client:
            adding = asyncio.ensure_future(client.add("q", "at shutdown"))
            await fsync.reached()
            closing = asyncio.ensure_future(broker.close())

            async def shutting_down() -> bool:
                return broker.status is BrokerStatus.CLOSING

            await eventually(shutting_down, timeout=10, what="the broker starts shutting down")
            fsync.open()
            job_id = await asyncio.wait_for(adding, 10)
        await asyncio.wait_for(closing, 10)
    finally:
        fsync.open()
        if closing is not None:
            await closing
        await broker.close()

    restarted = Broker(port=0, data_dir=data)
    await restarted.start()
    try:
        async with Client(f"127.0.0.1:{restarted.port}") as client:
            job = await client.get_job(job_id)
            assert job is not None and job.data == "at shutdown"
    finally:
        await restarted.close()


async def test_closing_the_log_answers_the_waiters_its_last_fsync_covers(tmp_path: Path) -> None:
    queues = Queues(logged=True)
    log = Log(tmp_path / "data", fsync=FsyncPolicy.ALWAYS)
    log.open(queues)
    queues.add("q", [raw("x")], 1.0)
    position = log.append(queues.take_outbox().records)
    answered: list[int] = []
    log.when_synced(position, lambda: answered.append(position))
    await log.close()
    assert answered == [position]
