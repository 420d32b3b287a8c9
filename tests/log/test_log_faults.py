"""Faults of the disk under the log: a failing fsync stops the broker without acknowledging what
it did not cover, and so does any unexpected error of the log; a graceful shutdown keeps every
job. (A full disk: ``test_log_disk_full.py``.)"""

from __future__ import annotations

import asyncio
import errno
import os
import sys
from pathlib import Path

import pytest
from log_support import (
    HERE,
    Failpoints,
    assert_one_error_line,
    reopen,
    run_broker,
    start_broker,
)

from conveyor.broker import Broker, BrokerStatus, LogError
from conveyor.client import Client, ConnectionLost, JobState


def failing_fsync(fd: int) -> None:
    raise OSError(errno.EIO, os.strerror(errno.EIO))


async def test_an_fsync_error_under_fsync_always_fails_the_pending_add_and_stops_the_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = tmp_path / "data"
    broker = Broker(port=0, data_dir=data, fsync="always")
    await broker.start()
    url = f"127.0.0.1:{broker.port}"
    serving = asyncio.ensure_future(broker.serve_forever())
    try:
        async with Client(url) as client:
            kept = await client.add("q", "before the fault")
            monkeypatch.setattr(os, "fsync", failing_fsync)
            with pytest.raises(ConnectionLost):
                await client.add("q", "never acknowledged")
        with pytest.raises(LogError, match="fsync .* failed: .*Input/output error"):
            await asyncio.wait_for(serving, 10)
        assert broker.status is BrokerStatus.FAILED
        with pytest.raises(ConnectionLost):
            await Client(url, timeout=2).connect()
    finally:
        monkeypatch.undo()
        await broker.close()

    restarted = Broker(port=0, data_dir=data)
    await restarted.start()
    try:
        async with Client(f"127.0.0.1:{restarted.port}") as client:
            job = await client.get_job(kept)
            assert job is not None and job.data == "before the fault"
    finally:
        await restarted.close()


async def test_an_fsync_error_under_fsync_everysec_stops_the_broker_within_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = Broker(port=0, data_dir=tmp_path / "data", fsync="everysec")
    await broker.start()
    url = f"127.0.0.1:{broker.port}"
    serving = asyncio.ensure_future(broker.serve_forever())
    try:
        monkeypatch.setattr(os, "fsync", failing_fsync)
        async with Client(url, reconnect=False) as client:
            await client.add("q", "written, not yet synced")
            with pytest.raises(LogError, match="fsync"):
                await asyncio.wait_for(asyncio.shield(serving), 5)
            with pytest.raises(ConnectionLost):
                await client.add("q", "after the fault")
    finally:
        monkeypatch.undo()
        serving.cancel()
        await broker.close()


async def test_the_broker_cli_exits_with_one_line_when_fsync_fails(tmp_path: Path) -> None:
    # A log already there: the broker appends to it, and its first fsync is the one that fails.
    await asyncio.to_thread(reopen, tmp_path / "data")
    broker = await asyncio.to_thread(
        start_broker, tmp_path / "data", "--fsync", "always",
        stderr_path=tmp_path / "broker.stderr",
        command=[sys.executable, str(HERE / "log_fsync_fault.py")],
        env={"CONVEYOR_TEST_FSYNC_OK": "0"})
    try:
        async with Client(broker.url) as client:
            with pytest.raises(ConnectionLost):
                await client.add("q", "never acknowledged")
        assert await asyncio.to_thread(broker.wait, 10) == 1
    finally:
        broker.kill()
    assert_one_error_line(broker.stderr, "fsync", "Input/output error", str(tmp_path / "data"))


async def test_the_broker_cli_refuses_to_start_when_its_new_log_cannot_be_fsynced(
    tmp_path: Path,
) -> None:
    # A new log's first file and manifest are made durable before anything is acknowledged.
    done = await asyncio.to_thread(run_broker, tmp_path / "data",
                                   command=[sys.executable, str(HERE / "log_fsync_fault.py")])
    assert done.returncode == 1, done.stderr
    assert_one_error_line(done.stderr, "cannot open the log", str(tmp_path / "data"),
                          "Input/output error")


# Graceful shutdown.


async def test_sigterm_with_jobs_waiting_exits_0_and_a_restart_recovers_every_job(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    broker = await asyncio.to_thread(start_broker, data, "--fsync", "no",
                                     stderr_path=tmp_path / "first.stderr")
    try:
        async with Client(broker.url) as client:
            ids = await client.add_bulk("q", [f"bulk {n}" for n in range(300)])
            ids += [await client.add("q", f"single {n}") for n in range(20)]
        assert await asyncio.to_thread(broker.stop) == 0
    finally:
        broker.kill()
    assert "Traceback" not in broker.stderr

    restarted = await asyncio.to_thread(start_broker, data, stderr_path=tmp_path / "b.stderr")
    try:
        assert "recovered 320 jobs (320 waiting)" in restarted.stderr
        async with Client(restarted.url) as client:
            assert (await client.counts("q"))["waiting"] == 320
            jobs = await asyncio.gather(*(client.get_job(job_id) for job_id in ids))
        expected = [f"bulk {n}" for n in range(300)] + [f"single {n}" for n in range(20)]
        assert [job.data if job else None for job in jobs] == expected
        assert all(job is not None and job.state is JobState.WAITING for job in jobs)
    finally:
        assert await asyncio.to_thread(restarted.stop) == 0


# Unexpected errors.


async def test_an_unexpected_error_in_the_log_task_stops_the_broker_with_one_line(
    tmp_path: Path,
) -> None:
    trigger = tmp_path / "trigger"
    broker = await asyncio.to_thread(
        start_broker, tmp_path / "data", "--fsync", "everysec",
        stderr_path=tmp_path / "broker.stderr",
        command=[sys.executable, str(HERE / "log_failpoint_broker.py")],
        env={"CONVEYOR_TEST_RAISE": "log.run", "CONVEYOR_TEST_TRIGGER": str(trigger)})
    try:
        async with Client(broker.url) as client:
            kept = await client.add("q", "before")
            trigger.touch()
            # The log task's next round (within a second) raises: nothing is fsynced from then
            # on, so the broker must stop acknowledging and drop its connections.
            with pytest.raises(ConnectionLost):
                async with asyncio.timeout(15):
                    while True:
                        await client.add("q", "after")
        assert await asyncio.to_thread(broker.wait, 10) == 1
    finally:
        broker.kill()
    assert_one_error_line(broker.stderr, "log's background task failed", "RuntimeError",
                          "failpoint log.run triggered")
    queues, _ = await asyncio.to_thread(reopen, tmp_path / "data")
    assert bytes(queues.jobs[kept].data) == b"\xa6before"


async def test_an_unexpected_error_writing_the_log_stops_the_broker(
    tmp_path: Path, failpoints: Failpoints,
) -> None:
    broker = Broker(port=0, data_dir=tmp_path / "data")
    await broker.start()
    serving = asyncio.ensure_future(broker.serve_forever())
    try:
        async with Client(f"127.0.0.1:{broker.port}") as client:
            await client.add("q", "before")

            def bug(detail: object) -> None:
                raise RuntimeError("a bug in the write path")

            failpoints.install("log.write", bug)
            with pytest.raises(ConnectionLost):
                async with asyncio.timeout(10):
                    await client.add("q", "never acknowledged")
        with pytest.raises(LogError, match="RuntimeError: a bug in the write path"):
            await asyncio.wait_for(serving, 10)
        assert broker.status is BrokerStatus.FAILED
    finally:
        serving.cancel()
        await broker.close()
