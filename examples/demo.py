"""``make demo``: a bulk add spread across idle worker processes the moment it arrives.

Starts a broker and 3 worker processes (concurrency 1), adds 3 one-second jobs with one
``add_bulk`` and shows which process started each job, and when; then 100 short jobs and how they
were shared; then stops everything.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conveyor.client import Client  # noqa: E402
from examples.processes import BrokerProcess, WorkerProcesses, wait_for_workers  # noqa: E402

QUEUE = "demo"
WORKERS = 3


async def seed_case(client: Client) -> None:
    print(f"\nRound 1: one add_bulk of {WORKERS} jobs that each sleep 1 s")
    ids = await client.add_bulk(QUEUE, [{"seconds": 1.0}] * WORKERS)
    returned = time.time()
    results = await asyncio.gather(*(client.wait(job_id, timeout=30) for job_id in ids))
    print(f"  {'job':>4}  {'worker pid':>10}  {'started, ms after add_bulk returned':>36}")
    for job_id, result in zip(ids, results, strict=True):
        offset_ms = (result["started"] - returned) * 1000
        print(f"  {job_id:>4}  {result['pid']:>10}  {offset_ms:>+36.2f}")
    starts = [result["started"] for result in results]
    pids = {result["pid"] for result in results}
    print(f"  spread of start times: {(max(starts) - min(starts)) * 1000:.2f} ms "
          f"across {len(pids)} worker processes")


async def many_short_jobs(client: Client) -> None:
    count = 100
    print(f"\nRound 2: one add_bulk of {count} jobs that each sleep 10 ms")
    began = time.perf_counter()
    ids = await client.add_bulk(QUEUE, [{"seconds": 0.01}] * count)
    results = await asyncio.gather(*(client.wait(job_id, timeout=30) for job_id in ids))
    elapsed = time.perf_counter() - began
    per_pid = collections.Counter(result["pid"] for result in results)
    print(f"  {'worker pid':>10}  {'jobs':>5}")
    for pid, jobs in sorted(per_pid.items()):
        print(f"  {pid:>10}  {jobs:>5}")
    print(f"  all {count} done in {elapsed * 1000:.0f} ms "
          f"(ideal {count * 10 / WORKERS:.0f} ms with {WORKERS} workers)")


async def main() -> None:
    broker = BrokerProcess()
    print(f"broker listening on {broker.url} (pid {broker.process.pid})")
    workers = WorkerProcesses("examples.tasks:sleep", QUEUE, broker.url, processes=WORKERS)
    try:
        async with Client(broker.url) as client:
            await wait_for_workers(client, QUEUE, WORKERS)
            print(f"{WORKERS} worker processes (concurrency 1) subscribed to {QUEUE!r}")
            await seed_case(client)
            await many_short_jobs(client)
    finally:
        print("\nstopping workers:", "ok" if workers.stop() == 0 else "failed")
        print("stopping broker:", "ok" if broker.stop() == 0 else "failed")


if __name__ == "__main__":
    asyncio.run(main())
