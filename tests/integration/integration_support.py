"""What the integration tests and their fixtures share: child processes' environment, the broker
subprocess and the worker-process factory's type. A module of its own, named for this directory,
so that tests import these by a name no other directory's module has (``conftest`` is not one:
each directory has its own).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from processes import STOP_TIMEOUT, WorkerProcess, check_asyncio_leaks, launch_broker
from processes import subprocess_env as child_env

from conveyor.broker import Broker
from conveyor.client import Client

HERE = Path(__file__).resolve().parent


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for child processes, with this directory's handler modules importable."""
    return child_env(HERE, extra)


# Broker subprocess.


class BrokerProcess:
    """``python -m conveyor.broker`` running as a child process."""

    def __init__(self, process: subprocess.Popen[bytes], line: str, log_path: Path) -> None:
        self.process = process
        self.line = line
        """What the broker printed first: ``listening on HOST:PORT``."""
        self.url = line.removeprefix("listening on ").strip()
        self.log_path = log_path

    @property
    def log(self) -> str:
        """What the broker wrote to stderr so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``signum`` and wait for the exit; kill it if it hangs. Returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(
                    f"broker did not exit within {timeout} s of signal {signum}:\n{self.log}"
                ) from None
        if self.process.stdout is not None and not self.process.stdout.closed:
            self.process.stdout.close()
        check_asyncio_leaks(self.log, "broker")
        return self.process.returncode


def start_broker_process(directory: Path, *args: str) -> BrokerProcess:
    """Start ``python -m conveyor.broker --port 0`` with its log in ``directory``; wait until it
    listens."""
    log_path = directory / "broker.stderr"
    process, line = launch_broker(
        [sys.executable, "-m", "conveyor.broker", "--host", "127.0.0.1", "--port", "0",
         "--data-dir", str(directory / "broker-data"), *args],
        stderr_path=log_path, env=subprocess_env(), cwd=directory)
    return BrokerProcess(process, line, log_path)


StartWorker = Callable[..., WorkerProcess]
"""The ``start_worker`` fixture: starts ``python -m conveyor.worker ARGS`` as a child process."""


async def compacted(client: Client, broker: Broker) -> None:
    """Write history the log can throw away (jobs added to a queue of their own and drained)
    until ``broker``'s log has compacted at least once."""
    log = broker.log
    assert log is not None, "the broker has no log"
    deadline = time.monotonic() + 30
    while not log.compactions:
        assert time.monotonic() < deadline, "no compaction within 30 s"
        await client.add_bulk("filler", ["x" * 200] * 20)
        await client.drain("filler")
