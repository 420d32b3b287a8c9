"""A power loss under ``--fsync always``: what the disk keeps is what was fsynced, and nothing
acknowledged may be missing after the restart.

The broker runs with a hook at its fsyncs that records, for each log file, its size when the
last completed fsync began (``log.synced``), and with slow fsyncs, so one is nearly always under
way. Producers add jobs (single, bulk, and pairs of adds racing on one idempotency key) until the
broker is killed; then every log file is cut back to what its last fsync covered, as a power
loss would leave it, and the restarted broker must have every job whose add was acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from pathlib import Path

from log_support import HERE, start_broker
from processes import eventually

from conveyor.client import Client, ConnectionLost, JobSpec

QUEUE = "power"
FSYNC_DELAY = 0.02
"""Seconds every fsync takes on top of its own: a slow disk."""


class Producers:
    """Adds jobs on several connections until the broker goes away; remembers every add that
    was acknowledged."""

    def __init__(self, url: str, round_: int) -> None:
        self.url = url
        self.round = round_
        self.acked: dict[int, tuple[str | None, str | None]] = {}
        """Job id of every acknowledged add: (payload, key), one of them None."""
        self.keyed = 0
        """Acknowledged adds that named a key another producer was adding at the same time."""

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                for n in range(3):
                    tasks.create_task(self._plain(f"r{self.round}p{n}", random.Random(n)))
                for n in range(5):
                    tasks.create_task(self._racing_keys(f"r{self.round}k{n}"))
        except* ConnectionLost:
            pass  # the broker died: what was acknowledged by then is what counts

    async def _plain(self, name: str, rng: random.Random) -> None:
        async with Client(self.url) as client:
            for n in range(1_000_000):
                if rng.random() < 0.5:
                    payload = f"{name}-{n}"
                    self.acked[await client.add(QUEUE, payload)] = (payload, None)
                else:
                    payloads = [f"{name}-{n}-{i}" for i in range(rng.randint(2, 40))]
                    ids = await client.add_bulk(QUEUE, payloads)
                    self.acked.update((i, (p, None)) for i, p in zip(ids, payloads, strict=True))

    async def _racing_keys(self, name: str) -> None:
        """Pairs of adds of one key on two connections, the second sent while the first waits
        for its fsync."""
        async with Client(self.url) as first, Client(self.url) as second:
            for n in range(1_000_000):
                key = f"{name}-{n}"
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self._add_key(first, key, bulk=n % 2 == 0))
                    await asyncio.sleep(FSYNC_DELAY / 2)
                    tasks.create_task(self._add_key(second, key, bulk=n % 2 == 1))

    async def _add_key(self, client: Client, key: str, *, bulk: bool) -> None:
        if bulk:
            (job_id,) = await client.add_bulk(QUEUE, [JobSpec(key, id=key)])
        else:
            job_id = await client.add(QUEUE, key, id=key)
        self.acked[job_id] = (None, key)
        self.keyed += 1


def lose_power(data: Path, synced: Path, before: set[str]) -> None:
    """Cut every log file back to its size when the last fsync that covered it began; a file
    created since the broker started and never fsynced is emptied."""
    sizes: dict[str, int] = {}
    if synced.exists():
        for line in synced.read_text().splitlines():
            sizes.update(json.loads(line))
    for path in data.glob("*.log"):
        size = sizes.get(str(path))
        if size is None:
            size = path.stat().st_size if path.name in before else 0
        os.truncate(path, size)


async def test_a_power_loss_under_fsync_always_loses_no_acknowledged_add(tmp_path: Path) -> None:
    data = tmp_path / "data"
    acked: dict[int, tuple[str | None, str | None]] = {}
    for round_ in range(3):
        synced = tmp_path / f"synced-{round_}.jsonl"
        before = {path.name for path in data.glob("*.log")} if data.exists() else set()
        broker = await asyncio.to_thread(
            start_broker, data, "--fsync", "always", "--log-level", "warning",
            stderr_path=tmp_path / f"broker-{round_}.stderr",
            command=[sys.executable, str(HERE / "log_failpoint_broker.py")],
            env={"CONVEYOR_TEST_SYNCED": str(synced),
                 "CONVEYOR_TEST_FSYNC_DELAY": str(FSYNC_DELAY)})
        producers = Producers(broker.url, round_)
        producing = asyncio.ensure_future(producers.run())
        try:

            async def busy(producers: Producers = producers) -> bool:
                return len(producers.acked) >= 300 and producers.keyed >= 20

            await eventually(busy, timeout=30, what="the producers get adds acknowledged")
            # The power goes: the broker dies at once, and the disk keeps what was fsynced.
            assert broker.kill() == -9
            await asyncio.wait_for(producing, 10)
        finally:
            broker.kill()
            producing.cancel()
        lose_power(data, synced, before)
        acked.update(producers.acked)

        restarted = await asyncio.to_thread(start_broker, data,
                                            stderr_path=tmp_path / f"restart-{round_}.stderr")
        try:
            async with Client(restarted.url) as client:
                jobs = await asyncio.gather(*(client.get_job(job_id) for job_id in acked))
            missing = [job_id for job_id, job in zip(acked, jobs, strict=True) if job is None]
            assert not missing, f"{len(missing)} acknowledged adds lost: {missing[:10]}"
            for job_id, job in zip(acked, jobs, strict=True):
                assert job is not None
                payload, key = acked[job_id]
                if key is None:
                    assert job.data == payload
                else:
                    assert job.key == key
        finally:
            assert await asyncio.to_thread(restarted.stop) == 0
