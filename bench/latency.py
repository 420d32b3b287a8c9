"""Latency: one producer adds one job at a time to one idle worker and waits for its result.

One broker (``--fsync``, default everysec), one worker process of concurrency 1 running
``examples.tasks:sleep`` with ``{"seconds": 0}``, which returns the wall-clock time it started. The
producer, one ``Client``, repeats: note the time, ``add`` one job, ``wait`` for its result, pause
``--interval`` seconds. Per job:

add to start
    The handler's start time minus the time before ``add`` was called (both ``time.time()`` on
    the same host).
add to result
    The time ``wait`` returned minus the time before ``add`` was called: the add reply, then a
    ``Wait`` request that the broker answers when the job completes.

Two cases, ``--jobs`` timed jobs each (default 10,000) after ``--warmup`` untimed ones:

low rate
    Nothing else runs.
under load
    A second producer process adds to another queue at a fixed ``--load-rate`` (default 10,000
    jobs/s, an ``add_bulk`` of the jobs due every millisecond), drained by a second worker process
    (``examples.tasks:noop``, concurrency 16).

Prints p50, p99 and max in milliseconds, and one JSON line with every figure and the targets (low
rate): add to start p50 under 0.3 ms and p99 under 2 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from measure import check, percentile, rounded  # noqa: E402

from conveyor.client import Client  # noqa: E402
from examples.processes import BrokerProcess, WorkerProcesses, wait_for_workers  # noqa: E402

TARGET_START_P50_MS = 0.3
TARGET_START_P99_MS = 2.0

LOAD_TICK = 0.001
"""Seconds between the background producer's bulk adds."""
LOAD_CONCURRENCY = 16


async def measure(client: Client, queue: str, jobs: int, warmup: int,
                  interval: float) -> dict[str, Any]:
    starts: list[float] = []
    results: list[float] = []
    for n in range(warmup + jobs):
        called = time.time()
        job_id = await client.add(queue, {"seconds": 0})
        result = await client.wait(job_id, timeout=30)
        returned = time.time()
        if n >= warmup:
            starts.append(result["started"] - called)
            results.append(returned - called)
        if interval > 0:
            await asyncio.sleep(interval)
    return {"jobs": jobs, "add_to_start": _summary(starts),
            "add_to_result": _summary(results)}


def _summary(samples: list[float]) -> dict[str, float]:
    samples.sort()
    return {"p50_ms": percentile(samples, 50) * 1000, "p99_ms": percentile(samples, 99) * 1000,
            "max_ms": samples[-1] * 1000}


# The background load: a producer in its own process, so it does not share our event loop.

def _load_producer(url: str, queue: str, rate: float, ready: Event, stop: Event,
                   report: Connection) -> None:
    report.send(asyncio.run(_produce(url, queue, rate, ready, stop)))


async def _produce(url: str, queue: str, rate: float, ready: Event,
                   stop: Event) -> dict[str, float]:
    async with Client(url, name="load-producer") as client:
        ready.set()
        started = time.perf_counter()
        added = 0
        while not stop.is_set():
            due = int((time.perf_counter() - started) * rate) - added
            if due > 0:
                added += len(await client.add_bulk(queue, [{}] * due))
            await asyncio.sleep(LOAD_TICK)
        elapsed = time.perf_counter() - started
    return {"added": added, "seconds": elapsed}


class _Load:
    """A producer process and a worker process on their own queue."""

    def __init__(self, url: str, rate: float) -> None:
        self.queue = "load"
        self.worker = WorkerProcesses("examples.tasks:noop", self.queue, url, processes=1,
                                      concurrency=LOAD_CONCURRENCY)
        context = multiprocessing.get_context("spawn")
        self._ready = context.Event()
        self._stop = context.Event()
        self._report, child_end = context.Pipe(duplex=False)
        self.producer = context.Process(
            target=_load_producer, name="load-producer",
            args=(url, self.queue, rate, self._ready, self._stop, child_end))

    async def start(self, client: Client) -> None:
        await wait_for_workers(client, self.queue, 1, timeout=60)
        self.producer.start()
        while not self._ready.is_set():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # let the rate settle before timing

    def stop(self) -> dict[str, float]:
        report: dict[str, float] = {}
        self._stop.set()
        if self.producer.pid is not None:
            if self._report.poll(30):
                report = self._report.recv()
            self.producer.join(30)
        self.worker.stop()
        return report


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000,
                        help="timed jobs per case (default: 10000)")
    parser.add_argument("--warmup", type=int, default=200,
                        help="untimed jobs before each case (default: 200)")
    parser.add_argument("--interval", type=float, default=0.001, metavar="SECONDS",
                        help="pause after each result before the next add (default: 0.001)")
    parser.add_argument("--load-rate", type=float, default=10_000, metavar="JOBS_PER_S",
                        help="background load of the second case (default: 10000)")
    parser.add_argument("--fsync", choices=["always", "everysec", "no"], default="everysec",
                        help="the broker's fsync policy (default: everysec)")
    args = parser.parse_args()
    queue = "latency"
    broker = BrokerProcess("--fsync", args.fsync)
    rows: list[dict[str, Any]] = []
    try:
        pool = WorkerProcesses("examples.tasks:sleep", queue, broker.url, processes=1)
        try:
            async with Client(broker.url) as client:
                await wait_for_workers(client, queue, 1, timeout=60)
                rows.append({"case": "low rate", "load_jobs_per_s": 0.0,
                             **await measure(client, queue, args.jobs, args.warmup,
                                             args.interval)})
                load = _Load(broker.url, args.load_rate)
                try:
                    await load.start(client)
                    row = await measure(client, queue, args.jobs, args.warmup, args.interval)
                finally:
                    report = load.stop()
                done = (await client.counts(load.queue))["completed"]
                rate = report["added"] / report["seconds"] if report else 0.0
                rows.append({"case": "under load", "load_jobs_per_s": rate,
                             "load_added": report.get("added", 0), "load_completed": done,
                             **row})
        finally:
            pool.stop()
    finally:
        broker.stop()

    low = rows[0]["add_to_start"]
    checks = {
        "start_p50_ms": check(low["p50_ms"], "<", TARGET_START_P50_MS),
        "start_p99_ms": check(low["p99_ms"], "<", TARGET_START_P99_MS),
    }
    print(f"latency, one producer, one idle worker (concurrency 1), fsync {args.fsync}, "
          f"{args.jobs:,} jobs per case, {args.interval * 1000:g} ms between jobs (ms)")
    print(f"{'case':>11} {'load jobs/s':>11}   {'add to start p50/p99/max':>26}   "
          f"{'add to result p50/p99/max':>27}")
    for row in rows:
        start, result = row["add_to_start"], row["add_to_result"]
        print(f"{row['case']:>11} {row['load_jobs_per_s']:>11,.0f}   "
              f"{start['p50_ms']:>8.3f} {start['p99_ms']:>8.3f} {start['max_ms']:>8.3f}   "
              f"{result['p50_ms']:>8.3f} {result['p99_ms']:>8.3f} {result['max_ms']:>8.3f}")
    print()
    print("targets (low rate)")
    for name, goal in checks.items():
        verdict = "met" if goal["met"] else "MISSED"
        print(f"  {name:<14} {goal['value']:>8.3f} {goal['op']} {goal['target']:<5} {verdict}")
    print(json.dumps(rounded({
        "bench": "latency", "fsync": args.fsync, "jobs": args.jobs, "interval_s": args.interval,
        "results": rows,
        "targets": {"start_p50_ms_max": TARGET_START_P50_MS,
                    "start_p99_ms_max": TARGET_START_P99_MS},
        "checks": checks,
    })))


if __name__ == "__main__":
    asyncio.run(main())
