"""Fixtures for the worker tests: the worker CLI as a child process.

- ``start_cli(*args, cwd=..., command=..., env=...)``: ``python -m conveyor.worker ARGS`` in its
  own process group, output to a log file; every one started is stopped at teardown.
- ``run_cli(*args)``: the worker CLI run to completion.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from processes import ROOT, WorkerProcess, subprocess_env
from worker_support import HERE, MODULE_COMMAND, RunCli, StartCli


@pytest.fixture
async def start_cli(tmp_path: Path) -> AsyncIterator[StartCli]:
    """``start_cli(*args, cwd=ROOT, command=MODULE_COMMAND, env=None)``: a running worker CLI.

    Teardown is async so that an in-process broker keeps serving while the workers shut down.
    """
    workers: list[WorkerProcess] = []

    def start(*args: str, cwd: Path = ROOT, command: Sequence[str] = MODULE_COMMAND,
              env: dict[str, str] | None = None) -> WorkerProcess:
        log_path = tmp_path / f"worker-cli-{len(workers)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen([*command, *args], cwd=cwd,
                                       env=env if env is not None else subprocess_env(HERE),
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       start_new_session=True)
        workers.append(WorkerProcess(process, log_path))
        return workers[-1]

    yield start
    for worker in workers:
        await worker.stop()


@pytest.fixture
def run_cli() -> RunCli:
    """``run_cli(*args)``: run ``python -m conveyor.worker ARGS`` to completion (30 s at most)."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*MODULE_COMMAND, *args], cwd=ROOT, env=subprocess_env(HERE),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=30)

    return run
