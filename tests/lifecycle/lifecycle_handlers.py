"""Job handlers for the lifecycle tests' worker subprocesses.

Worker subprocesses import this module as ``lifecycle_handlers`` (the conftest puts this directory
on their ``PYTHONPATH``).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from conveyor.worker import Job


async def hold(job: Job) -> dict[str, Any]:
    """Mark the start of this try, then sleep ``job.data["seconds"]``.

    The mark is an empty file in ``job.data["dir"]`` named ``JOB-ATTEMPT-PID-TIME``; the result
    names the process that ran the try and when it started.
    """
    started = time.time()
    name = f"{job.id}-{job.attempt}-{os.getpid()}-{started!r}"
    (Path(job.data["dir"]) / name).touch()
    await asyncio.sleep(float(job.data["seconds"]))
    return {"pid": os.getpid(), "started": started, "attempt": job.attempt}


def hold_sync(job: Job) -> dict[str, Any]:
    """``hold`` as a plain function: the worker runs it in a thread."""
    started = time.time()
    name = f"{job.id}-{job.attempt}-{os.getpid()}-{started!r}"
    (Path(job.data["dir"]) / name).touch()
    time.sleep(float(job.data["seconds"]))
    return {"pid": os.getpid(), "started": started, "attempt": job.attempt}


def starts(directory: Path) -> list[tuple[int, int, int, float]]:
    """The tries ``hold`` marked in ``directory``: (job, attempt, pid, start time), by time."""
    marks = []
    for path in directory.iterdir():
        job, attempt, pid, started = path.name.split("-", 3)
        marks.append((int(job), int(attempt), int(pid), float(started)))
    return sorted(marks, key=lambda mark: mark[3])
