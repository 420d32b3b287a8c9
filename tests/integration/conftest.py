"""Fixtures for the integration tests: real brokers on port 0 and real worker processes.

- ``broker`` / ``make_broker`` / ``url``: an in-process ``Broker`` (``tests/conftest.py``).
- ``broker_process`` / ``start_broker``: ``python -m conveyor.broker --port 0`` as a child
  process, for
  crashes and the CLI. ``run_worker_cli`` runs the worker CLI to completion.
- ``start_worker``: ``python -m conveyor.worker ...`` as a child process in its own process
  group; every
  one started is stopped (SIGTERM, then SIGKILL) at teardown.
- ``raw``: a greeted ``rawwire.Raw`` connection to the in-process broker.
- ``wait_for_workers``, ``wait_for_counts``, ``wait_for_files``: wait on a condition instead of
  sleeping a fixed time.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from integration_support import BrokerProcess, StartWorker, start_broker_process, subprocess_env
from processes import ROOT, WorkerProcess
from processes import wait_for_workers as _wait_for_workers
from rawwire import Raw

from conveyor.broker import Broker
from conveyor.client import Client

# A raw connection.


@pytest.fixture
async def raw(broker: Broker) -> AsyncIterator[Raw]:
    """A greeted raw connection to the in-process broker; closed at teardown."""
    connection = await Raw.open(broker.port)
    yield connection
    await connection.close()


@pytest.fixture
def start_broker(tmp_path: Path) -> Iterator[Callable[..., BrokerProcess]]:
    """A factory of broker subprocesses (extra CLI arguments allowed); all stopped at teardown.

    Each runs in its own directory under ``tmp_path``, its log there too, so nothing is written
    to the checkout.
    """
    brokers: list[BrokerProcess] = []

    def start(*args: str) -> BrokerProcess:
        directory = tmp_path / f"broker-{len(brokers)}"
        directory.mkdir()
        brokers.append(start_broker_process(directory, *args))
        return brokers[-1]

    yield start
    for broker in brokers:
        broker.stop()


@pytest.fixture
def broker_process(start_broker: Callable[..., BrokerProcess]) -> BrokerProcess:
    """A broker subprocess on a free port; stopped (SIGTERM, else SIGKILL) at teardown."""
    return start_broker()


@pytest.fixture
def run_worker_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_worker_cli(*args)``: run ``python -m conveyor.worker ARGS`` to completion (30 s at
    most)."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "conveyor.worker", *args], cwd=ROOT,
                              env=subprocess_env(), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=30)

    return run


# Worker subprocesses.


@pytest.fixture
async def start_worker(tmp_path: Path) -> AsyncIterator[StartWorker]:
    """A factory that starts the worker CLI; every worker it starts is stopped at teardown.

    ``start_worker(handler, queue=..., url=..., processes=1, concurrency=1, grace=None,
    env=None)``; ``handler`` is ``MODULE:FUNCTION`` (``examples.tasks:...`` or ``handlers:...``).
    Teardown is async so that an in-process broker keeps serving while the workers shut down.
    """
    workers: list[WorkerProcess] = []

    def start(handler: str, *, queue: str, url: str, processes: int = 1, concurrency: int = 1,
              grace: float | None = None, env: dict[str, str] | None = None) -> WorkerProcess:
        args = [sys.executable, "-m", "conveyor.worker", handler, "--queue", queue, "--url", url,
                "--processes", str(processes), "--concurrency", str(concurrency)]
        if grace is not None:
            args += ["--grace", str(grace)]
        log_path = tmp_path / f"worker-{len(workers)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(args, cwd=ROOT, env=subprocess_env(env),
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       start_new_session=True)
        worker = WorkerProcess(process, log_path)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        await worker.stop()


# Waiting on conditions.


async def _wait_for_counts(client: Client, queue: str, timeout: float = 30.0,
                          **expected: int) -> dict[str, int]:
    """Poll ``client.counts(queue)`` until it has the ``expected`` values; return the counts."""
    deadline = time.monotonic() + timeout
    while True:
        counts = await client.counts(queue)
        if all(counts[key] == value for key, value in expected.items()):
            return counts
        if time.monotonic() > deadline:
            raise AssertionError(f"counts of {queue!r} still {counts} after {timeout} s; "
                                 f"expected {expected}")
        await asyncio.sleep(0.02)


async def _wait_for_files(directory: Path, count: int, timeout: float = 30.0) -> list[str]:
    """Return the names in ``directory`` once there are at least ``count``."""
    deadline = time.monotonic() + timeout
    while True:
        names = sorted(path.name for path in directory.iterdir())
        if len(names) >= count:
            return names
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(names)} of {count} files in {directory} after {timeout} s")
        await asyncio.sleep(0.01)


@pytest.fixture
def wait_for_workers() -> Callable[..., Awaitable[None]]:
    """``await wait_for_workers(broker_or_client, queue, count, *worker_processes, timeout=30)``."""
    return _wait_for_workers


@pytest.fixture
def wait_for_counts() -> Callable[..., Awaitable[dict[str, int]]]:
    """``await wait_for_counts(client, queue, timeout=30, waiting=0, ...)``: the counts."""
    return _wait_for_counts


@pytest.fixture
def wait_for_files() -> Callable[..., Awaitable[list[str]]]:
    """``await wait_for_files(directory, count, timeout=30)``: the names in it."""
    return _wait_for_files
