"""Rate limit: how exactly and how smoothly the broker holds a queue to N starts a second.

One broker (fsync everysec) and W worker processes of concurrency C (``examples.tasks:noop``),
far more capacity than the limit. The queue gets a limit of ``--rate`` starts per second
(``Client.set_limits``), then one ``add_bulk`` of enough jobs to keep it busy for
``--seconds`` and one more second. The starts are the ``active`` events of the queue (the
broker's time of each delivery), watched from before the add.

Over the first ``--seconds`` seconds from the first start it reports: the starts a second
achieved against the limit (target: within 1 %), the most starts in any window of one second
(at most the limit), the largest gap between two consecutive starts and the largest burst (the
most starts at one instant, and in any window of 10 ms, against 10 ms of the limit), with the
spacing's percentiles. Then the limit is cleared and the rest of the jobs run out. Prints a
table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from measure import check, percentile, print_checks, rounded, wait_finished  # noqa: E402

from conveyor.client import Client  # noqa: E402
from examples.processes import BrokerProcess, WorkerProcesses, wait_for_workers  # noqa: E402

TARGET_ERROR = 0.01
"""Most the achieved rate may differ from the limit (a fraction)."""
QUEUE = "limited"
BURST_WINDOW = 0.010
"""Seconds of the window the largest burst is counted in."""


def most_in_window(times: list[float], window: float) -> int:
    """The most of the sorted ``times`` in any half-open window ``[t, t + window)``."""
    return max(bisect.bisect_left(times, start + window) - index
               for index, start in enumerate(times))


async def measure(url: str, rate: int, seconds: float) -> dict[str, Any]:
    jobs = int(rate * (seconds + 1))
    starts: list[float] = []
    async with Client(url, timeout=120) as client:
        await wait_for_workers(client, QUEUE, 1, timeout=60)
        await client.set_limits(QUEUE, rate=rate, per=1.0)
        async with client.events(QUEUE) as events:
            await client.add_bulk(QUEUE, [{}] * jobs)
            async for event in events:
                if event.kind != "active":
                    continue
                starts.append(event.at)
                if event.at - starts[0] >= seconds:
                    break
        await client.clear_limits(QUEUE)
        await wait_finished(client, QUEUE, jobs)
    first = starts[0]
    timed = sorted(at for at in starts if at - first < seconds)
    gaps = sorted(later - earlier for earlier, later in zip(timed, timed[1:], strict=False))
    achieved = len(timed) / seconds
    return {
        "rate": rate, "seconds": seconds, "starts": len(timed),
        "achieved_per_s": achieved, "error": achieved / rate - 1,
        "most_in_any_second": most_in_window(timed, 1.0),
        "largest_gap_ms": gaps[-1] * 1000, "gap_p50_ms": percentile(gaps, 50) * 1000,
        "gap_p99_ms": percentile(gaps, 99) * 1000,
        "most_at_one_instant": max(Counter(timed).values()),
        "most_in_10ms": most_in_window(timed, BURST_WINDOW),
        "limit_in_10ms": rate * BURST_WINDOW,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=1_000, help="starts a second (default: 1000)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="seconds measured (default: 10)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    parser.add_argument("--concurrency", type=int, default=50,
                        help="concurrency of each worker (default: 50)")
    args = parser.parse_args()
    broker = BrokerProcess("--fsync", "everysec")
    pool = WorkerProcesses("examples.tasks:noop", QUEUE, broker.url, processes=args.workers,
                           concurrency=args.concurrency)
    try:
        figures = await measure(broker.url, args.rate, args.seconds)
    finally:
        pool.stop()
        broker.stop()
    figures["checks"] = {
        "rate_error": check(abs(figures["error"]), "<=", TARGET_ERROR),
        "most_in_any_second": check(figures["most_in_any_second"], "<=", args.rate),
    }
    print(f"rate limit: {args.rate:,} starts/s over {args.seconds:g} s, {args.workers} workers x "
          f"concurrency {args.concurrency}, fsync everysec")
    print(f"  starts {figures['starts']:,}, achieved {figures['achieved_per_s']:,.1f}/s "
          f"({figures['error']:+.2%}); most in any second {figures['most_in_any_second']:,}")
    print(f"  gap between starts ms: p50 {figures['gap_p50_ms']:.3f}  p99 "
          f"{figures['gap_p99_ms']:.3f}  largest {figures['largest_gap_ms']:.3f}")
    print(f"  largest burst: {figures['most_at_one_instant']} at one instant, "
          f"{figures['most_in_10ms']} in 10 ms (the limit allows {figures['limit_in_10ms']:g})")
    print_checks(figures["checks"])
    print(json.dumps(rounded(figures)))


if __name__ == "__main__":
    asyncio.run(main())
