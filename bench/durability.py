"""Durability: what the append-only log costs, and how long a restart takes.

Three parts, all run by default; name one or more with flags to run only those:

``--bulk``
    ``add_bulk`` throughput under each fsync policy (``--policies``, default: always everysec no).
    One broker subprocess per policy on a fresh data directory, one client; ``--runs`` (default 3)
    calls of ``add_bulk`` of ``--bulk-jobs`` (default 100,000) payloads of ``--payload`` bytes
    (default 100), each timed from call to return. Reports jobs/s, best and median of the runs.
``--latency``
    Single ``add`` latency under ``--fsync always``: 1 producer, then ``--producers`` (default 64)
    concurrent producers, each its own ``Client`` connection. ``--adds`` (default 5,000) timed adds
    in total per case, after ``--warmup`` (default 200) untimed ones. Reports p50, p99 and max in ms
    and the aggregate adds/s.
``--restart``
    ``--jobs`` (default 1,000,000) waiting jobs of ``--payload`` bytes: fill a fresh data directory
    with ``add_bulk`` (``--fill-batch`` jobs per call, default 100,000; fsync everysec), SIGTERM the
    broker, start it again on the same directory. Reports the fill rate, the restart time (process
    start to its ``listening on`` line), the replay time from its ``recovered ... in S s`` log line,
    and its resident memory once listening and idle for ``--idle`` seconds (default 1): VmRSS and
    the peak VmHWM from /proc/PID/status, in MB (10^6 bytes).

Prints a table and one JSON line with every figure and the targets: everysec ``add_bulk`` of at
least 200,000 jobs/s (best run), replay of 1M jobs under 5 s, RSS under 500 MB for 1M waiting
100-byte jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import LoggedBroker, check, percentile  # noqa: E402

from conveyor.client import Client  # noqa: E402
from examples.processes import BrokerProcess  # noqa: E402

TARGET_BULK_EVERYSEC = 200_000
"""jobs/s, best run of ``add_bulk`` under ``--fsync everysec``."""
TARGET_REPLAY_SECONDS = 5.0
"""For 1,000,000 waiting jobs."""
TARGET_RSS_MB = 500.0
"""Idle after restart with 1,000,000 waiting jobs of 100 bytes."""

_RECOVERED = re.compile(r"recovered (\d+) jobs \((\d+) waiting\) from (\d+) records, "
                        r"(\d+) bytes, in ([0-9.]+) s")


# Part a: add_bulk throughput per fsync policy.

async def bulk(policy: str, jobs: int, runs: int, payload: bytes) -> dict[str, Any]:
    broker = BrokerProcess("--fsync", policy)
    rates: list[float] = []
    try:
        async with Client(broker.url) as client:
            payloads = [payload] * jobs
            for run in range(runs):
                started = time.perf_counter()
                ids = await client.add_bulk(f"bulk-{run}", payloads)
                elapsed = time.perf_counter() - started
                if len(ids) != jobs:
                    raise RuntimeError(f"add_bulk returned {len(ids)} ids for {jobs} jobs")
                rates.append(jobs / elapsed)
    finally:
        broker.stop()
    return {"policy": policy, "jobs": jobs, "runs": runs,
            "best_jobs_per_s": max(rates), "median_jobs_per_s": statistics.median(rates),
            "all_jobs_per_s": rates}


# Part b: single add latency under fsync always.

async def latency(url: str, producers: int, adds: int, warmup: int,
                  payload: bytes) -> dict[str, Any]:
    queue = f"latency-{producers}"
    clients = [Client(url, name=f"producer-{i}") for i in range(producers)]
    await asyncio.gather(*(c.connect() for c in clients))
    try:
        # Warm-up, spread over the producers and run concurrently like the timed part.
        await asyncio.gather(*(_adds(c, queue, n, payload, None)
                               for c, n in zip(clients, _split(warmup, producers), strict=True)))
        samples: list[float] = []
        started = time.perf_counter()
        await asyncio.gather(*(_adds(c, queue, n, payload, samples)
                               for c, n in zip(clients, _split(adds, producers), strict=True)))
        elapsed = time.perf_counter() - started
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    samples.sort()
    return {"producers": producers, "adds": adds,
            "p50_ms": percentile(samples, 50) * 1000, "p99_ms": percentile(samples, 99) * 1000,
            "max_ms": samples[-1] * 1000, "adds_per_s": adds / elapsed}


async def _adds(client: Client, queue: str, count: int, payload: bytes,
                samples: list[float] | None) -> None:
    for _ in range(count):
        started = time.perf_counter()
        await client.add(queue, payload)
        if samples is not None:
            samples.append(time.perf_counter() - started)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# Part c: restart time and memory with many waiting jobs.

async def restart(jobs: int, fill_batch: int, idle: float, payload: bytes) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="conveyor-durability-") as scratch:
        data_dir = str(Path(scratch) / "data")
        broker = LoggedBroker(data_dir, Path(scratch) / "fill.log", "--fsync", "everysec")
        try:
            async with Client(broker.url, timeout=120) as client:
                started = time.perf_counter()
                added = 0
                while added < jobs:
                    count = min(fill_batch, jobs - added)
                    added += len(await client.add_bulk("restart", [payload] * count))
                fill_seconds = time.perf_counter() - started
            fill_memory = broker.memory_mb()
        finally:
            broker.stop(check=True)
        log_bytes = sum(p.stat().st_size for p in Path(data_dir).glob("*.log"))

        broker = LoggedBroker(data_dir, Path(scratch) / "restart.log", "--fsync", "everysec")
        try:
            restart_seconds = broker.ready
            await asyncio.sleep(idle)
            memory = broker.memory_mb()
            async with Client(broker.url) as client:
                waiting = (await client.counts("restart"))["waiting"]
        finally:
            broker.stop()
        text = broker.log_path.read_text()
    match = _RECOVERED.search(text)
    if match is None:
        raise RuntimeError(f"no 'recovered ...' line in the broker's log: {text[-2000:]!r}")
    if waiting != jobs:
        raise RuntimeError(f"{waiting} jobs waiting after restart, expected {jobs}")
    return {"jobs": jobs, "log_bytes": log_bytes,
            "fill_seconds": fill_seconds, "fill_jobs_per_s": jobs / fill_seconds,
            "fill_rss_mb": fill_memory["rss_mb"], "fill_peak_mb": fill_memory["peak_mb"],
            "restart_seconds": restart_seconds, "replay_seconds": float(match[5]),
            "recovered_jobs": int(match[1]), "recovered_waiting": int(match[2]),
            "recovered_records": int(match[3]), "recovered_bytes": int(match[4]),
            **memory}


# Report.

def _print_report(figures: dict[str, Any]) -> None:
    if "bulk" in figures:
        print(f"add_bulk throughput, {figures['bulk'][0]['jobs']:,} jobs x "
              f"{figures['payload_bytes']} B, {figures['bulk'][0]['runs']} runs (jobs/s)")
        print(f"{'fsync':>9} {'best':>10} {'median':>10}")
        for row in figures["bulk"]:
            print(f"{row['policy']:>9} {row['best_jobs_per_s']:>10,.0f} "
                  f"{row['median_jobs_per_s']:>10,.0f}")
        print()
    if "latency" in figures:
        print(f"add latency, fsync always, {figures['latency'][0]['adds']:,} adds per case (ms)")
        print(f"{'producers':>9} {'p50':>8} {'p99':>8} {'max':>8} {'adds/s':>9}")
        for row in figures["latency"]:
            print(f"{row['producers']:>9} {row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f} "
                  f"{row['max_ms']:>8.3f} {row['adds_per_s']:>9,.0f}")
        print()
    if "restart" in figures:
        row = figures["restart"]
        print(f"restart with {row['jobs']:,} waiting jobs x {figures['payload_bytes']} B "
              f"(log {row['log_bytes'] / 1e6:.1f} MB)")
        print(f"  fill rate       {row['fill_jobs_per_s']:>10,.0f} jobs/s "
              f"({row['fill_seconds']:.2f} s; broker RSS {row['fill_rss_mb']:.1f} MB)")
        print(f"  restart         {row['restart_seconds']:>10.3f} s (process start to listening)")
        print(f"  replay          {row['replay_seconds']:>10.3f} s (from the recovered line)")
        print(f"  RSS idle        {row['rss_mb']:>10.1f} MB")
        print(f"  peak (VmHWM)    {row['peak_mb']:>10.1f} MB")
        print()
    checks = figures["checks"]
    if checks:
        print("targets")
        for name, result in checks.items():
            verdict = "met" if result["met"] else "MISSED"
            print(f"  {name:<22} {result['value']:>12,.3f} {result['op']} "
                  f"{result['target']:<12,} {verdict}")
    print(json.dumps(figures))


def _checks(figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    checks: dict[str, dict[str, Any]] = {}
    everysec = [r for r in figures.get("bulk", []) if r["policy"] == "everysec"]
    if everysec:
        value = everysec[0]["best_jobs_per_s"]
        checks["bulk_everysec_jobs_s"] = check(value, ">=", TARGET_BULK_EVERYSEC)
    if "restart" in figures:
        row = figures["restart"]
        # The targets are stated for 1M jobs; other sizes are reported against them unscaled.
        checks["replay_seconds"] = check(row["replay_seconds"], "<", TARGET_REPLAY_SECONDS)
        checks["rss_mb"] = check(row["rss_mb"], "<", TARGET_RSS_MB)
    return checks


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = parser.add_argument_group("parts (all when none is named)")
    parts.add_argument("--bulk", action="store_true", help="add_bulk throughput per fsync policy")
    parts.add_argument("--latency", action="store_true",
                       help="single add latency under fsync always")
    parts.add_argument("--restart", action="store_true",
                       help="restart time and memory with many waiting jobs")
    parser.add_argument("--payload", type=int, default=100, metavar="BYTES",
                        help="payload size: a bytes value of this length (default: 100)")
    parser.add_argument("--policies", nargs="+", default=["always", "everysec", "no"],
                        choices=["always", "everysec", "no"],
                        help="fsync policies for --bulk (default: always everysec no)")
    parser.add_argument("--bulk-jobs", type=int, default=100_000,
                        help="jobs per add_bulk call (default: 100000)")
    parser.add_argument("--runs", type=int, default=3,
                        help="add_bulk calls per policy (default: 3)")
    parser.add_argument("--producers", type=int, default=64,
                        help="concurrent producers of the second latency case (default: 64)")
    parser.add_argument("--adds", type=int, default=5_000,
                        help="timed adds per latency case (default: 5000)")
    parser.add_argument("--warmup", type=int, default=200,
                        help="untimed adds before each latency case (default: 200)")
    parser.add_argument("--jobs", type=int, default=1_000_000,
                        help="waiting jobs in the log for --restart (default: 1000000)")
    parser.add_argument("--fill-batch", type=int, default=100_000,
                        help="jobs per add_bulk call when filling for --restart (default: 100000)")
    parser.add_argument("--idle", type=float, default=1.0, metavar="SECONDS",
                        help="wait after the restarted broker listens before reading its memory "
                             "(default: 1)")
    args = parser.parse_args()
    run_all = not (args.bulk or args.latency or args.restart)
    payload = b"x" * args.payload
    figures: dict[str, Any] = {"bench": "durability", "payload_bytes": args.payload}

    if run_all or args.bulk:
        figures["bulk"] = [await bulk(policy, args.bulk_jobs, args.runs, payload)
                           for policy in args.policies]
    if run_all or args.latency:
        broker = BrokerProcess("--fsync", "always")
        try:
            figures["latency"] = [
                await latency(broker.url, producers, args.adds, args.warmup, payload)
                for producers in (1, args.producers)]
        finally:
            broker.stop()
    if run_all or args.restart:
        figures["restart"] = await restart(args.jobs, args.fill_batch, args.idle, payload)
    figures["targets"] = {"bulk_everysec_jobs_s_min": TARGET_BULK_EVERYSEC,
                          "replay_seconds_max": TARGET_REPLAY_SECONDS,
                          "rss_mb_max": TARGET_RSS_MB}
    figures["checks"] = _checks(figures)
    _print_report(figures)


if __name__ == "__main__":
    asyncio.run(main())
