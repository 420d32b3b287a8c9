"""Job handlers for the integration tests.

Worker subprocesses import this module as ``handlers`` (conftest puts this directory on their
``PYTHONPATH``); in-process workers import it the same way, since pytest puts it on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, Final

from conveyor.worker import Job

RECORDS_ENV: Final = "CONVEYOR_TEST_RECORDS"
"""Directory where ``record`` keeps one file per worker process, named ``PID.ids``."""

_records_fd: int | None = None


async def record(job: Job) -> None:
    """Append the job's id to this process's record file: one line per run of a job.

    The file is opened once, in append mode, and each id goes out in its own ``write``, so the
    record is complete however the process ends.
    """
    global _records_fd
    if _records_fd is None:
        path = Path(os.environ[RECORDS_ENV]) / f"{os.getpid()}.ids"
        _records_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(_records_fd, b"%d\n" % job.id)


async def hold(job: Job) -> dict[str, Any]:
    """Mark the start (an empty file named after this pid in ``job.data["dir"]``), then sleep.

    Sleeps ``job.data["seconds"]``; returns which process ran the job and when it started.
    """
    started = time.time()
    (Path(job.data["dir"]) / str(os.getpid())).touch()
    await asyncio.sleep(float(job.data["seconds"]))
    return {"pid": os.getpid(), "started": started}


def hold_sync(job: Job) -> dict[str, Any]:
    """``hold`` as a plain function: the worker runs it in a thread, which nothing can cancel."""
    started = time.time()
    (Path(job.data["dir"]) / str(os.getpid())).touch()
    time.sleep(float(job.data["seconds"]))
    return {"pid": os.getpid(), "started": started}


async def echo(job: Job) -> Any:
    """Return the payload as the result."""
    return job.data


def explode(job: Job) -> None:
    """Raise ``ValueError`` naming the payload (a plain function: it runs in a thread)."""
    raise ValueError(f"cannot process {job.data!r}")
