"""Start and stop a broker and worker processes, for the demo and the benchmarks."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conveyor.client import Client

ROOT = Path(__file__).resolve().parent.parent


class BrokerProcess:
    """``python -m conveyor.broker --port 0`` as a child process."""

    def __init__(self, *args: str) -> None:
        self.data_dir = tempfile.TemporaryDirectory(prefix="conveyor-")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "conveyor.broker", "--port", "0", "--log-level", "warning",
             "--data-dir", self.data_dir.name, *args],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.process.kill()
            raise RuntimeError(f"broker did not start (it printed {line!r})")
        self.url = line.removeprefix("listening on ")

    def stop(self) -> int:
        """SIGTERM, then wait; return the exit status. The log is removed."""
        try:
            return _stop(self.process)
        finally:
            self.data_dir.cleanup()


class WorkerProcesses:
    """``python -m conveyor.worker HANDLER --processes P`` as a child process."""

    def __init__(self, handler: str, queue: str, url: str, *, processes: int,
                 concurrency: int = 1, log_level: str = "warning") -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "conveyor.worker", handler, "--queue", queue, "--url", url,
             "--processes", str(processes), "--concurrency", str(concurrency),
             "--log-level", log_level],
            cwd=ROOT, text=True,
        )

    def stop(self) -> int:
        """SIGTERM (a graceful shutdown of every process), then wait; return the exit status."""
        return _stop(self.process)


async def wait_for_workers(client: Client, queue: str, count: int, timeout: float = 30) -> None:
    """Return once ``count`` workers are subscribed to ``queue``."""
    deadline = time.monotonic() + timeout
    while (await client.counts(queue))["workers"] < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} workers did not subscribe to {queue!r} in {timeout} s")
        await asyncio.sleep(0.05)


def _stop(process: subprocess.Popen[str]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()
