"""Helpers for the job-lifecycle tests (imported as ``lifecycle_support``; pytest puts this
directory on ``sys.path``): waiting on conditions, running in-process workers, and worker CLI
processes that a test may freeze (SIGSTOP).

The worker process handle and the child environment come from ``tests/processes.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from processes import WorkerProcess, eventually
from processes import subprocess_env as child_env

from conveyor.broker import Broker
from conveyor.worker import Worker

HERE = Path(__file__).resolve().parent



def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for child processes, with this directory's handler modules importable."""
    return child_env(HERE, extra)


@contextlib.asynccontextmanager
async def running(*workers: Worker) -> AsyncIterator[None]:
    """Run in-process ``workers`` for the duration of the block, then close them."""
    tasks = [asyncio.create_task(worker.run()) for worker in workers]
    try:
        yield
    finally:
        for worker in workers:
            await worker.close()
        async with asyncio.timeout(15):
            await asyncio.gather(*tasks)


# Worker subprocesses.


StartWorker = Callable[..., WorkerProcess]
"""The ``start_worker`` fixture's type."""


async def wait_for_workers(broker: Broker, queue: str, count: int, *workers: WorkerProcess,
                           timeout: float = 30.0) -> None:
    """Return once ``count`` connections are subscribed to ``queue`` of the in-process
    ``broker``; fail early, with its output, when one of ``workers`` has exited."""
    def subscribed() -> bool:
        for worker in workers:
            if worker.exited():
                raise AssertionError(f"worker {worker.pid} exited; its output:\n{worker.log}")
        state = broker.queues.queues.get(queue)
        return state is not None and len(state.consumers) >= count

    await eventually(subscribed, timeout=timeout, what=f"{count} workers on {queue!r}")
