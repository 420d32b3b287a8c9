"""Compaction: a crash at any step of it loses nothing the client saw and leaves no stray files;
the log stays within a small multiple of the live data however long the history, even with a job
that lives through all of it; and a restart does not set off needless compactions."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from log_support import Failpoints, dir_log_bytes, reopen, start_broker
from processes import eventually

from conveyor.broker import Broker
from conveyor.broker.testing import FAILPOINTS
from conveyor.client import Client, ConnectionLost, JobState
from conveyor.worker import Job, Worker

QUEUE = "churn"
IDLE = "idle"
"""A queue no worker takes from: its job lives through the whole history."""
KEEP = 5
"""Completed jobs retained per queue: small, so the live data stays small while the log grows."""
FLOOR = 100_000
"""--compact-floor for the failpoint runs (bytes)."""


async def echo_head(job: Job) -> str:
    return f"done {job.data[:6]}"


def manifest(directory: Path) -> dict[str, Any]:
    result: dict[str, Any] = msgspec.json.decode((directory / "MANIFEST").read_bytes())
    return result


def named_files(directory: Path) -> set[str]:
    """The manifest, the lock, the reserve, and the files the manifest names."""
    named = manifest(directory)
    files = {"MANIFEST", "LOCK", "RESERVE", *named["increments"]}
    if named["base"] is not None:
        files.add(named["base"])
    return files


def assert_no_stray_files(directory: Path) -> None:
    """Only the files the manifest names (and the manifest and lock) are in the directory."""
    assert sorted(p.name for p in directory.iterdir()) == sorted(named_files(directory))


STRAYS = {
    "compaction.switched": set(),
    "compaction.written": {"base.log.tmp"},
    "compaction.renamed": {"base.log"},
    "compaction.manifest": {"incr.log"},
}
"""The kinds of file a crash at each failpoint leaves that the manifest does not name."""


class Sequential:
    """Adds one job at a time and waits for its completion by a worker, so exactly one
    operation is in flight whenever the broker dies; remembers what the client saw."""

    def __init__(self) -> None:
        self.acked: list[tuple[int, str]] = []
        """(id, payload) of every acknowledged add, in order."""
        self.completed: list[int] = []
        """Jobs the client saw completed, in order."""
        self.in_flight: tuple[str, Any] | None = None
        """("add", payload) or ("complete", id): what was under way when the connection died."""

    async def run(self, client: Client, jobs: int, start: int = 0) -> None:
        for n in range(start, start + jobs):
            payload = f"{n:06d}" + "x" * 2000
            self.in_flight = ("add", payload)
            job_id = await client.add(QUEUE, payload)
            self.acked.append((job_id, payload))
            self.in_flight = ("complete", job_id)
            assert await client.wait(job_id, timeout=20) == f"done {n:06d}"
            self.completed.append(job_id)
            self.in_flight = None


async def run_worker(url: str) -> tuple[Worker, asyncio.Future[None]]:
    worker = Worker(QUEUE, echo_head, url=url, concurrency=1, reconnect=False)
    return worker, asyncio.ensure_future(worker.run())


async def stop_worker(worker: Worker, running: asyncio.Future[None]) -> None:
    await worker.close()
    with contextlib.suppress(ConnectionLost):
        await running


@pytest.mark.parametrize("failpoint", FAILPOINTS)
async def test_a_crash_at_any_step_of_compaction_loses_nothing_the_client_saw(
    tmp_path: Path, failpoint: str,
) -> None:
    data = tmp_path / "data"
    options = ("--fsync", "always", "--compact-floor", str(FLOOR), "--compact-ratio", "2",
               "--keep-completed", str(KEEP), "--log-level", "warning")
    broker = await asyncio.to_thread(start_broker, data, *options,
                                     env={"CONVEYOR_FAILPOINT": failpoint},
                                     stderr_path=tmp_path / "broker.stderr")
    seen = Sequential()
    worker, working = await run_worker(broker.url)
    try:
        async with Client(broker.url) as client:
            idle_id = await client.add(IDLE, "long-lived")
            with pytest.raises(ConnectionLost):
                await seen.run(client, jobs=5_000)
        assert await asyncio.to_thread(broker.wait, 20) == -9, broker.stderr
    finally:
        broker.kill()
        await stop_worker(worker, working)
    assert seen.in_flight is not None
    assert len(seen.acked) > FLOOR // 2100 - 2  # it died once the log outgrew the floor
    # The crash left what that step leaves behind (the restart must clean it up).
    strays = {p.name for p in data.iterdir()} - named_files(data)
    assert {name.split("-")[0] + name[name.index("."):] for name in strays} == STRAYS[failpoint]

    broker = await asyncio.to_thread(start_broker, data, *options,
                                     stderr_path=tmp_path / "restarted.stderr")
    try:
        assert_no_stray_files(data)
        async with Client(broker.url) as client:
            await check_recovered(client, seen, idle_id)

            # The log goes on compacting (now without the failpoint), and keeps everything.
            base = manifest(data)["base"]
            worker, working = await run_worker(broker.url)
            try:
                for round_ in range(40):
                    await seen.run(client, jobs=20, start=10_000 + 20 * round_)
                    if manifest(data)["base"] not in (None, base):
                        break
                else:
                    raise AssertionError("no compaction after the restart")
            finally:
                await stop_worker(worker, working)
            # Every job ever acknowledged has completed, the one left waiting by the crash too.
            counts = await client.counts(QUEUE)
            assert (counts["completed"], counts["waiting"]) == (len(seen.acked), 0)
        assert await asyncio.to_thread(broker.stop) == 0
    finally:
        broker.kill()
    assert_no_stray_files(data)


async def check_recovered(client: Client, seen: Sequential, idle_id: int) -> None:
    """The restarted broker holds exactly what the client saw, give or take the one operation
    that was in flight at the crash (it may or may not have been written)."""
    assert seen.in_flight is not None
    kind, what = seen.in_flight
    counts = await client.counts(QUEUE)
    completed = list(seen.completed)
    if kind == "add":
        # Not acknowledged: it is there (waiting, next id) or not at all.
        assert counts["completed"] == len(completed)
        assert counts["waiting"] in (0, 1)
        if counts["waiting"]:
            job = await client.get_job(seen.acked[-1][0] + 1)
            assert job is not None and job.data == what and job.state is JobState.WAITING
            seen.acked.append((job.id, what))
    else:
        # Acknowledged: there, completed (if the worker's ack was written) or waiting again.
        assert counts["completed"] in (len(completed), len(completed) + 1)
        assert counts["completed"] + counts["waiting"] == len(completed) + 1
        if counts["completed"] > len(completed):
            completed.append(what)
    assert counts["active"] == counts["failed"] == 0
    retained = set(completed[-KEEP:])
    payloads = dict(seen.acked)
    for job_id in [*completed[-KEEP - 3:], *payloads.keys() - set(completed)]:
        job = await client.get_job(job_id)
        if job_id in retained:
            assert job is not None and job.state is JobState.COMPLETED, job
            assert job.data == payloads[job_id] and job.result == f"done {job.data[:6]}"
        elif job_id in completed:
            assert job is None  # finished long ago: no longer retained, before or after
        else:
            assert job is not None and job.state is JobState.WAITING, job
            assert job.data == payloads[job_id]
    idle = await client.get_job(idle_id)
    assert idle is not None and idle.state is JobState.WAITING and idle.data == "long-lived"
    assert (await client.counts(IDLE))["waiting"] == 1
    seen.completed = completed


async def test_a_long_lived_job_does_not_keep_the_log_from_shrinking(tmp_path: Path) -> None:
    """One job waits through a history twelve times the floor; the log's files never take more
    than a few times the floor, and the job survives a restart."""
    floor = 256 * 1024
    data = tmp_path / "data"
    options: dict[str, Any] = {"data_dir": data, "fsync": "always", "compact_floor": floor,
                               "compact_ratio": 2.0, "keep_completed": 20}
    broker = Broker(port=0, **options)
    await broker.start()
    url = f"127.0.0.1:{broker.port}"
    worker = Worker(QUEUE, echo_head, url=url, concurrency=20)
    working = asyncio.ensure_future(worker.run())
    largest = 0
    churned = 0
    try:
        async with Client(url) as client:
            idle_id = await client.add(IDLE, "long-lived")
            assert broker.log is not None
            while churned < 12 * floor:
                ids = await client.add_bulk(QUEUE, [f"{n:06d}" + "x" * 200 for n in range(50)])
                await asyncio.gather(*(client.wait(job_id, timeout=20) for job_id in ids))
                churned += 50 * 200
                size = dir_log_bytes(data)
                largest = max(largest, size)
                if size > 2 * floor:
                    # Wait for the compaction the history calls for instead of racing it: what
                    # is under test is that it shrinks the log whatever the long-lived job, not
                    # how fast a child process starts on a loaded machine.
                    done = broker.log.compactions

                    async def compacted(done: int = done) -> bool:
                        assert broker.log is not None
                        return broker.log.compactions > done

                    await eventually(compacted, timeout=30, what="a compaction")
            completed = (await client.counts(QUEUE))["completed"]
        assert broker.log is not None
        assert broker.log.compactions >= 3
        assert largest < 4 * floor, f"the log's files reached {largest / floor:.1f} x the floor"
    finally:
        await worker.close()
        await working
        await broker.close()
    assert dir_log_bytes(data) < 2 * floor

    restarted = Broker(port=0, **options)
    await restarted.start()
    try:
        async with Client(f"127.0.0.1:{restarted.port}") as client:
            idle = await client.get_job(idle_id)
            assert idle is not None and idle.state is JobState.WAITING
            assert idle.data == "long-lived"
            assert (await client.counts(IDLE))["waiting"] == 1
            counts = await client.counts(QUEUE)
            assert (counts["completed"], counts["waiting"]) == (completed, 0)
    finally:
        await restarted.close()


async def test_a_restart_with_live_data_above_the_floor_does_not_compact_again_and_again(
    tmp_path: Path,
) -> None:
    """Live data larger than the floor, in a log no bigger than it: nothing to gain from a
    compaction, before or after a restart (a restart must not forget how big the live data is,
    or every pass would start another compaction child)."""
    options: dict[str, Any] = {"data_dir": tmp_path / "data", "fsync": "always",
                               "compact_floor": 32 * 1024, "compact_ratio": 2.0,
                               "keep_completed": 2}
    broker = Broker(port=0, **options)
    await broker.start()
    try:
        async with Client(f"127.0.0.1:{broker.port}") as client:
            await client.add_bulk(IDLE, ["y" * 1000 for _ in range(100)])
            await client.add_bulk(QUEUE, ["z" * 1000 for _ in range(30)])
            worker, working = await run_worker(f"127.0.0.1:{broker.port}")
            try:
                await eventually(lambda: _completed(client, 30), timeout=20,
                                 what="the 30 jobs complete")
            finally:
                await stop_worker(worker, working)
    finally:
        await broker.close()
    assert broker.log is not None and broker.log.compactions == 0

    restarted = Broker(port=0, **options)
    await restarted.start()
    try:
        async with Client(f"127.0.0.1:{restarted.port}") as client:
            for _ in range(10):
                await client.add(IDLE, "wake the log")
                await asyncio.sleep(0.1)
            assert (await client.counts(IDLE))["waiting"] == 110
        assert restarted.log is not None and restarted.log.compactions == 0
    finally:
        await restarted.close()


async def _completed(client: Client, count: int) -> bool:
    return (await client.counts(QUEUE))["completed"] == count


async def churn_until(client: Client, condition: Callable[[], bool], what: str) -> None:
    """Add jobs and drain them (history the log can shed) until ``condition()`` holds."""
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, f"{what}: still not true after 20 s"
        await client.add_bulk(QUEUE, ["x" * 500] * 10)
        await client.drain(QUEUE)


async def test_a_compaction_that_keeps_failing_adds_no_increment_per_try(
    tmp_path: Path, failpoints: Failpoints,
) -> None:
    data = tmp_path / "data"
    tries = 0

    def fail(detail: object) -> None:
        nonlocal tries
        tries += 1
        raise OSError(errno.ENOSPC, "no room for the new base")

    failpoints.install("compaction.switched", fail)
    broker = Broker(port=0, data_dir=data, fsync="always", compact_floor=8192,
                    compact_ratio=1.5)
    await broker.start()
    log = broker.log
    assert log is not None
    log.compactor.retry = 0.01
    try:
        async with Client(f"127.0.0.1:{broker.port}") as client:
            await churn_until(client, lambda: tries >= 5, "five compactions fail")
            # The first try froze the files; every later one took them again.
            assert len(manifest(data)["increments"]) == 2
            assert len(list(data.glob("incr-*.log"))) == 2

            frozen = manifest(data)["increments"][0]
            failpoints.install("compaction.switched", None)
            await churn_until(client, lambda: log.compactions > 0, "a compaction succeeds")
            # It replaced the files the first try froze (another may have begun since).
            assert manifest(data)["base"] is not None

            async def one_increment() -> bool:
                # Eventually: a compaction the last churn started may have frozen the current
                # increment a moment ago; what the failed tries froze must not stay behind.
                return len(manifest(data)["increments"]) == 1

            await eventually(one_increment, timeout=30, what="one increment after compacting")
            assert not (data / frozen).exists()
            kept = await client.add(IDLE, "kept")
    finally:
        await broker.close()
    assert_no_stray_files(data)
    queues, recovery = await asyncio.to_thread(reopen, data)
    assert recovery.warnings == []
    assert bytes(queues.jobs[kept].data) == msgspec.msgpack.encode("kept")


async def test_a_compaction_fsyncs_renames_and_deletes_files_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = tmp_path / "data"
    broker = Broker(port=0, data_dir=data, fsync="always", compact_floor=8192,
                    compact_ratio=1.5)
    await broker.start()
    log = broker.log
    assert log is not None
    loop_thread = threading.get_ident()
    on_the_loop: list[str] = []

    def watch(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def watched(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == loop_thread:
                on_the_loop.append(f"{name}{args}")
            return call(*args, **kwargs)
        return watched

    for name in ("fsync", "rename", "unlink"):
        monkeypatch.setattr(os, name, watch(name, getattr(os, name)))
    try:
        async with Client(f"127.0.0.1:{broker.port}") as client:
            await churn_until(client, lambda: log.compactions >= 2, "two compactions")
    finally:
        monkeypatch.undo()
        await broker.close()
    assert on_the_loop == []


async def test_the_log_is_compacted_under_fsync_no_too(tmp_path: Path) -> None:
    """Under ``--fsync no`` nothing is fsynced by the clock, yet the log is still compacted."""
    data = tmp_path / "data"
    broker = Broker(port=0, data_dir=data, fsync="no", compact_floor=8192, compact_ratio=1.5)
    await broker.start()
    log = broker.log
    assert log is not None
    try:
        async with Client(f"127.0.0.1:{broker.port}") as client:
            await churn_until(client, lambda: log.compactions > 0, "a compaction")
            kept = await client.add(IDLE, "kept")
    finally:
        await broker.close()
    assert manifest(data)["base"] is not None
    queues, recovery = await asyncio.to_thread(reopen, data)
    assert recovery.warnings == []
    assert bytes(queues.jobs[kept].data) == msgspec.msgpack.encode("kept")
