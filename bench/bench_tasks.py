"""Job handlers of the benchmarks that ``examples.tasks`` lacks (workers import them as
``bench.bench_tasks`` from the repository root)."""

from __future__ import annotations

import asyncio
import time

from conveyor.worker import Job


def block(job: Job) -> float:
    """A plain handler: sleep ``job.data["seconds"]`` in its thread; return when it started."""
    started = time.time()
    time.sleep(float(job.data["seconds"]))
    return started


async def hold(job: Job) -> float:
    """``block`` as an async handler."""
    started = time.time()
    await asyncio.sleep(float(job.data["seconds"]))
    return started
