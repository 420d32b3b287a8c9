"""Statistics' cost: end-to-end throughput with the broker's statistics off, on, and on while a
reader asks for them as the dashboard does.

Three variants, each a fresh broker (fsync everysec):

``off``
    ``conveyor broker --no-stats``: counts and one-minute rates only, as before statistics.
``on``
    The default: every try's wait and run time in histograms, started and retried counts,
    1/5/15-minute rates.
``on+read``
    The same, and a client that calls ``get_stats`` every ``--read-interval`` seconds
    throughout (a dashboard refreshing, plus a Prometheus scrape).

Each round runs ``throughput.py``'s end to end once per variant: W worker processes of
concurrency C (``examples.tasks:noop``) subscribed, one ``add_bulk`` of ``--jobs`` jobs, timed
until the broker counts them all completed. Rounds alternate between the variants, each round
starting one variant later, so that a machine getting faster or slower weighs on all alike.

Prints every round, the median per variant and the cost of ``on`` and ``on+read`` against
``off``, then one JSON line. Target: statistics cost under 5 % of end-to-end throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from measure import check, rounded  # noqa: E402
from throughput import end_to_end  # noqa: E402

from conveyor.client import Client  # noqa: E402
from examples.processes import BrokerProcess  # noqa: E402

TARGET_COST = 0.05
"""Most of the end-to-end throughput without statistics that they may cost (a fraction)."""
KEYS = ("end_to_end_jobs_per_s", "broker_us_per_job")


@dataclass(frozen=True)
class Variant:
    """A broker's statistics setting, and whether a reader polls them during the run."""

    name: str
    broker_args: list[str] = field(default_factory=list)
    read: bool = False


VARIANTS = [Variant("off", ["--no-stats"]), Variant("on"), Variant("on+read", read=True)]


@contextlib.asynccontextmanager
async def reading(url: str, interval: float) -> AsyncIterator[list[int]]:
    """Ask the broker for every statistic every ``interval`` seconds, on a connection of its
    own, until the block ends; the list counts the replies."""
    replies: list[int] = [0]

    async def poll(client: Client) -> None:
        while True:
            await client.stats()
            replies[0] += 1
            await asyncio.sleep(interval)

    async with Client(url, timeout=120) as client:
        task = asyncio.create_task(poll(client))
        try:
            yield replies
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def run_round(variant: Variant, args: argparse.Namespace) -> dict[str, Any]:
    broker = BrokerProcess("--fsync", "everysec", *variant.broker_args)
    try:
        async with Client(broker.url, timeout=120) as client:
            if variant.read:
                async with reading(broker.url, args.read_interval) as replies:
                    e2e = await end_to_end(client, broker, args.jobs, args.workers,
                                           args.concurrency)
                reads = replies[0]
            else:
                e2e = await end_to_end(client, broker, args.jobs, args.workers, args.concurrency)
                reads = 0
            stats = await client.stats("end-to-end")
    finally:
        broker.stop()
    (queue,) = stats.queues
    return {"variant": variant.name, "end_to_end_jobs_per_s": e2e["jobs_per_s"],
            "broker_us_per_job": e2e["broker_us_per_job"], "stats_reads": reads,
            "started_counted": queue.started,
            "run_times_counted": queue.run_time.count if queue.run_time else 0}


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The median of each figure over a variant's rounds."""
    return {variant.name: {key: statistics.median(row[key] for row in rows
                                                  if row["variant"] == variant.name)
                           for key in KEYS} for variant in VARIANTS}


def print_report(figures: dict[str, Any]) -> None:
    print(f"statistics: {figures['jobs']:,} no-op jobs end to end ({figures['workers']} workers "
          f"x concurrency {figures['concurrency']}), fsync everysec; on+read asks for "
          f"statistics every {figures['read_interval']} s")
    header = (f"{'round':>5} {'variant':>8} {'end to end jobs/s':>18} {'broker us/job':>14} "
              f"{'reads':>6} {'tries counted':>14}")
    print(header)
    for number, row in enumerate(figures["rounds"], 1):
        print(f"{number:>5} {row['variant']:>8} {row['end_to_end_jobs_per_s']:>18,.0f} "
              f"{row['broker_us_per_job']:>14.1f} {row['stats_reads']:>6} "
              f"{row['run_times_counted']:>14,}")
    print()
    print("median over the rounds")
    for name, row in figures["medians"].items():
        print(f"{'':>5} {name:>8} {row['end_to_end_jobs_per_s']:>18,.0f} "
              f"{row['broker_us_per_job']:>14.1f}")
    print()
    for name, result in figures["checks"].items():
        verdict = "met" if result["met"] else "MISSED"
        print(f"target {name}: {result['value']:.1%} < {result['target']:.0%} {verdict}")
    print(json.dumps(rounded(figures)))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000,
                        help="end-to-end jobs per round (default: 100000)")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes (default: 2)")
    parser.add_argument("--concurrency", type=int, default=50,
                        help="concurrency of each worker (default: 50)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds per variant, alternating (default: 3)")
    parser.add_argument("--read-interval", type=float, default=0.5, metavar="SECONDS",
                        help="seconds between two reads of on+read (default: 0.5)")
    args = parser.parse_args()
    rows = [await run_round(VARIANTS[(start + step) % len(VARIANTS)], args)
            for start in range(args.rounds) for step in range(len(VARIANTS))]
    medians = summary(rows)
    off = medians["off"]["end_to_end_jobs_per_s"]
    figures: dict[str, Any] = {
        "bench": "stats", "jobs": args.jobs, "workers": args.workers,
        "concurrency": args.concurrency, "read_interval": args.read_interval, "rounds": rows,
        "medians": medians,
        "checks": {
            "stats_on_cost": check(1 - medians["on"]["end_to_end_jobs_per_s"] / off, "<",
                                   TARGET_COST),
            "stats_read_cost": check(1 - medians["on+read"]["end_to_end_jobs_per_s"] / off,
                                     "<", TARGET_COST),
        },
    }
    print_report(figures)


if __name__ == "__main__":
    asyncio.run(main())
