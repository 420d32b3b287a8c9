"""Timers: how close to its time a delayed job starts, and how soon a try over its timeout fails.

One broker (fsync everysec) and worker processes, over loopback.

delays
    ``--jobs`` delayed jobs (default 10,000) in one ``add_bulk``, each with a ``run_at`` drawn at
    random over ``--spread`` seconds (default 2) from ``--margin`` seconds (default 0.5) after the
    call, to one worker process of concurrency 100 running ``examples.tasks:sleep`` with
    ``{"seconds": 0}`` (it returns its wall-clock start). *Lateness* is a job's start minus its
    ``run_at``; *out of order* counts jobs that started before one that was due earlier.
timeouts
    ``--tries`` jobs (default 20) one after another, each with ``timeout`` ``--timeout`` seconds
    (default 0.3), whose handler sleeps 1 s: a plain one (``bench.bench_tasks:block``, in a
    thread the worker cannot stop) and an async one (``bench.bench_tasks:hold``, cancelled), each
    in one worker process of concurrency 4. *Over the timeout* is the time from the call to
    ``add`` until ``wait`` raised ``JobFailed``, less the timeout.

Prints p50, p99 and max in milliseconds, then one JSON line with every figure and the targets:
lateness p50 under 10 ms and max under 50 ms; a plain handler's try failed within 600 ms of its
timeout (p99).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from measure import check, percentile, rounded  # noqa: E402

from conveyor.client import Client, JobFailed, JobSpec  # noqa: E402
from examples.processes import BrokerProcess, WorkerProcesses, wait_for_workers  # noqa: E402

TARGET_LATE_P50_MS = 10.0
TARGET_LATE_MAX_MS = 50.0
TARGET_OVER_TIMEOUT_P99_MS = 600.0
HANDLER_SECONDS = 1.0
"""How long the timeout jobs' handlers would run (seconds)."""


def _summary(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {"p50_ms": percentile(samples, 50) * 1000, "p99_ms": percentile(samples, 99) * 1000,
            "max_ms": samples[-1] * 1000}


async def delays(url: str, jobs: int, spread: float, margin: float) -> dict[str, Any]:
    queue = "delays"
    rng = random.Random(2024)
    pool = WorkerProcesses("examples.tasks:sleep", queue, url, processes=1, concurrency=100)
    try:
        async with Client(url) as client:
            await wait_for_workers(client, queue, 1, timeout=60)
            base = time.time() + margin
            due = [base + rng.uniform(0, spread) for _ in range(jobs)]
            ids = await client.add_bulk(queue, [JobSpec({"seconds": 0}, run_at=at)
                                                for at in due])
            added_late = max(0.0, time.time() - base)
            results = await asyncio.gather(*(client.wait(i, timeout=60 + spread) for i in ids))
    finally:
        pool.stop()
    starts = [result["started"] for result in results]
    by_start = sorted(range(jobs), key=starts.__getitem__)
    latest_due = float("-inf")
    out_of_order = 0
    for index in by_start:
        if due[index] < latest_due:
            out_of_order += 1
        latest_due = max(latest_due, due[index])
    return {"jobs": jobs, "lateness": _summary([s - d for s, d in zip(starts, due, strict=True)]),
            "out_of_order": out_of_order, "add_after_first_due_s": added_late}


async def timeouts(url: str, handler: str, tries: int, timeout: float) -> dict[str, Any]:
    queue = f"timeouts-{handler.rsplit(':', 1)[1]}"
    pool = WorkerProcesses(handler, queue, url, processes=1, concurrency=4)
    over: list[float] = []
    try:
        async with Client(url) as client:
            await wait_for_workers(client, queue, 1, timeout=60)
            for _ in range(tries):
                called = time.perf_counter()
                job_id = await client.add(queue, {"seconds": HANDLER_SECONDS}, timeout=timeout)
                try:
                    await client.wait(job_id, timeout=30)
                except JobFailed:
                    over.append(time.perf_counter() - called - timeout)
                else:
                    raise RuntimeError(f"job {job_id} completed despite its timeout")
            await asyncio.sleep(HANDLER_SECONDS)  # the plain handlers' threads run out
    finally:
        pool.stop()
    return {"handler": handler, "tries": tries, "timeout_s": timeout,
            "over_timeout": _summary(over)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000,
                        help="delayed jobs (default: 10000)")
    parser.add_argument("--spread", type=float, default=2.0, metavar="SECONDS",
                        help="the delayed jobs fall due over this long (default: 2)")
    parser.add_argument("--margin", type=float, default=0.5, metavar="SECONDS",
                        help="from the add to the first due time (default: 0.5)")
    parser.add_argument("--tries", type=int, default=20,
                        help="jobs over their timeout, per handler (default: 20)")
    parser.add_argument("--timeout", type=float, default=0.3, metavar="SECONDS",
                        help="their timeout (default: 0.3)")
    args = parser.parse_args()
    broker = BrokerProcess()
    try:
        delayed = await delays(broker.url, args.jobs, args.spread, args.margin)
        timed = [await timeouts(broker.url, handler, args.tries, args.timeout)
                 for handler in ("bench.bench_tasks:block", "bench.bench_tasks:hold")]
    finally:
        broker.stop()

    late = delayed["lateness"]
    plain = timed[0]["over_timeout"]
    checks = {
        "late_p50_ms": check(late["p50_ms"], "<", TARGET_LATE_P50_MS),
        "late_max_ms": check(late["max_ms"], "<", TARGET_LATE_MAX_MS),
        "plain_over_timeout_p99_ms": check(plain["p99_ms"], "<", TARGET_OVER_TIMEOUT_P99_MS),
    }
    print(f"delayed jobs, {args.jobs:,} due over {args.spread:g} s, one worker process "
          f"(concurrency 100), fsync everysec (ms)")
    print(f"  lateness p50/p99/max  {late['p50_ms']:8.3f} {late['p99_ms']:8.3f} "
          f"{late['max_ms']:8.3f}")
    print(f"  out of due order      {delayed['out_of_order']:>8}")
    print()
    print(f"tries over a {args.timeout:g} s timeout, {args.tries} per handler, handlers sleeping "
          f"{HANDLER_SECONDS:g} s (ms past the timeout, from add to JobFailed)")
    for row, kind in zip(timed, ("plain (thread)", "async"), strict=True):
        over = row["over_timeout"]
        print(f"  {kind:<15} p50/p99/max  {over['p50_ms']:8.3f} {over['p99_ms']:8.3f} "
              f"{over['max_ms']:8.3f}")
    print()
    print("targets")
    for name, result in checks.items():
        verdict = "met" if result["met"] else "MISSED"
        print(f"  {name:<26} {result['value']:>8.3f} {result['op']} {result['target']:<6g} "
              f"{verdict}")
    print(json.dumps(rounded({
        "bench": "timers", "delays": delayed, "timeouts": timed,
        "targets": {"late_p50_ms_max": TARGET_LATE_P50_MS, "late_max_ms_max": TARGET_LATE_MAX_MS,
                    "plain_over_timeout_p99_ms_max": TARGET_OVER_TIMEOUT_P99_MS},
        "checks": checks})))


if __name__ == "__main__":
    asyncio.run(main())
