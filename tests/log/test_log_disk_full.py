"""A full disk under the log: adds are refused while every other change goes on being written,
into the reserve the log gives up for them; the log compacts its own history away and takes
adds again by itself; and once even the reserve is used up, the broker holds every request
back rather than make a change the log might not get. Completed jobs stay completed after a
restart, and no total a client saw ever goes down.

On a real small disk (a tmpfs, when the tests run as root) and on a disk of a given capacity
enforced at the log's failpoints (``FakeDisk``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from log_support import Failpoints, reopen

from conveyor.broker import Broker
from conveyor.client import Client, ConnectionLost, JobState, RequestRefused
from conveyor.protocol import ErrorCode
from conveyor.worker import Job, Worker

PAYLOAD = "x" * 8000


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``mount_tmpfs(size)``: a tmpfs of ``size`` (``"4m"``) mounted for the test, unmounted
    after it; the test is skipped unless it runs as root (with ``mount``)."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        point = tmp_path / f"disk-{len(mounted)}"
        point.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no mount command: cannot make a small file system to fill up")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(point)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a {size} tmpfs to fill up (the test needs root): "
                        f"{done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        if subprocess.run(["umount", str(point)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(point)], check=True)


class FakeDisk:
    """A disk of some capacity under one data directory, enforced at the log's failpoints: a
    write of records, or the growth of the reserve, that would take the directory's files past
    it fails with ENOSPC. (The compaction child writes its base for real; the broker then finds
    it on this disk.)"""

    def __init__(self, directory: Path, failpoints: Failpoints) -> None:
        self.directory = directory
        self.capacity: int | None = None
        failpoints.install("log.write", self._write)
        failpoints.install("log.reserve", self._reserve)

    def used(self) -> int:
        total = 0
        for path in self.directory.iterdir():
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    def fill(self) -> None:
        """The disk is full from now on: it holds what the directory holds now."""
        self.capacity = self.used()

    def grow(self) -> None:
        """Room without limit from now on."""
        self.capacity = None

    def _write(self, size: object) -> None:
        assert isinstance(size, int)
        if self.capacity is not None and self.used() + size > self.capacity:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def _reserve(self, size: object) -> None:
        assert isinstance(size, int)
        with contextlib.suppress(FileNotFoundError):
            size -= (self.directory / "RESERVE").stat().st_size
        if self.capacity is not None and self.used() + size > self.capacity:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


async def finish(job: Job) -> str:
    return f"finished {job.data[:8]}"


class Churn:
    """Adds jobs and waits for a worker to complete them, again and again; remembers what the
    client saw: the adds refused for lack of room, the jobs completed, the highest totals."""

    def __init__(self, client: Client, broker: Broker) -> None:
        self.client = client
        self.broker = broker
        self.serial = 0
        self.refused = 0
        self.done: list[int] = []
        """Jobs the client saw completed, in order."""
        self.completed = 0
        """The highest ``completed`` total seen."""

    async def once(self) -> bool:
        """One round of ten jobs; False when the adds were refused for lack of room."""
        payloads = [f"{self.serial + n:08d}" + PAYLOAD for n in range(10)]
        self.serial += 10
        try:
            ids = await self.client.add_bulk("q", payloads)
        except RequestRefused as exc:
            assert exc.code == ErrorCode.DISK_FULL, exc
            self.refused += 1
            return False
        results = await asyncio.gather(*(self.client.wait(i, timeout=20) for i in ids))
        assert results == [f"finished {p[:8]}" for p in payloads]
        self.done += ids
        await self.check_totals()
        return True

    async def check_totals(self) -> None:
        completed = (await self.client.counts("q"))["completed"]
        assert completed >= self.completed, "the completed total went down"
        self.completed = completed

    async def until_log_holds(self, size: int) -> None:
        log = self.broker.log
        assert log is not None
        while log.size < size:
            assert await self.once()

    async def through_a_full_disk(self) -> None:
        """Go on until adds are refused, then until they are accepted again (ten rounds in a
        row): the broker must make room by itself."""
        deadline = time.monotonic() + 60
        accepted = 0
        while not (self.refused and accepted >= 10):
            assert time.monotonic() < deadline, (
                f"{self.refused} rounds refused, then {accepted} accepted, after 60 s")
            if await self.once():
                accepted += 1
            else:
                accepted = 0
                await asyncio.sleep(0.02)  # the broker compacts meanwhile: nothing to do here


async def check_after_restart(options: dict[str, Any], churn: Churn, keep: int) -> None:
    restarted = Broker(port=0, **options)
    await restarted.start()
    try:
        async with Client(f"127.0.0.1:{restarted.port}") as client:
            counts = await client.counts("q")
            assert counts["completed"] == churn.completed
            assert counts["waiting"] == counts["active"] == 0
            for job_id in churn.done[-keep:]:
                job = await client.get_job(job_id)
                assert job is not None and job.state is JobState.COMPLETED, job
    finally:
        await restarted.close()


async def churn_through_a_full_disk(options: dict[str, Any], fill: Callable[[], None], *,
                                    history: int) -> Churn:
    """Churn until the log holds ``history`` bytes, ``fill()`` the disk, and churn through it."""
    broker = Broker(port=0, **options)
    await broker.start()
    assert broker.log is not None
    url = f"127.0.0.1:{broker.port}"
    worker = Worker("q", finish, url=url, concurrency=10)
    working = asyncio.ensure_future(worker.run())
    try:
        async with Client(url) as client:
            churn = Churn(client, broker)
            await churn.until_log_holds(history)
            fill()
            await churn.through_a_full_disk()
            assert broker.log.compactions > 0
            assert not broker.log.full
    finally:
        await worker.close()
        with contextlib.suppress(ConnectionLost):
            await working
        await broker.close()
    return churn


async def test_a_small_disk_full_of_the_logs_history_is_compacted_and_takes_adds_again(
    mount_tmpfs: Callable[[str], Path],
) -> None:
    disk = mount_tmpfs("4m")
    options: dict[str, Any] = {"data_dir": disk / "data", "fsync": "always",
                               "keep_completed": 10, "disk_reserve": 512 * 1024}
    # The log's own history fills the disk: the default floor (64 MiB) would never compact.
    churn = await churn_through_a_full_disk(options, lambda: None, history=0)
    await check_after_restart(options, churn, keep=10)


async def test_a_disk_full_of_the_logs_history_is_compacted_and_takes_adds_again(
    tmp_path: Path, failpoints: Failpoints,
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    disk = FakeDisk(data, failpoints)
    options: dict[str, Any] = {"data_dir": data, "fsync": "always", "keep_completed": 10,
                               "disk_reserve": 256 * 1024}
    # Full when the log holds 1 MB: compaction then gives back room for the reserve (256 KiB)
    # and as much again, which is what the log waits for to take adds again.
    churn = await churn_through_a_full_disk(options, disk.fill, history=1_000_000)
    disk.grow()
    await check_after_restart(options, churn, keep=10)


async def test_with_the_reserve_used_up_requests_wait_and_no_change_is_lost(
    tmp_path: Path, failpoints: Failpoints,
) -> None:
    """Compaction cannot help (it fails): once the changes made on a full disk have used up the
    reserve, requests wait, unanswered and not applied, so nothing a client saw is lost even
    by a restart on a disk that is still full."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    disk = FakeDisk(data, failpoints)

    def no_room_for_a_base(detail: object) -> None:
        raise OSError(errno.ENOSPC, "no room for the new base")

    failpoints.install("compaction.switched", no_room_for_a_base)
    options: dict[str, Any] = {"data_dir": data, "fsync": "always", "keep_completed": 1000,
                               "disk_reserve": 128 * 1024, "shutdown_grace": 0.5}
    broker = Broker(port=0, **options)
    await broker.start()
    assert broker.log is not None
    url = f"127.0.0.1:{broker.port}"
    jobs = 300
    completed = 0
    worker: Worker | None = None
    try:
        async with Client(url) as client:
            await client.add_bulk("q", [f"{n:08d}" + "x" * 2000 for n in range(jobs)])
            disk.fill()

            async def big_result(job: Job) -> str:
                return "r" * 2000  # each ack's record takes 2 KB of the reserve

            worker = Worker("q", big_result, url=url, concurrency=10)
            working = asyncio.ensure_future(worker.run())
            deadline = time.monotonic() + 30
            while completed < jobs:
                assert time.monotonic() < deadline, "requests still answered after 30 s"
                try:
                    async with asyncio.timeout(1):
                        counts = await client.counts("q")
                except TimeoutError:
                    break  # requests wait: the reserve is used up
                assert counts["completed"] >= completed
                completed = counts["completed"]
            assert broker.log.exhausted
            assert completed < jobs
    finally:
        # The broker first: requests wait, the worker's own goodbye too.
        await broker.close()
        if worker is not None:
            await worker.close()
            with contextlib.suppress(ConnectionLost):
                await working
    # Still full: the restart finds no room for a reserve either, and says so.
    queues, recovery = await asyncio.to_thread(reopen, data, keep_completed=1000)
    assert queues.counts("q")["completed"] >= completed
    assert queues.counts("q")["completed"] + queues.counts("q")["waiting"] == jobs
    assert any("no room for the log's reserve" in warning for warning in recovery.warnings)


async def test_a_disk_filled_by_something_else_refuses_adds_lets_jobs_finish_and_recovers(
    tmp_path: Path, failpoints: Failpoints,
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    disk = FakeDisk(data, failpoints)
    options: dict[str, Any] = {"data_dir": data, "fsync": "always", "disk_reserve": 256 * 1024}
    broker = Broker(port=0, **options)
    await broker.start()
    url = f"127.0.0.1:{broker.port}"
    worker: Worker | None = None
    try:
        async with Client(url) as client:
            payloads = [f"early {n}" for n in range(20)]
            early = await client.add_bulk("q", payloads)
            disk.fill()
            with pytest.raises(RequestRefused) as refused:
                await client.add("q", "late")
            assert refused.value.code == ErrorCode.DISK_FULL
            # The jobs already there still run: their acks go into the reserve.
            worker = Worker("q", finish, url=url, concurrency=5)
            working = asyncio.ensure_future(worker.run())
            assert await asyncio.gather(*(client.wait(i, timeout=10) for i in early)) == [
                f"finished {payload[:8]}" for payload in payloads]
            with pytest.raises(RequestRefused):
                await client.add("q", "still no room")

            # Room again: within a second or so, adds are accepted.
            disk.grow()
            deadline = time.monotonic() + 10
            while True:
                try:
                    after = await client.add("q", "after room")
                    break
                except RequestRefused as exc:
                    assert exc.code == ErrorCode.DISK_FULL
                    assert time.monotonic() < deadline, "adds still refused 10 s after room"
                    await asyncio.sleep(0.05)
            assert await client.wait(after, timeout=10) == "finished after ro"
    finally:
        if worker is not None:
            await worker.close()
            with contextlib.suppress(ConnectionLost):
                await working
        await broker.close()

    queues, recovery = await asyncio.to_thread(reopen, data)
    assert recovery.warnings == []
    assert queues.counts("q")["completed"] == 21
    assert [job.id for job in queues.jobs.values()] == [*early, after]
