"""Schedules: how late a repeatable job starts after its due time.

One broker (fsync everysec) and one worker process of concurrency 10 (``examples.tasks:noop``)
on the queue. Two schedules fire into it: one ``every`` ``--every`` seconds, and one cron
expression firing every second (``* * * * * *``, seconds field). For ``--seconds`` seconds the
queue's ``active`` events are watched; each job's idempotency key names the due time it was made
for (``schedule:ID:DUE``), so its *lateness* is its start (the broker's time of the delivery)
minus that due time. Target: p99 under 10 ms with a worker free.

Prints p50 / p99 / max of the lateness in milliseconds per schedule, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from measure import check, percentile, rounded  # noqa: E402

from conveyor.client import Client  # noqa: E402
from examples.processes import BrokerProcess, WorkerProcesses, wait_for_workers  # noqa: E402

TARGET_P99_MS = 10.0
QUEUE = "scheduled"


async def measure(url: str, every: float, seconds: float) -> dict[str, list[float]]:
    late: dict[str, list[float]] = {"every": [], "cron": []}
    async with Client(url, timeout=120) as client:
        await wait_for_workers(client, QUEUE, 1, timeout=60)
        async with client.events(QUEUE) as events:
            await client.set_schedule("every", QUEUE, {}, every=every)
            await client.set_schedule("cron", QUEUE, {}, cron="* * * * * *")
            started = asyncio.get_running_loop().time()
            async for event in events:
                if event.kind == "active":
                    job = await client.get_job(event.job)
                    assert job is not None and job.key is not None
                    _, schedule, due = job.key.split(":", 2)
                    late[schedule].append(event.at - float(due))
                if asyncio.get_running_loop().time() - started >= seconds:
                    break
        await client.remove_schedule("every")
        await client.remove_schedule("cron")
    return late


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=float, default=0.05,
                        help="seconds between the every-schedule's jobs (default: 0.05)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="seconds measured (default: 10)")
    args = parser.parse_args()
    broker = BrokerProcess("--fsync", "everysec")
    pool = WorkerProcesses("examples.tasks:noop", QUEUE, broker.url, processes=1,
                           concurrency=10)
    try:
        late = await measure(broker.url, args.every, args.seconds)
    finally:
        pool.stop()
        broker.stop()
    figures: dict[str, Any] = {"bench": "schedule", "every": args.every,
                               "seconds": args.seconds, "schedules": {}}
    print(f"schedules: every {args.every:g} s and a cron of every second, {args.seconds:g} s, "
          "one worker of concurrency 10, fsync everysec")
    print(f"{'schedule':>9} {'jobs':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    worst = 0.0
    for name, samples in late.items():
        samples.sort()
        row = {"jobs": len(samples), "p50_ms": percentile(samples, 50) * 1000,
               "p99_ms": percentile(samples, 99) * 1000, "max_ms": samples[-1] * 1000}
        figures["schedules"][name] = row
        worst = max(worst, row["p99_ms"])
        print(f"{name:>9} {row['jobs']:>6} {row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f} "
              f"{row['max_ms']:>8.3f}")
    figures["checks"] = {"lateness_p99_ms": check(worst, "<", TARGET_P99_MS)}
    result = figures["checks"]["lateness_p99_ms"]
    print(f"target lateness p99: {result['value']:.3f} ms < {TARGET_P99_MS:g} ms "
          f"{'met' if result['met'] else 'MISSED'}")
    print(json.dumps(rounded(figures)))


if __name__ == "__main__":
    asyncio.run(main())
