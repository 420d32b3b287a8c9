"""Faults of the disk under the log: a failing fsync stops the broker without acknowledging what
it did not cover; a full disk refuses new jobs but lets existing ones finish, and recovers when
space frees; a graceful shutdown keeps every job."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from log_support import (
    HERE,
    Failpoints,
    assert_one_error_line,
    reopen,
    run_broker,
    start_broker,
    wait_until,
)

from conveyor.broker import Broker, BrokerStatus, LogError
from conveyor.client import Client, ConnectionLost, JobState, RequestRefused
from conveyor.protocol import ErrorCode
from conveyor.worker import Job, Worker


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


# A full disk.


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs mounted for the test (needs root and mount permission)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command to make a small file system to fill up")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs",
                              str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up (needs root and mount permission): "
                    f"{mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(path: Path) -> None:
    """Write ``path`` until the file system has no room left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


async def finish(job: Job) -> str:
    return f"finished {job.data}"


async def test_a_full_disk_refuses_adds_lets_jobs_finish_and_recovers_when_space_frees(
    small_disk: Path,
) -> None:
    data = small_disk / "data"
    options: dict[str, Any] = {"data_dir": data, "fsync": "always"}
    broker = Broker(port=0, **options)
    await broker.start()
    url = f"127.0.0.1:{broker.port}"
    worker: Worker | None = None
    working: asyncio.Future[None] | None = None
    try:
        async with Client(url) as client:
            early = await client.add_bulk("q", [f"early {n}" for n in range(20)])
            filler = small_disk / "filler"
            fill(filler)
            # The log's last page may still have room for a few jobs; then adds are refused.
            late: list[int] = []
            with pytest.raises(RequestRefused) as refused:
                for n in range(500):
                    late.append(await client.add("q", f"late {n} " + "x" * 200))
            assert refused.value.code == ErrorCode.DISK_FULL
            assert "no space" in refused.value.message and str(data) in refused.value.message
            assert (await client.counts("q"))["waiting"] == 20 + len(late)

            # Jobs already there still run and finish.
            worker = Worker("q", finish, url=url, concurrency=5)
            working = asyncio.ensure_future(worker.run())
            assert await client.wait(early[0], timeout=10) == "finished early 0"

            async def all_done() -> bool:
                counts = await client.counts("q")
                return counts["completed"] == 20 + len(late) and counts["waiting"] == 0

            await wait_until(all_done, timeout=20, what="the jobs added before the disk filled "
                             "complete")
            with pytest.raises(RequestRefused):
                await client.add("q", "still no room")

            # Room again: adds are accepted, and what waited for room gets written.
            filler.unlink()
            after = await client.add("q", "after space frees")
            assert await client.wait(after, timeout=10) == "finished after space frees"
    finally:
        if worker is not None and working is not None:
            await worker.close()
            with contextlib.suppress(ConnectionLost):
                await working
        await broker.close()

    restarted = Broker(port=0, **options)
    await restarted.start()
    try:
        assert restarted.recovery is not None and restarted.recovery.warnings == []
        async with Client(f"127.0.0.1:{restarted.port}") as client:
            counts = await client.counts("q")
            assert (counts["completed"], counts["waiting"]) == (20 + len(late) + 1, 0)
            for job_id in [*early, *late, after]:
                job = await client.get_job(job_id)
                assert job is not None and job.state is JobState.COMPLETED
                assert job.result == f"finished {job.data}"
            refused_id = (late[-1] if late else early[-1]) + 1
            assert await client.get_job(refused_id) is None  # the refused add left nothing
    finally:
        await restarted.close()


async def test_a_disk_that_fills_when_the_log_wants_compacting_does_not_hang_the_broker(
    small_disk: Path,
) -> None:
    """Compaction needs room for a new file just when there is none: the broker goes on
    answering (refusing adds, not hanging them), and compacts once space frees."""
    data = small_disk / "data"
    broker = Broker(port=0, data_dir=data, fsync="always", compact_floor=44 * 1024,
                    compact_ratio=2.0, keep_completed=2)
    await broker.start()
    assert broker.log is not None
    url = f"127.0.0.1:{broker.port}"
    worker = Worker("q", finish, url=url, concurrency=5)
    working = asyncio.ensure_future(worker.run())
    try:
        async with Client(url) as client:

            async def drained() -> bool:
                counts = await client.counts("q")
                return counts["waiting"] == counts["active"] == 0

            async def churn(count: int) -> None:
                await client.add_bulk("q", ["x" * 500 for _ in range(count)])
                await wait_until(drained, timeout=10, what="the workers finish the jobs")

            while broker.log.size < 40 * 1024:
                await churn(10)
            # Leave two pages: the log outgrows the floor before the disk is full.
            filler = small_disk / "filler"
            free = os.statvfs(small_disk)
            with open(filler, "wb") as file:
                file.write(bytes(free.f_bavail * free.f_frsize - 8192))
            with pytest.raises(RequestRefused) as refused:
                for _ in range(100):
                    async with asyncio.timeout(10):
                        await churn(4)
            assert refused.value.code == ErrorCode.DISK_FULL
            assert broker.status is BrokerStatus.SERVING
            assert broker.log.compactions == 0

            filler.unlink()
            for _ in range(100):
                async with asyncio.timeout(10):
                    await churn(4)
                if broker.log.compactions:
                    break
            assert broker.log.compactions > 0
    finally:
        await worker.close()
        with contextlib.suppress(ConnectionLost):
            await working
        await broker.close()
    assert broker.failure is None
    queues, recovery = await asyncio.to_thread(reopen, data)
    assert recovery.warnings == []
    assert queues.counts("q")["waiting"] == 0
    assert queues.counts("q")["completed"] == broker.queues.counts("q")["completed"]


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
