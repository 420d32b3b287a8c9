"""Fixtures for the job-lifecycle tests.

- ``broker`` / ``make_broker`` / ``url``: in ``tests/conftest.py``.
- ``start_worker``: ``python -m conveyor.worker ...`` (one process, its own process group,
  ``--lease``);
  every one started is woken (SIGCONT), stopped (SIGTERM, then SIGKILL) and reaped at teardown.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lifecycle_support import StartWorker, subprocess_env
from processes import ROOT, WorkerProcess

# Worker subprocesses.


@pytest.fixture
async def start_worker(tmp_path: Path) -> AsyncIterator[StartWorker]:
    """``start_worker(handler, queue=..., url=..., lease=None, concurrency=1, env=None)``:
    start the worker CLI with one process; every worker started is stopped at teardown.

    Teardown is async so that an in-process broker keeps serving while the workers shut down.
    """
    workers: list[WorkerProcess] = []

    def start(handler: str, *, queue: str, url: str, lease: float | None = None,
              concurrency: int = 1, env: dict[str, str] | None = None) -> WorkerProcess:
        args = [sys.executable, "-m", "conveyor.worker", handler, "--queue", queue, "--url", url,
                "--concurrency", str(concurrency), "--grace", "1"]
        if lease is not None:
            args += ["--lease", str(lease)]
        log_path = tmp_path / f"worker-{len(workers)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(args, cwd=ROOT, env=subprocess_env(env),
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       start_new_session=True)
        workers.append(WorkerProcess(process, log_path))
        return workers[-1]

    yield start
    for worker in workers:
        await worker.stop()
