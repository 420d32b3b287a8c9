"""Job handlers used by ``make demo`` and the benchmarks."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from conveyor.worker import Job


async def sleep(job: Job) -> dict[str, Any]:
    """Sleep ``job.data["seconds"]``; report which process started the job and when."""
    started = time.time()
    await asyncio.sleep(float(job.data.get("seconds", 0)))
    return {"pid": os.getpid(), "started": started}


async def noop(job: Job) -> None:
    """Do nothing: measures the queue itself."""
