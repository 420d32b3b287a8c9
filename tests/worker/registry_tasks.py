"""A task registry with three tasks on two queues, and jobs that wait for a gate file.

Worker processes import this module as ``registry_tasks`` (the tests put this directory on their
``PYTHONPATH``); the tests import it the same way, to add its tasks' jobs.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

from conveyor.worker import Job, Tasks, current_job

tasks = Tasks()
tasks.queue("images", concurrency=3)

NOT_A_HANDLER = 42
"""Neither a function nor a registry: the CLI refuses it."""


@tasks.job(queue="emails")
async def send_email(to: str, subject: str = "hello") -> dict[str, Any]:
    """Report the arguments and, through ``current_job()``, the job that ran them."""
    job = current_job()
    await job.progress(50)
    return {"to": to, "subject": subject, "job": job.id, "attempt": job.attempt,
            "pid": os.getpid()}


@tasks.job(queue="emails", name="count")
def count_words(text: str) -> dict[str, Any]:
    """A plain task: it runs in a thread, where ``current_job()`` still works."""
    return {"words": len(text.split()), "job": current_job().id,
            "thread": threading.current_thread() is not threading.main_thread()}


@tasks.job(queue="images", name="resize")
def resize_image(path: str, width: int = 100) -> dict[str, Any]:
    """A plain task with a default argument."""
    return {"path": path, "width": width, "job": current_job().id}


@tasks.job(queue="emails")
async def wait_async(gate: str) -> int:
    """Mark the start (a file named after the job id next to ``gate``), then wait for the
    ``gate`` file to exist."""
    job = current_job()
    Path(f"{gate}.{job.id}").touch()
    while not Path(gate).exists():
        await asyncio.sleep(0.01)
    return os.getpid()


@tasks.job(queue="images")
def wait_plain(gate: str) -> int:
    """``wait_async`` as a plain function, in a thread (which nothing can cancel)."""
    Path(f"{gate}.{current_job().id}").touch()
    while not Path(gate).exists():
        time.sleep(0.01)
    return os.getpid()


async def handler(job: Job) -> Any:
    """A plain handler function (not a registry): returns the payload."""
    return job.data
