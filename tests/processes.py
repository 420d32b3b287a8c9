"""Child processes for tests in every directory (importable as ``processes``: pytest puts
``tests/`` on ``sys.path`` for ``tests/conftest.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from conveyor.broker import Broker
from conveyor.client import Client
from conveyor.worker import Worker

ROOT = Path(__file__).resolve().parent.parent
"""The repository root: child processes run there so ``broker``, ``worker`` and ``examples``
import."""

WAIT_TIMEOUT = 30.0
"""Seconds ``eventually`` waits for a condition by default."""

BROKER_START_TIMEOUT = 20.0
"""Seconds a broker subprocess gets to print its ``listening on`` line."""

STOP_TIMEOUT = 10.0
"""Seconds a child process gets to exit after SIGTERM before it is killed."""

ASYNCIO_LEAKS = ("exception was never retrieved", "Task was destroyed but it is pending")
"""What asyncio logs for a future or task whose exception nobody read, or a task destroyed
while pending: no child process may log either."""


def check_asyncio_leaks(output: str, who: str) -> None:
    """Fail when ``output`` (a child process's log) holds one of ``ASYNCIO_LEAKS``."""
    for leak in ASYNCIO_LEAKS:
        if leak in output:
            raise AssertionError(f"{who} logged {leak!r}; its output:\n{output}")


def subprocess_env(here: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for child processes: the repo root and ``here`` (a test directory, for
    its handler modules) importable, and no broker address or failpoint inherited."""
    env = dict(os.environ)
    paths = [str(ROOT), str(here)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    for name in ("CONVEYOR_URL", "CONVEYOR_FAILPOINT"):
        env.pop(name, None)
    env.update(extra or {})
    return env


def read_line(stream: IO[bytes], timeout: float) -> str:
    """The first line of ``stream``, or whatever arrived before EOF or ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    data = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                break
            chunk = os.read(stream.fileno(), 4096)
            if not chunk:
                break
            data += chunk
    return data.partition(b"\n")[0].decode(errors="replace")


def free_port() -> int:
    """A port nothing listens on now (bound and released at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_broker(argv: Sequence[str], *, stderr_path: Path, env: dict[str, str],
                  cwd: Path = ROOT, append: bool = False,
                  new_session: bool = False) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``argv``, a broker's command line, with its stderr written to ``stderr_path``
    (appended to with ``append``) and, with ``new_session``, in a session of its own; return
    the process and its first line once that line is ``listening on HOST:PORT``.

    Fails, with the broker's stderr, when it prints something else or nothing within
    ``BROKER_START_TIMEOUT`` seconds; the broker is killed and reaped then.
    """
    with stderr_path.open("ab" if append else "wb") as stderr:
        process = subprocess.Popen([*argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=stderr,
                                   start_new_session=new_session)
    assert process.stdout is not None
    line = read_line(process.stdout, BROKER_START_TIMEOUT)
    if not line.startswith("listening on "):
        process.kill()
        process.wait()
        process.stdout.close()
        raise AssertionError(f"broker did not start: it printed {line!r}; stderr:\n"
                             f"{stderr_path.read_text(errors='replace')}")
    return process, line


class WorkerProcess:
    """``python -m conveyor.worker ...`` running as a child process, leader of its own process
    group."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    @property
    def pid(self) -> int:
        """The CLI's pid: with ``--processes 1`` the worker itself, else the supervisor."""
        return self.process.pid

    @property
    def log(self) -> str:
        """What the worker processes wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def exited(self) -> bool:
        """Whether the CLI process has exited (it is not reaped, so its group id stays taken)."""
        if self.process.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def signal(self, signum: int = signal.SIGTERM) -> None:
        """Send ``signum`` to the CLI process only, as ``kill PID`` would."""
        if not self.exited():
            os.kill(self.pid, signum)

    async def wait(self, timeout: float) -> int:
        """Wait for the CLI to exit; return its status. Stray group members are killed."""
        deadline = time.monotonic() + timeout
        while not self.exited():
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.pid} still running after {timeout} s; its "
                                     f"output:\n{self.log}")
            await asyncio.sleep(0.02)
        self._kill_group()
        return self.process.wait()

    async def stop(self) -> None:
        """Wake the group (it may be stopped), SIGTERM it, wait, SIGKILL what is left; reap.
        Fails when the worker logged one of ``ASYNCIO_LEAKS``."""
        if self.process.returncode is not None:
            check_asyncio_leaks(self.log, f"worker {self.pid}")
            return
        if not self.exited():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGCONT)
                os.killpg(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while not self.exited() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        self._kill_group()
        self.process.wait()
        check_asyncio_leaks(self.log, f"worker {self.pid}")

    def _kill_group(self) -> None:
        # Safe while the leader is unreaped: the group id cannot have been reused.
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)


async def eventually(condition: Callable[[], Any], what: str, *, timeout: float = WAIT_TIMEOUT,
                     workers: Iterable[WorkerProcess] = ()) -> Any:
    """Poll ``condition`` (a function; what it returns is awaited if it is awaitable) until it
    returns something true; return that.

    Fails naming ``what`` after ``timeout`` seconds, or as soon as one of ``workers`` has exited
    (with its output): the condition waited for would never come.
    """
    workers = tuple(workers)
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        for worker in workers:
            if worker.exited():
                raise AssertionError(f"worker {worker.pid} exited before {what}; its output:\n"
                                     f"{worker.log}")
        if time.monotonic() > deadline:
            logs = "".join(f"\nworker {worker.pid}'s output:\n{worker.log}" for worker in workers)
            raise AssertionError(f"{what}: not within {timeout} s{logs}")
        await asyncio.sleep(0.01)


async def wait_for_workers(source: Broker | Client, queue: str, count: int,
                           *workers: WorkerProcess, timeout: float = WAIT_TIMEOUT) -> None:
    """Return once ``count`` connections (or more) are subscribed to ``queue``.

    ``source`` is an in-process broker (its counts are read directly) or a client of any broker,
    a subprocess one included (``counts(queue)["workers"]`` is polled). Fails early, with its
    output, when one of ``workers`` has exited.
    """
    async def subscribed() -> bool:
        if isinstance(source, Broker):
            return source.queues.counts(queue)["workers"] >= count
        return (await source.counts(queue))["workers"] >= count

    await eventually(subscribed, f"{count} workers subscribed to {queue!r}", timeout=timeout,
                     workers=workers)


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    """Run an in-process ``worker`` for the duration of the block, then close it."""
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        await worker.close()
        async with asyncio.timeout(15):
            await task
