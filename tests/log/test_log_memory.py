"""Memory follows the live jobs, not what they came in: a payload kept by the broker holds its own
bytes, not the whole frame it was decoded from, nor (after a restart) the log file it was
replayed from; and replay never holds the history at once.

Measured with tracemalloc, in this process: what the broker allocates and keeps. (The figures at
full scale, from the broker process's RSS, are in ``bench/restart_memory.py``.)
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

from queue_state import raw

from conveyor.broker import Broker, FsyncPolicy
from conveyor.broker.testing import Log, Queues
from conveyor.client import Client

HISTORY = 8_000_000
"""Bytes of log the history test writes (jobs added and drained)."""
NO_COMPACTION = 1 << 50
"""--compact-floor that keeps the whole history in the log."""


async def test_a_job_that_outlives_its_history_does_not_keep_the_log_in_memory(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    broker = Broker(port=0, data_dir=data, fsync="no", compact_floor=NO_COMPACTION)
    await broker.start()
    assert broker.log is not None
    try:
        async with Client(f"127.0.0.1:{broker.port}") as client:
            survivor = await client.add("keep", "k" * 1000)
            while broker.log.size < HISTORY:
                await client.add_bulk("churn", ["h" * 1000] * 100)
                await client.drain("churn")
    finally:
        await broker.close()

    gc.collect()
    tracemalloc.start()
    try:
        restarted = Broker(port=0, data_dir=data, fsync="no", compact_floor=NO_COMPACTION)
        await restarted.start()
        try:
            gc.collect()
            kept, peak = tracemalloc.get_traced_memory()
            assert restarted.recovery is not None and restarted.recovery.jobs == 1
            assert bytes(restarted.queues.jobs[survivor].data) == b"\xda\x03\xe8" + b"k" * 1000
        finally:
            await restarted.close()
    finally:
        tracemalloc.stop()
    assert kept < 500_000, f"one live job of 1 KB keeps {kept:,} bytes after the restart"
    assert peak < HISTORY // 2, f"replaying {HISTORY:,} bytes of history took {peak:,} bytes"


async def test_a_job_kept_from_a_bulk_add_does_not_keep_its_frame(url: str) -> None:
    async with Client(url) as client:
        gc.collect()
        tracemalloc.start()
        try:
            # Nearly 1 MB, in frames of about 256 KB (the client's split); every twentieth job
            # stays, so each frame has one that does.
            ids = await client.add_bulk("q", [f"{n:04d}" + "x" * 10_000 for n in range(90)])
            for job_id in ids:
                if (job_id - ids[0]) % 20:
                    await client.remove(job_id)
            gc.collect()
            kept, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert (await client.counts("q"))["waiting"] == 5
        job = await client.get_job(ids[20])
        assert job is not None and job.data == "0020" + "x" * 10_000
    assert kept < 300_000, f"five jobs of 10 KB keep {kept:,} bytes"


async def test_replay_does_not_build_the_jobs_that_finished_for_good(tmp_path: Path) -> None:
    """Every job added before any finishes (a backlog worked off): replay meets each add long
    before its finish, and must not hold them all at once."""
    data = tmp_path / "data"
    jobs = 20_000
    queues = Queues(logged=True, keep_completed=10)
    log = Log(data, fsync=FsyncPolicy.NO, compact_floor=NO_COMPACTION)
    log.open(queues)
    payload = raw("p" * 100)
    for _ in range(jobs // 1000):
        queues.add("q", [payload] * 1000, 1.0)
        log.append(queues.take_outbox().records)
    queues.subscribe("worker", "q", 100)
    while queues.counts("q")["waiting"]:
        for _, leased in queues.dispatch(2.0):
            for job in leased:
                queues.ack("worker", job.id, job.lease, raw("done"), 2.0)
        log.append(queues.take_outbox().records)
    await log.close()

    gc.collect()
    tracemalloc.start()
    try:
        restarted = Broker(port=0, data_dir=data, fsync="no", keep_completed=10,
                           compact_floor=NO_COMPACTION)
        await restarted.start()
        try:
            _, peak = tracemalloc.get_traced_memory()
            assert restarted.queues.counts("q")["completed"] == jobs
            assert len(restarted.queues.jobs) == 10
        finally:
            await restarted.close()
    finally:
        tracemalloc.stop()
    # Building all of them would take about 10 MB.
    assert peak < 4_000_000, f"replaying {jobs:,} finished jobs took {peak:,} bytes"
