"""Groups: fair shares for 10,000 groups of skewed sizes, and what groups cost in throughput.

One broker (fsync everysec) and W worker processes of concurrency C (``examples.tasks:noop``).
The jobs: ``--groups`` groups whose sizes follow a Zipf-like law (group ``i`` has
``max(1, round(--largest / i ** --skew))`` jobs: a few with tens of thousands, most with one to
ten), about 200,000 jobs in all, added largest group first (the worst order for a plain queue:
the one-job groups come last).

fairness
    The queue is paused, every job added, the queue's ``active`` events watched (the broker's
    order of starts), and the queue resumed. Among the groups that still have waiting jobs, the
    starts per group may differ by at most one if dispatch takes turns: the spread (most minus
    fewest starts of a group still waiting) is sampled between dispatch passes (at most every
    500 starts: the events of one pass come out by worker) and its largest value reported
    (ideal: 0 or 1), with how many starts went by before the last one-job group got its
    start (ideal: about the number of groups; a plain queue would make it wait for every job).
throughput
    The same jobs end to end (workers subscribed, one ``add_bulk`` of them all, timed from the
    call until the broker counts them completed), with their groups and without, in turns
    (``--rounds`` of each); the best of each is reported, with the CPU time per job of the
    broker, of the worker processes and of this producer.

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from measure import CpuMeter, descendants, rounded, wait_finished  # noqa: E402

from conveyor.client import Client, JobSpec  # noqa: E402
from examples.processes import BrokerProcess, WorkerProcesses, wait_for_workers  # noqa: E402

QUEUE = "tenants"
SAMPLE_EVERY = 500
"""Starts between two samples of the spread."""


def sizes(groups: int, largest: int, skew: float) -> list[int]:
    """Jobs per group, largest first."""
    return [max(1, round(largest / rank ** skew)) for rank in range(1, groups + 1)]


def specs(counts: list[int], *, grouped: bool) -> tuple[list[JobSpec], list[int]]:
    """The jobs (with their groups, or without) and the group index of each, in add order."""
    jobs: list[JobSpec] = []
    owners: list[int] = []
    for index, count in enumerate(counts):
        group = f"tenant-{index}" if grouped else None
        jobs += [JobSpec({}, group=group)] * count
        owners += [index] * count
    return jobs, owners


async def fairness(client: Client, counts: list[int], done: int) -> dict[str, Any]:
    jobs, owners = specs(counts, grouped=True)
    await client.pause(QUEUE)
    ids = await client.add_bulk(QUEUE, jobs)
    group_of = dict(zip(ids, owners, strict=True))
    left = list(counts)
    started = [0] * len(counts)
    waiting = set(range(len(counts)))
    spread = 0
    starts = 0
    last_single = 0
    singles = {index for index, count in enumerate(counts) if count == 1}
    sampled = 0
    at = None
    async with client.events(QUEUE) as events:
        await client.resume(QUEUE)
        async for event in events:
            if event.kind != "active":
                continue
            if event.at != at:
                # A new dispatch pass: the starts of one pass come out by worker, not in the
                # order taken, so the shares are compared between passes only.
                at = event.at
                if starts - sampled >= SAMPLE_EVERY and waiting:
                    sampled = starts
                    shares = [started[index] for index in waiting]
                    spread = max(spread, max(shares) - min(shares))
            group = group_of[event.job]
            starts += 1
            started[group] += 1
            left[group] -= 1
            if group in singles:
                last_single = starts
            if not left[group]:
                waiting.discard(group)
            if starts == len(jobs):
                break
    await wait_finished(client, QUEUE, done + len(jobs))
    return {"jobs": len(jobs), "largest_spread": spread, "last_one_job_group_start": last_single,
            "one_job_groups": len(singles),
            "plain_queue_last_start": len(jobs)}


async def end_to_end(client: Client, counts: list[int], meters: dict[str, CpuMeter], *,
                     grouped: bool, done: int) -> dict[str, float]:
    """Jobs a second end to end, and the CPU microseconds per job of each process."""
    jobs, _ = specs(counts, grouped=grouped)
    for meter in meters.values():
        meter.start()
    start = time.perf_counter()
    await client.add_bulk(QUEUE, jobs)
    end = await wait_finished(client, QUEUE, done + len(jobs))
    figures = {"jobs_per_s": len(jobs) / (end - start)}
    for name, meter in meters.items():
        figures[f"{name}_us_per_job"] = meter.stop() / len(jobs) * 1e6
    return figures


async def measure(url: str, counts: list[int], rounds: int, workers: int,
                  pids: dict[str, int]) -> dict[str, Any]:
    total = sum(counts)
    async with Client(url, timeout=300) as client:
        await wait_for_workers(client, QUEUE, workers, timeout=60)
        # Read once every worker process is up (the pool starts them).
        meters = {name: CpuMeter(descendants(pid)) for name, pid in pids.items()}
        figures = await fairness(client, counts, 0)
        done = total
        plain: list[dict[str, float]] = []
        grouped: list[dict[str, float]] = []
        for _ in range(rounds):
            plain.append(await end_to_end(client, counts, meters, grouped=False, done=done))
            done += total
            grouped.append(await end_to_end(client, counts, meters, grouped=True, done=done))
            done += total
    best_plain = max(plain, key=lambda run: run["jobs_per_s"])
    best_grouped = max(grouped, key=lambda run: run["jobs_per_s"])
    figures.update(plain=best_plain, grouped=best_grouped,
                   grouped_vs_plain=best_grouped["jobs_per_s"] / best_plain["jobs_per_s"],
                   plain_runs=[run["jobs_per_s"] for run in plain],
                   grouped_runs=[run["jobs_per_s"] for run in grouped])
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=10_000, help="groups (default: 10000)")
    parser.add_argument("--largest", type=int, default=50_000,
                        help="jobs of the largest group (default: 50000)")
    parser.add_argument("--skew", type=float, default=1.3,
                        help="Zipf exponent of the sizes (default: 1.3)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="end-to-end runs with and without groups (default: 2 each)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    parser.add_argument("--concurrency", type=int, default=50,
                        help="concurrency of each worker (default: 50)")
    args = parser.parse_args()
    counts = sizes(args.groups, args.largest, args.skew)
    broker = BrokerProcess("--fsync", "everysec")
    pool = WorkerProcesses("examples.tasks:noop", QUEUE, broker.url, processes=args.workers,
                           concurrency=args.concurrency)
    pids = {"broker": broker.process.pid, "workers": pool.process.pid, "producer": os.getpid()}
    try:
        figures = await measure(broker.url, counts, args.rounds, args.workers, pids)
    finally:
        pool.stop()
        broker.stop()
    small = sum(1 for count in counts if count <= 10)
    figures.update(groups=args.groups, largest_group=counts[0], groups_of_1_to_10=small)
    print(f"groups: {args.groups:,} groups, {figures['jobs']:,} jobs (largest {counts[0]:,}, "
          f"{small:,} groups of 1-10 jobs), {args.workers} workers x concurrency "
          f"{args.concurrency}, fsync everysec")
    print(f"  fairness: largest spread of starts among waiting groups "
          f"{figures['largest_spread']} (sampled between passes); the last of "
          f"{figures['one_job_groups']:,} one-job groups started at start "
          f"{figures['last_one_job_group_start']:,} (a plain queue: "
          f"{figures['plain_queue_last_start']:,})")
    for name in ("grouped", "plain"):
        run = figures[name]
        print(f"  end to end {'with groups' if name == 'grouped' else 'without':>11}: "
              f"{run['jobs_per_s']:>9,.0f} jobs/s; CPU us per job: broker "
              f"{run['broker_us_per_job']:.1f}, workers {run['workers_us_per_job']:.1f}, "
              f"producer {run['producer_us_per_job']:.1f}")
    print(f"  with groups / without: {figures['grouped_vs_plain']:.2f}x")
    print(json.dumps(rounded(figures)))


if __name__ == "__main__":
    asyncio.run(main())
