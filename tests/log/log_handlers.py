"""Job handlers for the log tests' worker subprocesses (imported as ``log_handlers``: the tests put
this directory on the workers' ``PYTHONPATH``)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Final

from conveyor.worker import Job

RECORDS_ENV: Final = "CONVEYOR_TEST_PAYLOADS"
"""Directory where ``record_payload`` keeps one file per worker process, named ``PID.payloads``."""

_records_fd: int | None = None


async def record_payload(job: Job) -> str:
    """Append the job's payload (a string without spaces) to this process's file, one line per
    run of a job; then take a few milliseconds (so a crash finds jobs running) and return the
    payload as the result.

    Each line goes out in its own ``write`` to a file opened in append mode, so the record is
    complete however the process ends.
    """
    global _records_fd
    if _records_fd is None:
        path = Path(os.environ[RECORDS_ENV]) / f"{os.getpid()}.payloads"
        _records_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(_records_fd, f"{job.data}\n".encode())
    await asyncio.sleep(0.003)
    return str(job.data)
