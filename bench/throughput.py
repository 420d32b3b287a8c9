"""Throughput: N no-op jobs through one broker and W worker processes of concurrency C.

For each fsync policy (``--fsync``, or several with ``--policies``: the durability-cost table), on a
fresh broker and data directory, one producer ``Client`` and W worker processes of ``python -m
conveyor.worker examples.tasks:noop --concurrency C --log-level warning`` (``--worker-log-level
info``: with a log line as each job starts and ends), started at once as W commands:

end to end
    The workers are subscribed first; one ``add_bulk`` of N jobs, timed from the call until the
    broker counts N completed jobs. Workers start on the first frames while later ones are still
    in flight.
add only
    ``add_bulk`` of N jobs to a queue nobody is subscribed to, timed from the call to its return.
drain only
    Then the workers are started on that queue. Timed from the moment all W are subscribed to the
    moment the broker counts every job completed; the jobs the first workers finished before the
    last one subscribed are left out of the count (the JSON line has the jobs timed).

Completion is seen by polling ``counts`` every 2 ms. CPU per job is the utime + stime delta, in
microseconds per job, of the broker process and of all worker processes (with any children,
found through /proc), and of this producer process, over each part.
The payload of every job is ``{}``.

Prints a table and one JSON line with every figure and the targets (fsync everysec): end to end at
least 50,000 jobs/s with 2 worker processes, add only at least 200,000 jobs/s.
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

from measure import CpuMeter, check, descendants, rounded, wait_finished  # noqa: E402

from conveyor.client import Client  # noqa: E402
from examples.processes import BrokerProcess, WorkerProcesses  # noqa: E402

TARGET_END_TO_END = 50_000
"""jobs/s, fsync everysec, 2 worker processes."""
TARGET_ADD_ONLY = 200_000
"""jobs/s, ``add_bulk``, fsync everysec."""

HANDLER = "examples.tasks:noop"
WARMUP_JOBS = 1_000
"""Jobs added (and run) once before timing, so connections, imports and allocators are warm."""


class WorkerPool:
    """W ``python -m conveyor.worker`` processes on one queue, started together, with
    ``--log-level log_level`` (``info`` logs a line as each job starts and ends)."""

    def __init__(self, url: str, queue: str, *, workers: int, concurrency: int,
                 handler: str = HANDLER, log_level: str = "warning") -> None:
        self.processes = [WorkerProcesses(handler, queue, url, processes=1,
                                          concurrency=concurrency, log_level=log_level)
                          for _ in range(workers)]

    @property
    def pids(self) -> list[int]:
        """Every worker process and any child it started."""
        return [pid for p in self.processes for pid in descendants(p.process.pid)]

    def stop(self) -> None:
        for worker in self.processes:
            worker.stop()


class _Meters:
    """CPU meters for the broker, the workers and this process, started and stopped together."""

    def __init__(self, broker_pid: int, worker_pids: list[int]) -> None:
        self.broker = CpuMeter(descendants(broker_pid))
        self.workers = CpuMeter(worker_pids)
        self._producer_start = 0.0
        self.producer = 0.0

    def start(self) -> None:
        self.broker.start()
        self.workers.start()
        self._producer_start = time.process_time()

    def stop(self) -> None:
        self.broker.stop()
        self.workers.stop()
        self.producer = time.process_time() - self._producer_start

    def per_job_us(self, jobs: int) -> dict[str, float]:
        scale = 1e6 / jobs
        return {"broker_us_per_job": self.broker.seconds * scale,
                "workers_us_per_job": self.workers.seconds * scale,
                "producer_us_per_job": self.producer * scale}


async def _subscribed(client: Client, queue: str, workers: int,
                      timeout: float = 60) -> dict[str, int]:
    """Poll until ``workers`` are subscribed to ``queue``; return the counts that showed it."""
    deadline = time.monotonic() + timeout
    while True:
        counts = await client.counts(queue)
        if counts["workers"] >= workers:
            return counts
        if time.monotonic() > deadline:
            raise TimeoutError(f"{workers} workers did not subscribe to {queue!r} in {timeout} s")
        await asyncio.sleep(0.002)


async def end_to_end(client: Client, broker: BrokerProcess, jobs: int, workers: int,
                     concurrency: int, *, log_level: str = "warning") -> dict[str, Any]:
    queue = "end-to-end"
    pool = WorkerPool(broker.url, queue, workers=workers, concurrency=concurrency,
                      log_level=log_level)
    try:
        await _subscribed(client, queue, workers)
        await client.add_bulk(queue, [{}] * WARMUP_JOBS)
        await wait_finished(client, queue, WARMUP_JOBS)
        meters = _Meters(broker.process.pid, pool.pids)
        payloads: list[dict[str, Any]] = [{}] * jobs
        meters.start()
        started = time.perf_counter()
        ids = await client.add_bulk(queue, payloads)
        added = time.perf_counter()
        finished = await wait_finished(client, queue, WARMUP_JOBS + jobs)
        meters.stop()
    finally:
        pool.stop()
    assert len(ids) == jobs
    return {"jobs_per_s": jobs / (finished - started), "seconds": finished - started,
            "add_returned_s": added - started, **meters.per_job_us(jobs)}


async def add_then_drain(client: Client, broker: BrokerProcess, jobs: int, workers: int,
                         concurrency: int, *, log_level: str = "warning"
                         ) -> tuple[dict[str, Any], dict[str, Any]]:
    queue = "add-then-drain"
    payloads: list[dict[str, Any]] = [{}] * jobs
    meters = _Meters(broker.process.pid, [])
    meters.start()
    started = time.perf_counter()
    ids = await client.add_bulk(queue, payloads)
    added = time.perf_counter()
    meters.stop()
    assert len(ids) == jobs
    add = {"jobs_per_s": jobs / (added - started), "seconds": added - started,
           **meters.per_job_us(jobs)}

    pool = WorkerPool(broker.url, queue, workers=workers, concurrency=concurrency,
                      log_level=log_level)
    try:
        counts = await _subscribed(client, queue, workers)
        meters = _Meters(broker.process.pid, pool.pids)
        meters.start()
        started = time.perf_counter()
        done_before = counts["completed"]
        finished = await wait_finished(client, queue, jobs)
        meters.stop()
    finally:
        pool.stop()
    drained = jobs - done_before
    if drained <= 0:
        raise RuntimeError(f"the first workers ran all {jobs} jobs before the last one "
                           "subscribed: use more --jobs")
    drain = {"jobs_per_s": drained / (finished - started), "seconds": finished - started,
             "jobs_timed": drained, **meters.per_job_us(drained)}
    return add, drain


async def run_policy(policy: str, jobs: int, workers: int, concurrency: int, *,
                     log_level: str = "warning", stats: bool = True) -> dict[str, Any]:
    """Every part on a fresh broker of fsync ``policy``; workers run at ``log_level``;
    ``stats=False``: the broker runs with ``--no-stats``."""
    broker = BrokerProcess("--fsync", policy, *(() if stats else ("--no-stats",)))
    try:
        async with Client(broker.url, timeout=120) as client:
            e2e = await end_to_end(client, broker, jobs, workers, concurrency,
                                   log_level=log_level)
            add, drain = await add_then_drain(client, broker, jobs, workers, concurrency,
                                              log_level=log_level)
    finally:
        broker.stop()
    return {"policy": policy, "end_to_end": e2e, "add_only": add, "drain_only": drain}


def _checks(rows: list[dict[str, Any]], workers: int) -> dict[str, dict[str, Any]]:
    checks: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["policy"] != "everysec":
            continue
        if workers == 2:
            checks["end_to_end_jobs_s"] = check(row["end_to_end"]["jobs_per_s"], ">=",
                                                TARGET_END_TO_END)
        checks["add_only_jobs_s"] = check(row["add_only"]["jobs_per_s"], ">=", TARGET_ADD_ONLY)
    return checks


def _print_report(figures: dict[str, Any]) -> None:
    rows = figures["results"]
    print(f"throughput, {figures['jobs']:,} no-op jobs, {figures['workers']} worker processes x "
          f"concurrency {figures['concurrency']} (jobs/s)")
    print(f"{'fsync':>9} {'end to end':>11} {'add only':>10} {'drain only':>11}")
    for row in rows:
        print(f"{row['policy']:>9} {row['end_to_end']['jobs_per_s']:>11,.0f} "
              f"{row['add_only']['jobs_per_s']:>10,.0f} {row['drain_only']['jobs_per_s']:>11,.0f}")
    print()
    print("CPU per job (us): broker / all workers / producer")
    print(f"{'fsync':>9} {'end to end':>20} {'add only':>20} {'drain only':>20}")
    for row in rows:
        cells = [f"{part['broker_us_per_job']:.1f} / {part['workers_us_per_job']:.1f} / "
                 f"{part['producer_us_per_job']:.1f}"
                 for part in (row["end_to_end"], row["add_only"], row["drain_only"])]
        print(f"{row['policy']:>9} " + " ".join(f"{cell:>20}" for cell in cells))
    for row in rows:
        timed = row["drain_only"]["jobs_timed"]
        if timed < figures["jobs"] / 2:
            print(f"note: {row['policy']}: drain only timed {timed:,} jobs: the others ran "
                  "before the last worker subscribed; use more --jobs")
    checks = figures["checks"]
    if checks:
        print()
        print("targets")
        for name, result in checks.items():
            verdict = "met" if result["met"] else "MISSED"
            print(f"  {name:<20} {result['value']:>12,.0f} {result['op']} "
                  f"{result['target']:<10,} {verdict}")
    print(json.dumps(rounded(figures)))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000,
                        help="jobs per part (default: 100000)")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes (default: 2)")
    parser.add_argument("--concurrency", type=int, default=50,
                        help="concurrency (credit window) of each worker process (default: 50)")
    choices = ["always", "everysec", "no"]
    parser.add_argument("--fsync", choices=choices, default="everysec",
                        help="the broker's fsync policy (default: everysec)")
    parser.add_argument("--policies", nargs="+", choices=choices, metavar="POLICY",
                        help="run once per policy instead, e.g. --policies always everysec no: "
                             "the cost of durability")
    parser.add_argument("--worker-log-level", choices=["info", "warning"], default="warning",
                        help="the workers' log level; info logs each job's start and end, to "
                             "stderr (default: warning)")
    parser.add_argument("--no-stats", dest="stats", action="store_false",
                        help="run the broker with --no-stats: without the statistics counted "
                             "per try (run with and without, in turns, to see their cost)")
    args = parser.parse_args()
    policies = args.policies or [args.fsync]
    rows = [await run_policy(policy, args.jobs, args.workers, args.concurrency,
                             log_level=args.worker_log_level, stats=args.stats)
            for policy in policies]
    figures: dict[str, Any] = {
        "bench": "throughput", "stats": args.stats, "jobs": args.jobs, "workers": args.workers,
        "concurrency": args.concurrency, "results": rows,
        "targets": {"end_to_end_jobs_s_min": TARGET_END_TO_END,
                    "add_only_jobs_s_min": TARGET_ADD_ONLY},
    }
    figures["checks"] = _checks(rows, args.workers)
    _print_report(figures)


if __name__ == "__main__":
    asyncio.run(main())
