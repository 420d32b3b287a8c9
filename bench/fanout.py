"""Fan-out: one ``add_bulk`` of N jobs that each sleep 1 ms, spread over W idle worker processes.

One broker (``--fsync``, default everysec) keeping every completed job, W worker processes of
concurrency 1 (``examples.tasks:sleep``, which returns its pid and the wall-clock time it started),
one producer ``Client``. Timed from the ``add_bulk`` call:

first start per worker
    When each worker process started its first job. They all come before ``add_bulk`` returns:
    the client pipelines the bulk as many frames and the broker dispatches each frame's jobs as it
    arrives, while later frames are still in flight. Also reported: the jobs the broker already
    counted completed when ``add_bulk`` returned.
total
    Until the broker counts N completed jobs (polled every 2 ms), against the ideal N x sleep / W.

First starts come from the results of the first jobs in id order (dispatch is first in, first out,
so each worker's first job is among them), read with ``wait`` after the run.

Prints a table and one JSON line with every figure and the target: every worker's first start
within 20 ms of the call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from measure import rounded, wait_finished  # noqa: E402

from conveyor.client import Client  # noqa: E402
from examples.processes import BrokerProcess, WorkerProcesses, wait_for_workers  # noqa: E402

TARGET_FIRST_START_MS = 20.0
"""Most milliseconds from the ``add_bulk`` call to any worker's first start."""

_READ_CHUNK = 2_000
"""Results read at once when looking for each worker's first start."""


async def first_starts(client: Client, ids: list[int], workers: int) -> dict[int, float]:
    """Each worker pid's earliest start, reading results in id order until all are seen."""
    first: dict[int, float] = {}
    for offset in range(0, len(ids), _READ_CHUNK):
        results = await asyncio.gather(*(client.wait(job_id, timeout=30)
                                         for job_id in ids[offset:offset + _READ_CHUNK]))
        for result in results:
            pid, started = result["pid"], result["started"]
            first[pid] = min(started, first.get(pid, started))
        if len(first) >= workers:
            break
    return first


async def run(jobs: int, workers: int, sleep: float, fsync: str) -> dict[str, Any]:
    queue = "fanout"
    broker = BrokerProcess("--fsync", fsync, "--keep-completed", str(jobs))
    try:
        pool = WorkerProcesses("examples.tasks:sleep", queue, broker.url, processes=workers)
        try:
            async with Client(broker.url, timeout=120) as client:
                await wait_for_workers(client, queue, workers, timeout=60)
                payloads = [{"seconds": sleep}] * jobs
                called_wall = time.time()
                called = time.perf_counter()
                ids = await client.add_bulk(queue, payloads)
                returned = time.perf_counter()
                done_at_return = (await client.counts(queue))["completed"]
                finished = await wait_finished(client, queue, jobs)
                first = await first_starts(client, ids, workers)
        finally:
            pool.stop()
    finally:
        broker.stop()
    starts_ms = sorted((started - called_wall) * 1000 for started in first.values())
    total = finished - called
    ideal = jobs * sleep / workers
    return {
        "jobs": jobs, "workers": workers, "sleep_s": sleep, "fsync": fsync,
        "workers_seen": len(first),
        "first_starts_ms": starts_ms,
        "add_bulk_returned_ms": (returned - called) * 1000,
        "completed_at_return": done_at_return,
        "total_s": total, "ideal_s": ideal, "efficiency": ideal / total,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs (default: 100000)")
    parser.add_argument("--workers", type=int, default=8,
                        help="worker processes, concurrency 1 each (default: 8)")
    parser.add_argument("--sleep", type=float, default=0.001, metavar="SECONDS",
                        help="each job's sleep (default: 0.001)")
    parser.add_argument("--fsync", choices=["always", "everysec", "no"], default="everysec",
                        help="the broker's fsync policy (default: everysec)")
    args = parser.parse_args()
    row = await run(args.jobs, args.workers, args.sleep, args.fsync)
    last = row["first_starts_ms"][-1]
    met = row["workers_seen"] == args.workers and last < TARGET_FIRST_START_MS
    checks = {"last_first_start_ms": {"value": last, "op": "<",
                                      "target": TARGET_FIRST_START_MS, "met": met}}
    print(f"fan-out, one add_bulk of {args.jobs:,} jobs sleeping {args.sleep * 1000:g} ms, "
          f"{args.workers} worker processes x concurrency 1, fsync {args.fsync}")
    print(f"  first start per worker  {' '.join(f'{ms:.1f}' for ms in row['first_starts_ms'])} "
          f"ms after the call")
    print(f"  add_bulk returned       {row['add_bulk_returned_ms']:.1f} ms after the call, "
          f"{row['completed_at_return']:,} jobs already completed")
    print(f"  total                   {row['total_s']:.2f} s (ideal {row['ideal_s']:.2f} s, "
          f"efficiency {row['efficiency']:.0%})")
    print()
    print("targets")
    verdict = "met" if met else "MISSED"
    print(f"  last first start  {last:8.1f} ms < {TARGET_FIRST_START_MS:g} ms  {verdict}")
    print(json.dumps(rounded({"bench": "fanout", **row,
                              "targets": {"first_start_ms_max": TARGET_FIRST_START_MS},
                              "checks": checks})))


if __name__ == "__main__":
    asyncio.run(main())
