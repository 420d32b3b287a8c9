"""Conveyor against BullMQ's Python client on Redis: the spread and throughput workloads, side by
side in one run, with Conveyor's advantage as a ratio (BullMQ's time / Conveyor's, Conveyor's
jobs/s / BullMQ's: above 1x when Conveyor does better).

Needs the ``bench`` extra (``pip install -e '.[bench]'``, which installs ``bullmq``) and a Redis
server: ``--redis-url`` (default redis://127.0.0.1:6379), or ``--start-redis`` to start
``redis-server --port P --save '' --appendonly no`` on a free port of 127.0.0.1 for the run (Debian:
``apt-get install redis-server``). Conveyor runs its broker with ``--fsync everysec``; Redis runs
as given (with ``--start-redis``: no persistence at all).

Both sides run the same workloads with worker processes started the same way, each process its
own event loop (uvloop when installed, as ``python -m conveyor.worker`` does):

spread
    W idle worker processes of concurrency 1 (W from ``--spread-workers``, default 3 8), one bulk
    add of W jobs that return their start time, ``--trials`` times (default 20): the spread of the
    start times and the last start relative to the bulk add's return, p50 in ms. BullMQ reads the
    start times from the jobs' return values once they complete; it may run two of the W jobs on
    one worker (the ``distinct`` column counts the workers that started one, minimum over trials).
throughput
    ``--jobs`` no-op jobs (default 20,000), ``--workers`` processes (default 2) of
    ``--concurrency`` (default 50): end to end (workers running during the add), add only (nobody
    subscribed) and drain only (the workers started after the add, timed from the moment all are
    connected), as in ``bench/throughput.py``. Conveyor adds with one ``add_bulk``; BullMQ with
    ``Queue.addBulk`` in chunks of ``--chunk`` jobs (default 1,000). CPU per job (utime + stime from
    /proc) of the broker (redis-server, found from ``INFO server`` when it is on this host) and of
    all worker processes, end to end.

Prints the table and one JSON line of figures. Exits 1 with one line when bullmq is missing or
Redis cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from measure import CpuMeter, rounded  # noqa: E402
from spread import measure as conveyor_spread  # noqa: E402
from throughput import run_policy as conveyor_throughput  # noqa: E402

from examples.processes import BrokerProcess  # noqa: E402


class Unavailable(Exception):
    """BullMQ or Redis cannot be used: reported as one line."""


def _import(name: str) -> Any:
    """Import an optional module, typed ``Any`` (bullmq ships no type information)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise Unavailable(f"{name} is not installed ({exc}): pip install -e '.[bench]'") from None


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# Redis.

class RedisServer:
    """``redis-server`` without persistence on a free port of 127.0.0.1."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise Unavailable("redis-server is not on PATH (Debian: apt-get install redis-server)")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def redis_info(url: str, timeout: float = 10) -> dict[str, Any]:
    """``INFO server`` of the Redis at ``url``, retrying until it answers or ``timeout``."""
    redis = _import("redis.asyncio")
    deadline = time.monotonic() + timeout
    while True:
        connection = redis.from_url(url)
        try:
            info: dict[str, Any] = await connection.info("server")
            return info
        except Exception as exc:  # redis-py raises several kinds for a refused connection
            if time.monotonic() > deadline:
                raise Unavailable(f"cannot reach Redis at {url}: {exc}") from None
            await asyncio.sleep(0.05)
        finally:
            await connection.aclose()


# BullMQ worker processes.

def _bullmq_worker(url: str, queue: str, concurrency: int, handler: str, stop: Event) -> None:
    _run(_bullmq_work(url, queue, concurrency, handler, stop))


async def _bullmq_work(url: str, queue: str, concurrency: int, handler: str,
                       stop: Event) -> None:
    bullmq = _import("bullmq")

    async def noop(job: Any, token: str) -> None:
        return None

    async def started(job: Any, token: str) -> dict[str, Any]:
        return {"pid": os.getpid(), "started": time.time()}

    worker = bullmq.Worker(queue, noop if handler == "noop" else started,
                           {"connection": url, "concurrency": concurrency})
    while not stop.is_set():
        await asyncio.sleep(0.02)
    await worker.close()


class BullWorkers:
    """``processes`` BullMQ worker processes on ``queue``."""

    def __init__(self, url: str, queue: str, *, processes: int, concurrency: int,
                 handler: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self.processes = [
            context.Process(target=_bullmq_worker, name=f"bullmq-worker-{n}",
                            args=(url, queue, concurrency, handler, self._stop))
            for n in range(processes)]
        for process in self.processes:
            process.start()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def stop(self) -> None:
        self._stop.set()
        for process in self.processes:
            process.join(20)
            if process.exitcode is None:
                process.kill()
                process.join()


async def _bull_workers_ready(queue: Any, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while await queue.get_workers_count() < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} BullMQ workers did not connect in {timeout} s")
        await asyncio.sleep(0.002)


async def _bull_finished(queue: Any, total: int, timeout: float = 600) -> float:
    """Poll the completed count until ``total``; return the perf_counter of that reply."""
    deadline = time.perf_counter() + timeout
    while True:
        counts = await queue.getJobCounts("completed", "failed")
        now = time.perf_counter()
        if counts["completed"] + counts["failed"] >= total:
            if counts["failed"]:
                raise RuntimeError(f"{counts['failed']} BullMQ jobs failed")
            return now
        if now > deadline:
            raise TimeoutError(f"BullMQ: {counts} after {timeout} s, expected {total} done")
        await asyncio.sleep(0.002)


async def _bull_add(queue: Any, jobs: int, chunk: int, data: dict[str, Any]) -> None:
    for start in range(0, jobs, chunk):
        await queue.addBulk([{"name": "job", "data": data}
                             for _ in range(min(chunk, jobs - start))])


# BullMQ workloads.

async def bull_spread(url: str, workers: int, trials: int) -> dict[str, Any]:
    bullmq = _import("bullmq")
    name = f"spread-{workers}-{uuid.uuid4().hex[:8]}"
    queue = bullmq.Queue(name, {"connection": url})
    pool = BullWorkers(url, name, processes=workers, concurrency=1, handler="started")
    spreads: list[float] = []
    delays: list[float] = []
    distinct: list[int] = []
    try:
        await _bull_workers_ready(queue, workers)
        await asyncio.sleep(0.5)  # until every worker is blocked waiting for a job
        done = 0
        for _ in range(trials):
            added = await queue.addBulk([{"name": "job", "data": {}}] * workers)
            returned = time.time()
            done += workers
            await _bull_finished(queue, done, timeout=30)
            jobs = [await bullmq.Job.fromId(queue, job.id) for job in added]
            starts = [job.returnvalue["started"] for job in jobs]
            distinct.append(len({job.returnvalue["pid"] for job in jobs}))
            spreads.append((max(starts) - min(starts)) * 1000)
            delays.append((max(starts) - returned) * 1000)
            await asyncio.sleep(0.05)
    finally:
        pool.stop()
        await queue.close()
    return {"workers": workers, "spread_p50_ms": statistics.median(spreads),
            "spread_max_ms": max(spreads), "last_start_p50_ms": statistics.median(delays),
            "last_start_max_ms": max(delays), "distinct_workers_min": min(distinct)}


async def bull_throughput(url: str, redis_pid: int | None, jobs: int, workers: int,
                          concurrency: int, chunk: int) -> dict[str, Any]:
    bullmq = _import("bullmq")
    tag = uuid.uuid4().hex[:8]
    broker_pids = [redis_pid] if redis_pid is not None else []
    warmup = min(1_000, jobs)

    # End to end.
    name = f"end-to-end-{tag}"
    queue = bullmq.Queue(name, {"connection": url})
    pool = BullWorkers(url, name, processes=workers, concurrency=concurrency, handler="noop")
    try:
        await _bull_workers_ready(queue, workers)
        await _bull_add(queue, warmup, chunk, {})
        await _bull_finished(queue, warmup)
        broker_cpu, worker_cpu = CpuMeter(broker_pids), CpuMeter(pool.pids)
        broker_cpu.start()
        worker_cpu.start()
        started = time.perf_counter()
        await _bull_add(queue, jobs, chunk, {})
        finished = await _bull_finished(queue, warmup + jobs)
        broker_cpu.stop()
        worker_cpu.stop()
    finally:
        pool.stop()
        await queue.close()
    e2e = {"jobs_per_s": jobs / (finished - started), "seconds": finished - started,
           "broker_us_per_job": broker_cpu.seconds * 1e6 / jobs if broker_pids else None,
           "workers_us_per_job": worker_cpu.seconds * 1e6 / jobs}

    # Add only, then drain only.
    name = f"add-then-drain-{tag}"
    queue = bullmq.Queue(name, {"connection": url})
    try:
        started = time.perf_counter()
        await _bull_add(queue, jobs, chunk, {})
        added = time.perf_counter()
        pool = BullWorkers(url, name, processes=workers, concurrency=concurrency,
                           handler="noop")
        try:
            await _bull_workers_ready(queue, workers)
            drain_started = time.perf_counter()
            done_before = (await queue.getJobCounts("completed"))["completed"]
            drained = await _bull_finished(queue, jobs)
        finally:
            pool.stop()
    finally:
        await queue.close()
    return {"end_to_end": e2e,
            "add_only": {"jobs_per_s": jobs / (added - started), "seconds": added - started},
            "drain_only": {"jobs_per_s": (jobs - done_before) / (drained - drain_started),
                           "seconds": drained - drain_started}}


# Report.

def _advantage(better: float | None, worse: float | None) -> str:
    """``worse / better`` as ``N.NNx``: above 1 when Conveyor does better."""
    if better is None or worse is None or better <= 0 or worse <= 0:
        return "-"
    return f"{worse / better:.2f}x"


def _print_report(figures: dict[str, Any]) -> None:
    print(f"Conveyor (fsync everysec) vs BullMQ {figures['bullmq_version']} on Redis "
          f"{figures['redis_version']}; 'advantage' above 1x means Conveyor does better")
    print()
    print(f"spread: W idle workers of concurrency 1, one bulk add of W jobs, "
          f"{figures['trials']} trials (p50, ms)")
    print(f"{'W':>4} {'':>9} {'spread':>9} {'last start':>11}")
    for ours, theirs in zip(figures["spread"]["conveyor"], figures["spread"]["bullmq"],
                            strict=True):
        print(f"{ours['workers']:>4} {'conveyor':>9} {ours['spread_p50_ms']:>9.3f} "
              f"{ours['last_start_p50_ms']:>11.3f}")
        print(f"{'':>4} {'bullmq':>9} {theirs['spread_p50_ms']:>9.3f} "
              f"{theirs['last_start_p50_ms']:>11.3f}   "
              f"(distinct workers, min: {theirs['distinct_workers_min']} of {theirs['workers']})")
        spread = _advantage(ours["spread_p50_ms"], theirs["spread_p50_ms"])
        last = _advantage(ours["last_start_p50_ms"], theirs["last_start_p50_ms"])
        print(f"{'':>4} {'advantage':>9} {spread:>9} {last:>11}")
    print()
    ours, theirs = figures["throughput"]["conveyor"], figures["throughput"]["bullmq"]
    print(f"throughput: {figures['jobs']:,} no-op jobs, {figures['workers']} worker processes x "
          f"concurrency {figures['concurrency']} (jobs/s; CPU us per job, end to end)")
    print(f"{'':>9} {'end to end':>11} {'add only':>10} {'drain only':>11} {'broker us':>10} "
          f"{'workers us':>11}")
    for label, row in (("conveyor", ours), ("bullmq", theirs)):
        e2e = row["end_to_end"]
        broker = e2e["broker_us_per_job"]
        print(f"{label:>9} {e2e['jobs_per_s']:>11,.0f} {row['add_only']['jobs_per_s']:>10,.0f} "
              f"{row['drain_only']['jobs_per_s']:>11,.0f} "
              f"{'-' if broker is None else f'{broker:.1f}':>10} "
              f"{e2e['workers_us_per_job']:>11.1f}")
    cells = [_advantage(theirs[part]["jobs_per_s"], ours[part]["jobs_per_s"])
             for part in ("end_to_end", "add_only", "drain_only")]
    cells += [_advantage(ours["end_to_end"][key], theirs["end_to_end"][key])
              for key in ("broker_us_per_job", "workers_us_per_job")]
    print(f"{'advantage':>9} {cells[0]:>11} {cells[1]:>10} {cells[2]:>11} {cells[3]:>10} "
          f"{cells[4]:>11}")
    print(json.dumps(rounded(figures)))


async def compare(args: argparse.Namespace, redis_url: str, *,
                  started: bool) -> dict[str, Any]:
    bullmq = _import("bullmq")
    # A server we just started may need a moment before it accepts connections.
    info = await redis_info(redis_url, timeout=10 if started else 1)
    pid = int(info["process_id"])
    redis_pid = pid if Path(f"/proc/{pid}/stat").exists() else None
    figures: dict[str, Any] = {
        "bench": "compare_bullmq", "bullmq_version": bullmq.__version__,
        "redis_version": info.get("redis_version"), "trials": args.trials, "jobs": args.jobs,
        "workers": args.workers, "concurrency": args.concurrency, "chunk": args.chunk,
    }
    broker = BrokerProcess("--fsync", "everysec")
    try:
        ours_spread = [await conveyor_spread(broker.url, w, args.trials)
                       for w in args.spread_workers]
    finally:
        broker.stop()
    theirs_spread = [await bull_spread(redis_url, w, args.trials) for w in args.spread_workers]
    figures["spread"] = {"conveyor": ours_spread, "bullmq": theirs_spread}
    ours = await conveyor_throughput("everysec", args.jobs, args.workers, args.concurrency)
    theirs = await bull_throughput(redis_url, redis_pid, args.jobs, args.workers,
                                   args.concurrency, args.chunk)
    figures["throughput"] = {"conveyor": ours, "bullmq": theirs}
    return figures


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379",
                        help="Redis for BullMQ (default: redis://127.0.0.1:6379)")
    parser.add_argument("--start-redis", action="store_true",
                        help="start redis-server without persistence on a free port instead")
    parser.add_argument("--spread-workers", type=int, nargs="+", default=[3, 8],
                        help="values of W for spread (default: 3 8)")
    parser.add_argument("--trials", type=int, default=20,
                        help="bulk adds per W for spread (default: 20)")
    parser.add_argument("--jobs", type=int, default=20_000,
                        help="jobs per throughput part (default: 20000)")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes for throughput (default: 2)")
    parser.add_argument("--concurrency", type=int, default=50,
                        help="concurrency of each throughput worker process (default: 50)")
    parser.add_argument("--chunk", type=int, default=1_000,
                        help="jobs per BullMQ addBulk call (default: 1000)")
    args = parser.parse_args()
    redis: RedisServer | None = None
    try:
        _import("bullmq")
        if args.start_redis:
            redis = RedisServer()
        figures = await compare(args, redis.url if redis is not None else args.redis_url,
                                started=redis is not None)
    except Unavailable as exc:
        print(f"compare_bullmq: {exc}", file=sys.stderr)
        return 1
    finally:
        if redis is not None:
            redis.stop()
    _print_report(figures)
    return 0


if __name__ == "__main__":
    sys.exit(_run(main()))
