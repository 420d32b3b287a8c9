"""Helpers of the CLI tests: running the ``conveyor`` command as a user does, ``python -m
process, against a real broker.

The tests' in-process broker (``broker``/``url`` from ``tests/conftest.py``) keeps serving while
a command runs because the command is awaited through ``asyncio.create_subprocess_exec``.

- ``conveyor(*args, url=..., stdin=..., env=...)``: run a command to its exit; a ``Result``.
- ``LiveCommand``: a command that runs until interrupted (``status --watch``, ``events``): wait
  for a line of its output, then send SIGINT and read its exit status.
- ``Pty``: a pseudo-terminal for a command that behaves differently on a terminal.
- ``run_failing_job``: a job that failed for good, with its error and traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processes import ROOT, eventually, subprocess_env

from conveyor.client import Client
from conveyor.worker import Job, Worker

HERE = Path(__file__).resolve().parent
COMMAND_TIMEOUT = 30.0
"""Seconds a command may take before the test fails."""
LINE_TIMEOUT = 15.0
"""Seconds a live command gets to print an expected line."""


def command_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a command: ``cli_handlers`` importable, no ``CONVEYOR_URL``."""
    return subprocess_env(HERE, extra)


def argv(args: Sequence[str], url: str | None) -> list[str]:
    """``python -m conveyor.cli ARGS [--url URL]``."""
    return [sys.executable, "-m", "conveyor.cli", *args, *(["--url", url] if url else [])]


@dataclass(frozen=True)
class Result:
    """What a finished command did."""

    args: Sequence[str]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """stdout as one JSON document."""
        return json.loads(self.stdout)

    def json_lines(self) -> list[Any]:
        """stdout as JSON lines."""
        return [json.loads(line) for line in self.stdout.splitlines()]

    def error_line(self) -> str:
        """The one line on stderr of a command that failed as expected (no traceback)."""
        assert "Traceback" not in self.stderr, self
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, self
        assert lines[0].startswith("conveyor: "), self
        return lines[0]

    def ok(self) -> Result:
        """Assert the command succeeded with nothing on stderr; return it."""
        assert self.returncode == 0 and not self.stderr.strip(), self
        return self


async def conveyor(*args: str, url: str | None = None, stdin: bytes | None = None,
                   env: dict[str, str] | None = None, stdin_fd: int | None = None,
                   stderr_fd: int | None = None) -> Result:
    """Run ``conveyor ARGS --url URL`` to its exit (``COMMAND_TIMEOUT`` at most)."""
    process = await asyncio.create_subprocess_exec(
        *argv(args, url), cwd=ROOT, env=command_env(env),
        stdin=stdin_fd if stdin_fd is not None else (
            subprocess.PIPE if stdin is not None else subprocess.DEVNULL),
        stdout=subprocess.PIPE,
        stderr=stderr_fd if stderr_fd is not None else subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), COMMAND_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"conveyor {' '.join(args)} did not exit within "
                             f"{COMMAND_TIMEOUT} s") from None
    assert process.returncode is not None
    return Result(args, process.returncode, out.decode(errors="replace"),
                  (err or b"").decode(errors="replace"))


class LiveCommand:
    """A command that runs until Ctrl-C, its stdout and stderr read as they come."""

    def __init__(self, process: asyncio.subprocess.Process, args: Sequence[str]) -> None:
        self.process = process
        self.args = args
        self.out: list[str] = []
        self.err = ""

    @classmethod
    async def start(cls, *args: str, url: str | None = None, stdout_fd: int | None = None,
                    stdin_pipe: bool = False) -> LiveCommand:
        """Start ``conveyor ARGS --url URL``; ``stdin_pipe``: its stdin is ``process.stdin``."""
        process = await asyncio.create_subprocess_exec(
            *argv(args, url), cwd=ROOT, env=command_env(),
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=stdout_fd if stdout_fd is not None else subprocess.PIPE,
            stderr=subprocess.PIPE)
        return cls(process, args)

    async def line(self, predicate: Callable[[str], bool], *, stream: str = "stdout") -> str:
        """Read ``stream`` until a line satisfies ``predicate``; return that line."""
        reader = self.process.stdout if stream == "stdout" else self.process.stderr
        assert reader is not None
        try:
            async with asyncio.timeout(LINE_TIMEOUT):
                while True:
                    raw = await reader.readline()
                    if not raw:
                        raise AssertionError(f"{stream} of conveyor {' '.join(self.args)} "
                                             f"ended; read so far: {self.out}")
                    text = raw.decode(errors="replace").rstrip("\n")
                    if stream == "stdout":
                        self.out.append(text)
                    else:
                        self.err += text + "\n"
                    if predicate(text):
                        return text
        except TimeoutError:
            raise AssertionError(f"no such line on the {stream} of conveyor "
                                 f"{' '.join(self.args)} within {LINE_TIMEOUT} s; read so far: "
                                 f"{self.out} / {self.err!r}") from None

    async def interrupt(self) -> int:
        """Send SIGINT (Ctrl-C); return the exit status, after reading what is left."""
        self.process.send_signal(signal.SIGINT)
        return await self.finish()

    async def finish(self) -> int:
        """Close its stdin and wait for its exit; return the status, after reading what is
        left."""
        try:
            out, err = await asyncio.wait_for(self.process.communicate(), COMMAND_TIMEOUT)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(f"conveyor {' '.join(self.args)} did not exit") from None
        self.out += (out or b"").decode(errors="replace").splitlines()
        self.err += (err or b"").decode(errors="replace")
        assert self.process.returncode is not None
        return self.process.returncode

    async def kill(self) -> None:
        """Stop it whatever state it is in (teardown)."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


class Pty:
    """A pseudo-terminal: hand ``slave`` to a command; what it writes is read from ``master``."""

    def __init__(self, *, columns: int = 120, rows: int = 40) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.output = b""

    def write(self, data: bytes) -> None:
        """Type ``data`` at the terminal."""
        os.write(self.master, data)

    async def read_until(self, wanted: bytes, timeout: float = LINE_TIMEOUT) -> bytes:
        """Read the terminal's output until ``wanted`` shows; return everything read."""
        os.set_blocking(self.master, False)
        deadline = time.monotonic() + timeout
        while wanted not in self.output:
            try:
                self.output += os.read(self.master, 65536)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{wanted!r} not shown on the terminal within "
                                         f"{timeout} s: {self.output[-2000:]!r}") from None
                await asyncio.sleep(0.01)
            except OSError:
                # EIO: every process holding the terminal has exited.
                break
        return self.output

    def drain(self) -> None:
        """Read whatever is buffered, so a writer is never blocked on a full terminal."""
        os.set_blocking(self.master, False)
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(self.master, 65536):
                self.output += chunk

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


async def fail_always(job: Job) -> None:
    """A handler that always fails, naming the payload's ``to``."""
    raise ValueError(f"no mailbox for {job.data['to']}")


async def run_failing_job(client: Client, url: str, queue: str) -> int:
    """Add a job that fails on each of its 2 attempts; return its id once it has failed."""
    job_id = await client.add(queue, {"to": "nobody@example.com"}, attempts=2, name="send")
    worker = Worker(queue, fail_always, url=url)
    running = asyncio.create_task(worker.run())
    try:
        async def failed() -> bool:
            job = await client.get_job(job_id)
            return job is not None and job.state.value == "failed"

        await eventually(failed, f"job {job_id} fails", timeout=10)
    finally:
        await worker.close()
        await running
    return job_id
