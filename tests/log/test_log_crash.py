"""Crash loops with real processes: a broker killed (SIGKILL) at random moments and restarted on
the same data directory, while a producer adds jobs and two worker processes complete them.

Whatever the moment of the kill, every job whose add was acknowledged is run and completed, no
job runs that was never sent, and the counters add up.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path

import pytest
from log_handlers import RECORDS_ENV
from log_support import (
    BrokerProcess,
    WorkerProcess,
    recorded_payloads,
    start_broker,
)
from processes import eventually, free_port, wait_for_workers

from conveyor.client import Client, ConnectionLost, JobState

QUEUE = "crash"
KILLS = 9


class Producer:
    """Adds jobs with unique string payloads (one at a time, or in bulk) until stopped,
    reconnecting whenever the broker goes away. An add that fails is never retried."""

    def __init__(self, url: str, rng: random.Random) -> None:
        self.url = url
        self.rng = rng
        self.sent: list[str] = []
        """Every payload ever sent."""
        self.acked: list[tuple[int, str]] = []
        """(id, payload) of every job whose add was acknowledged."""
        self.connections = 0
        self.stopped = asyncio.Event()

    async def run(self) -> None:
        while not self.stopped.is_set():
            try:
                client = await Client(self.url, timeout=2.0, reconnect=False).connect()
            except ConnectionLost:
                await asyncio.sleep(0.02)
                continue
            self.connections += 1
            try:
                await self._produce(client)
            except ConnectionLost:
                pass
            finally:
                await client.close()

    async def _produce(self, client: Client) -> None:
        rng = self.rng
        while not self.stopped.is_set():
            if rng.random() < 0.5:
                payload = f"p{len(self.sent)}"
                self.sent.append(payload)
                self.acked.append((await client.add(QUEUE, payload), payload))
            else:
                batch = [f"p{len(self.sent) + i}" for i in range(rng.randint(2, 30))]
                self.sent += batch
                ids = await client.add_bulk(QUEUE, batch)
                self.acked += zip(ids, batch, strict=True)
            await asyncio.sleep(0.005)


@pytest.mark.parametrize("fsync", ["always", "everysec"])
async def test_a_broker_killed_at_random_moments_loses_no_acknowledged_job(
    tmp_path: Path, fsync: str,
) -> None:
    rng = random.Random(f"crash loop {fsync}")
    port = free_port()
    url = f"127.0.0.1:{port}"
    data = tmp_path / "data"
    processed = tmp_path / "processed"
    processed.mkdir()
    options = ("--fsync", fsync, "--keep-completed", "1000000", "--log-level", "warning")

    def restart() -> BrokerProcess:
        # The same port every time, so the workers' reconnects find the new broker.
        return start_broker(data, *options, port=port, stderr_path=tmp_path / "broker.stderr")

    broker = restart()
    workers = WorkerProcess("log_handlers:record_payload", queue=QUEUE, url=url, processes=2,
                            concurrency=8, env={RECORDS_ENV: str(processed)},
                            log_path=tmp_path / "workers.log")
    # The kills start once both worker processes serve the queue: a worker whose very first
    # connection is refused exits (a broker that was never reached is a start-up mistake), and
    # nothing would drain the queue.
    async with Client(url, reconnect=False) as client:
        await wait_for_workers(client, QUEUE, 2, timeout=60)
    producer = Producer(url, random.Random(rng.random()))
    producing = asyncio.ensure_future(producer.run())
    try:
        for _ in range(KILLS):
            await asyncio.sleep(rng.uniform(0.2, 0.8))
            assert broker.kill() == -9
            broker = await asyncio.to_thread(restart)
        await asyncio.sleep(0.3)
        producer.stopped.set()
        await producing
        assert producer.connections > KILLS // 2  # the producer did see the broker restart

        async with Client(url) as client:
            counts = await client.counts(QUEUE)
            total = counts["completed"] + counts["waiting"] + counts["active"]

            async def drained() -> dict[str, int] | None:
                counts = await client.counts(QUEUE)
                return counts if counts["waiting"] == counts["active"] == 0 else None

            final = await eventually(drained, timeout=60, what="the workers drain the queue")
            jobs = await asyncio.gather(*(client.get_job(job_id) for job_id, _ in producer.acked))
        assert workers.running(), workers.log
    finally:
        producer.stopped.set()
        producing.cancel()
        with contextlib.suppress(BaseException):
            await producing
        await asyncio.to_thread(workers.stop)
        broker.kill()

    sent = set(producer.sent)
    acked = dict(producer.acked)
    runs = recorded_payloads(processed)
    ran = set(runs)
    assert len(sent) == len(producer.sent)
    assert len(acked) == len(producer.acked), "a job id was given out twice"
    assert len(acked) > 200, "too little was produced to mean anything"
    assert set(acked.values()) <= ran, "an acknowledged job was never run"
    assert ran <= sent, "a job ran that was never sent"
    assert final["failed"] == 0
    assert final["completed"] == total == len(ran), (final, total, len(ran))
    print(f"{len(acked)} jobs acknowledged, {len(sent)} sent, {len(runs)} runs of {len(ran)} "
          f"jobs, {producer.connections} producer connections")
    for (job_id, payload), job in zip(producer.acked, jobs, strict=True):
        assert job is not None and job.state is JobState.COMPLETED, (job_id, job)
        assert job.data == payload and job.result == payload, (job_id, job)
