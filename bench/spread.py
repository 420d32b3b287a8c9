"""Start spread: W idle worker processes (concurrency 1), one ``add_bulk`` of W jobs.

For each W, over a number of trials: the spread of the jobs' start times (last start minus first)
and the delay from ``add_bulk`` returning to the last start (negative when every job started before
the reply reached the producer). Prints a table and one JSON line of figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conveyor.client import Client  # noqa: E402
from examples.processes import BrokerProcess, WorkerProcesses, wait_for_workers  # noqa: E402


async def measure(url: str, workers: int, trials: int) -> dict[str, float]:
    queue = f"spread-{workers}"
    pool = WorkerProcesses("examples.tasks:sleep", queue, url, processes=workers)
    spreads: list[float] = []
    delays: list[float] = []
    try:
        async with Client(url) as client:
            await wait_for_workers(client, queue, workers, timeout=60)
            for _ in range(trials):
                ids = await client.add_bulk(queue, [{"seconds": 0}] * workers)
                returned = time.time()
                results = await asyncio.gather(*(client.wait(i, timeout=30) for i in ids))
                starts = [result["started"] for result in results]
                if len({result["pid"] for result in results}) != workers:
                    raise RuntimeError("a worker process ran two of the jobs")
                spreads.append((max(starts) - min(starts)) * 1000)
                delays.append((max(starts) - returned) * 1000)
                await asyncio.sleep(0.05)
    finally:
        pool.stop()
    return {
        "workers": workers,
        "spread_p50_ms": statistics.median(spreads),
        "spread_max_ms": max(spreads),
        "last_start_p50_ms": statistics.median(delays),
        "last_start_max_ms": max(delays),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[3, 8, 16, 32],
                        help="values of W to measure (default: 3 8 16 32)")
    parser.add_argument("--trials", type=int, default=20, help="bulk adds per W (default: 20)")
    args = parser.parse_args()
    broker = BrokerProcess()
    rows = []
    try:
        for workers in args.workers:
            rows.append(await measure(broker.url, workers, args.trials))
    finally:
        broker.stop()
    print(f"start spread, {args.trials} trials each (ms)")
    print(f"{'W':>4} {'spread p50':>11} {'spread max':>11} {'last start p50':>15} "
          f"{'last start max':>15}")
    for row in rows:
        print(f"{row['workers']:>4} {row['spread_p50_ms']:>11.3f} {row['spread_max_ms']:>11.3f} "
              f"{row['last_start_p50_ms']:>15.3f} {row['last_start_max_ms']:>15.3f}")
    print(json.dumps({"bench": "spread", "trials": args.trials, "results": rows}))


if __name__ == "__main__":
    asyncio.run(main())
