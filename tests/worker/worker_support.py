"""Helpers of the worker tests (importable as ``worker_support``: pytest puts this directory on
``sys.path``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from processes import WorkerProcess

from conveyor.broker import Broker
from conveyor.worker import Worker

HERE = Path(__file__).resolve().parent
"""This directory: child processes get it on ``PYTHONPATH`` to import ``registry_tasks``."""
MODULE_COMMAND = (sys.executable, "-m", "conveyor.worker")

StartCli = Callable[..., WorkerProcess]
"""The ``start_cli`` fixture: ``start_cli(*args, cwd=..., command=..., env=...)``."""
RunCli = Callable[..., subprocess.CompletedProcess[str]]
"""The ``run_cli`` fixture: ``run_cli(*args)``."""


def subscribers(broker: Broker, queue: str) -> int:
    """Connections subscribed to ``queue`` on an in-process broker."""
    state = broker.queues.queues.get(queue)
    return 0 if state is None else len(state.consumers)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` parsed as a JSON object (a line that is not one fails the test)."""
    records = []
    for line in text.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        records.append(record)
    return records


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    """Run an in-process ``worker`` for the duration of the block, then close it."""
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        await worker.close()
        async with asyncio.timeout(15):
            await task
