"""Helpers for the job-lifecycle tests (imported as ``lifecycle_support``; pytest puts this
directory on ``sys.path``): waiting on conditions, running in-process workers, and worker CLI
processes that a test may freeze (SIGSTOP).

Copied in small part from ``tests/integration/conftest.py``, which other directories cannot import.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from broker import Broker
from worker import Worker

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
"""The repository root: worker subprocesses run there so ``broker`` and ``worker`` import."""

STOP_TIMEOUT = 10.0
"""Seconds a child process gets to exit after SIGTERM before it is killed."""


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for child processes: the repo root and this directory importable."""
    env = dict(os.environ)
    paths = [str(ROOT), str(HERE)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("CONVEYOR_URL", None)
    env.update(extra or {})
    return env


async def wait_until(condition: Callable[[], Any], *, timeout: float = 30.0,
                     what: str = "condition", interval: float = 0.01) -> Any:
    """Poll ``condition`` (a function, or a coroutine function) until it returns something
    true; return that. Fails naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still not true after {timeout} s")
        await asyncio.sleep(interval)


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


class WorkerProcess:
    """``python -m worker ... --processes 1`` as a child process (the worker itself), leader of
    its own process group."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log(self) -> str:
        """What the worker wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def exited(self) -> bool:
        """Whether the process has exited (it is not reaped, so its group id stays taken)."""
        if self.process.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the worker process."""
        if not self.exited():
            os.kill(self.pid, signum)

    async def stop(self) -> None:
        """Wake the group (it may be stopped), SIGTERM it, wait, SIGKILL what is left; reap."""
        if self.process.returncode is not None:
            return
        if not self.exited():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGCONT)
                os.killpg(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while not self.exited() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        # Safe while the leader is unreaped: the group id cannot have been reused.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait()


StartWorker = Callable[..., WorkerProcess]
"""The ``start_worker`` fixture's type."""


async def wait_for_workers(broker: Broker, queue: str, count: int, *workers: WorkerProcess,
                           timeout: float = 30.0) -> None:
    """Return once ``count`` connections are subscribed to ``queue`` of the in-process
    ``broker``; fail early, with its output, when one of ``workers`` has exited."""
    def subscribed() -> bool:
        for worker in workers:
            if worker.exited():
                raise AssertionError(f"worker {worker.pid} exited; its output:\n{worker.log}")
        state = broker.queues.queues.get(queue)
        return state is not None and len(state.consumers) >= count

    await wait_until(subscribed, timeout=timeout, what=f"{count} workers on {queue!r}")
