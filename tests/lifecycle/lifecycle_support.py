"""Helpers for the job-lifecycle tests (imported as ``lifecycle_support``; pytest puts this
directory on ``sys.path``): running in-process workers, and worker CLI processes that a test
may freeze (SIGSTOP).

The worker process handle, the child environment and waiting on conditions (``eventually``,
``wait_for_workers``) come from ``tests/processes.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from processes import WorkerProcess
from processes import subprocess_env as child_env

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
