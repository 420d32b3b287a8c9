"""Memory after a restart follows the live state, not the history in the log.

Two cases, both run by default; name one with a flag to run only that one:

``--history``
    One live job of 1 KB, then ``--history-mb`` (default 50) MB of history: jobs of 1 KB added to
    another queue in bulks of 100 and drained. The broker (a subprocess, compaction off so the
    history stays in the log) is stopped with SIGTERM and started again on the same directory;
    its VmRSS once listening and idle for ``--idle`` seconds (default 1). Target: under 60 MB.
``--live``
    ``--live-jobs`` (default 600,000) jobs left waiting and ``--finished`` (default 1,400,000) jobs
    completed, all of 100 bytes: every job is added first, then worker processes complete the
    ``--finished`` ones (so replay meets each finished job's add long before its end). Restarted,
    the broker's peak resident memory (VmHWM: replay included) is compared with the VmRSS of a
    fresh broker given the same live state directly: the waiting jobs added, and as many jobs
    completed as the first one retains (``--keep-completed``, default 10,000). Target: at most
    1.25 times that.

Memory is read from /proc/PID/status, in MB (10^6 bytes). Prints a table, then one JSON line with
every figure, the targets and whether each was met.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import LoggedBroker, check, rounded, wait_finished  # noqa: E402

from conveyor.client import Client  # noqa: E402
from examples.processes import WorkerProcesses, wait_for_workers  # noqa: E402

TARGET_HISTORY_RSS_MB = 60.0
"""VmRSS after a restart on 50 MB of history with one live job."""
TARGET_PEAK_RATIO = 1.25
"""Peak VmHWM of a restart over the VmRSS of the same live state built without one."""

HANDLER = "examples.tasks:noop"
BATCH = 50_000
"""Jobs per ``add_bulk`` call when filling."""
NO_COMPACTION = str(1 << 50)
"""--compact-floor that keeps the whole history in the log."""

_RECOVERED = re.compile(r"recovered (\d+) jobs .* in ([0-9.]+) s")


class Broker(LoggedBroker):
    """A broker with compaction off (the whole history stays in the log), fsync no."""

    def __init__(self, data_dir: Path, log_path: Path, *args: str) -> None:
        super().__init__(data_dir, log_path, "--fsync", "no", "--compact-floor", NO_COMPACTION,
                         *args)

    def replay_seconds(self) -> float | None:
        """From the broker's ``recovered ... in S s`` line."""
        found = _RECOVERED.search(self.log_path.read_text())
        return None if found is None else float(found.group(2))

    def stop(self, *, check: bool = True) -> int:
        """As ``LoggedBroker.stop``; an exit status other than 0 raises ``RuntimeError``."""
        return super().stop(check=check)


async def fill(client: Client, queue: str, count: int, payload: bytes) -> None:
    added = 0
    while added < count:
        n = min(BATCH, count - added)
        added += len(await client.add_bulk(queue, [payload] * n))


async def complete(url: str, client: Client, queue: str, count: int) -> None:
    """Run ``count`` jobs of ``queue`` to completion with worker processes."""
    workers = WorkerProcesses(HANDLER, queue, url, processes=2, concurrency=50)
    try:
        await wait_for_workers(client, queue, 2)
        await wait_finished(client, queue, count, timeout=3600, interval=0.2)
    finally:
        workers.stop()


async def idle_memory(broker: Broker, idle: float) -> dict[str, float]:
    await asyncio.sleep(idle)
    return broker.memory_mb()


async def history_case(scratch: Path, history_mb: int, idle: float) -> dict[str, Any]:
    data = scratch / "history"
    payload = b"h" * 1000
    broker = Broker(data, scratch / "history-fill.log")
    try:
        async with Client(broker.url) as client:
            await client.add("keep", b"k" * 1000)
            while sum(p.stat().st_size for p in data.glob("*.log")) < history_mb * 1_000_000:
                await client.add_bulk("churn", [payload] * 100)
                await client.drain("churn")
    finally:
        broker.stop()
    log_mb = sum(p.stat().st_size for p in data.glob("*.log")) / 1e6
    broker = Broker(data, scratch / "history-restart.log")
    try:
        memory = await idle_memory(broker, idle)
        async with Client(broker.url) as client:
            live = (await client.counts("keep"))["waiting"]
    finally:
        broker.stop()
    return {"log_mb": log_mb, "live_jobs": live, **memory,
            "replay_s": broker.replay_seconds()}


async def live_case(scratch: Path, live_jobs: int, finished: int, keep: int,
                    idle: float) -> dict[str, Any]:
    payload = b"p" * 100
    keep_args = ("--keep-completed", str(keep))
    # The history: every job added, then the finished ones completed.
    data = scratch / "live"
    broker = Broker(data, scratch / "live-fill.log", *keep_args)
    started = time.perf_counter()
    try:
        async with Client(broker.url, timeout=120) as client:
            await fill(client, "work", live_jobs, payload)
            await fill(client, "done", finished, payload)
            await complete(broker.url, client, "done", finished)
        history = broker.memory_mb()
    finally:
        broker.stop()
    history_seconds = time.perf_counter() - started
    log_mb = sum(p.stat().st_size for p in data.glob("*.log")) / 1e6

    broker = Broker(data, scratch / "live-restart.log", *keep_args)
    try:
        restarted = await idle_memory(broker, idle)
        async with Client(broker.url) as client:
            counts = await client.counts("work"), await client.counts("done")
    finally:
        broker.stop()
    replay = broker.replay_seconds()

    # The same live state, built directly.
    reference = Broker(scratch / "reference", scratch / "reference.log", *keep_args)
    try:
        async with Client(reference.url, timeout=120) as client:
            await fill(client, "work", live_jobs, payload)
            retained = min(keep, finished)
            await fill(client, "done", retained, payload)
            await complete(reference.url, client, "done", retained)
        built = await idle_memory(reference, idle)
    finally:
        reference.stop()
    return {
        "live_jobs": live_jobs, "finished": finished, "log_mb": log_mb,
        "history_build_s": history_seconds, "history_broker": history,
        "restarted": restarted, "replay_s": replay,
        "waiting_after_restart": counts[0]["waiting"],
        "completed_after_restart": counts[1]["completed"],
        "reference": built,
        "peak_ratio": restarted["peak_mb"] / built["rss_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--history", action="store_true", help="only the history case")
    parser.add_argument("--live", action="store_true", help="only the live-state case")
    parser.add_argument("--history-mb", type=int, default=50)
    parser.add_argument("--live-jobs", type=int, default=600_000)
    parser.add_argument("--finished", type=int, default=1_400_000)
    parser.add_argument("--keep-completed", type=int, default=10_000)
    parser.add_argument("--idle", type=float, default=1.0)
    args = parser.parse_args()
    both = not (args.history or args.live)
    results: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="conveyor-restart-memory-") as scratch:
        if args.history or both:
            history = asyncio.run(history_case(Path(scratch), args.history_mb, args.idle))
            results["history"] = history
            print(f"history: {history['log_mb']:.1f} MB of log, {history['live_jobs']} live "
                  f"job; after the restart RSS {history['rss_mb']:.1f} MB (peak "
                  f"{history['peak_mb']:.1f} MB), replay {history['replay_s']} s")
            checks["history_rss_mb"] = check(history["rss_mb"], "<", TARGET_HISTORY_RSS_MB)
        if args.live or both:
            live = asyncio.run(live_case(Path(scratch), args.live_jobs, args.finished,
                                         args.keep_completed, args.idle))
            results["live"] = live
            print(f"live: {live['live_jobs']:,} waiting + {live['finished']:,} finished, "
                  f"{live['log_mb']:.1f} MB of log (built in {live['history_build_s']:.0f} s)")
            print(f"  restarted: RSS {live['restarted']['rss_mb']:.1f} MB, peak "
                  f"{live['restarted']['peak_mb']:.1f} MB, replay {live['replay_s']} s; "
                  f"{live['waiting_after_restart']:,} waiting, "
                  f"{live['completed_after_restart']:,} completed in all")
            print(f"  built without a restart: RSS {live['reference']['rss_mb']:.1f} MB")
            print(f"  peak / reference: {live['peak_ratio']:.3f}")
            checks["restart_peak_ratio"] = check(live["peak_ratio"], "<=", TARGET_PEAK_RATIO)
    print("targets")
    for name, result in checks.items():
        print(f"  {name:22} {result['value']:10.3f} {result['op']:>2} {result['target']:<8} "
              f"{'met' if result['met'] else 'MISSED'}")
    print(json.dumps(rounded({"bench": "restart_memory", "results": results,
                              "checks": checks})))


if __name__ == "__main__":
    main()
