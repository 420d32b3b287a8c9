"""Helpers for the job-lifecycle tests (imported as ``lifecycle_support``; pytest puts this
directory on ``sys.path``): running in-process workers, a subscriber speaking the protocol by
hand (``RawWorker``), and worker CLI processes that a test may freeze (SIGSTOP).

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

from conveyor.client import Connection, Push
from conveyor.protocol import Deliver, Delivery, Subscribe
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


# A worker speaking the protocol by hand.


class RawWorker:
    """A subscriber speaking the protocol by hand, with a window of one job: it does only what
    the test tells it to."""

    def __init__(self, connection: Connection, pushed: asyncio.Queue[Delivery]) -> None:
        self.connection = connection
        self.pushed = pushed

    @classmethod
    async def open(cls, url: str, queue: str, *, lease: float = 30.0) -> RawWorker:
        """Connect to ``url`` and subscribe to ``queue`` under a ``lease`` of that many seconds."""
        pushed: asyncio.Queue[Delivery] = asyncio.Queue()

        def on_push(message: Push) -> None:
            if isinstance(message, Deliver):
                for delivery in message.jobs:
                    pushed.put_nowait(delivery)

        connection = await Connection.open(url, on_push=on_push)
        await connection.request(lambda req: Subscribe(req=req, queue=queue, window=1,
                                                       lease=lease))
        return cls(connection, pushed)

    async def delivery(self) -> Delivery:
        """The next job pushed (10 s at most)."""
        return await asyncio.wait_for(self.pushed.get(), 10)


# Worker subprocesses.


StartWorker = Callable[..., WorkerProcess]
"""The ``start_worker`` fixture's type."""
