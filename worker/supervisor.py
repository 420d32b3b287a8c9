"""The supervisor of ``--processes N``: start N worker processes at once, restart one that dies,
and stop them all gracefully on SIGTERM or SIGINT."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any, Final

__all__ = ["KILL_MARGIN", "RESTART_MAX", "RESTART_MIN", "STABLE_AFTER", "Supervisor"]

RESTART_MIN: Final = 0.5
RESTART_MAX: Final = 30.0
"""Seconds before a dead worker process is started again: doubling from the first to the
second while it keeps dying."""
STABLE_AFTER: Final = 10.0
"""Seconds a process must live for its next restart to wait ``RESTART_MIN`` again."""
KILL_MARGIN: Final = 5.0
"""Seconds, beyond the grace period, a process gets to exit after SIGTERM before it is killed."""

log = logging.getLogger("conveyor.worker.supervisor")


@dataclass(slots=True)
class _Slot:
    """One of the N places for a worker process."""

    process: BaseProcess | None = None
    started: float = 0.0
    delay: float = RESTART_MIN
    """Seconds the next restart waits."""
    restart_at: float | None = None
    """When the process that died is started again (monotonic seconds)."""


class Supervisor:
    """Runs ``count`` processes of ``target(*args)`` until SIGTERM or SIGINT.

    ``target`` and ``args`` must pickle: processes are spawned (a fresh interpreter each), so a
    process never inherits the supervisor's threads or locks.
    """

    def __init__(self, count: int, target: Callable[..., object], args: tuple[Any, ...], *,
                 grace: float) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._target = target
        self._args = args
        self._grace = grace
        self._slots = [_Slot() for _ in range(count)]
        self._stopping = False

    def run(self) -> int:
        """Supervise until a signal; stop every process; return 0."""
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self._stopping = True
            with contextlib.suppress(OSError):  # the pipe is full: a wake-up is pending anyway
                os.write(wake_write, b"\0")

        previous = {signum: signal.signal(signum, on_signal)
                    for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            # All at once: each start returns as soon as the process is spawned, so the N
            # interpreters import and connect in parallel.
            now = time.monotonic()
            for slot in self._slots:
                if self._stopping:
                    break
                self._start(slot, now)
            while not self._stopping:
                self._watch(wake_read)
            self._stop_all()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            os.close(wake_read)
            os.close(wake_write)
        return 0

    def _start(self, slot: _Slot, now: float) -> None:
        process = self._context.Process(target=self._target, args=self._args)
        process.start()
        slot.process, slot.started, slot.restart_at = process, now, None
        log.info("started worker process %d", process.pid, extra={"fields": {
            "child_pid": process.pid}})

    def _watch(self, wake: int) -> None:
        """Wait for a process to exit, a restart to fall due or a signal; act on it."""
        now = time.monotonic()
        due = [slot.restart_at for slot in self._slots if slot.restart_at is not None]
        timeout = max(0.0, min(due) - now) if due else None
        waitables: list[Any] = [slot.process.sentinel for slot in self._slots
                                if slot.process is not None]
        multiprocessing.connection.wait([*waitables, wake], timeout)
        if self._stopping:
            return
        now = time.monotonic()
        for slot in self._slots:
            if slot.process is not None and slot.process.exitcode is not None:
                self._exited(slot, now)
            elif slot.restart_at is not None and slot.restart_at <= now:
                self._start(slot, now)

    def _exited(self, slot: _Slot, now: float) -> None:
        assert slot.process is not None
        pid, status = slot.process.pid, slot.process.exitcode
        slot.process.close()
        slot.process = None
        if now - slot.started >= STABLE_AFTER:
            slot.delay = RESTART_MIN
        log.warning("worker process %s exited with status %s; restarting in %g s", pid, status,
                    slot.delay, extra={"fields": {"child_pid": pid, "status": status,
                                                  "restart_in": slot.delay}})
        slot.restart_at = now + slot.delay
        slot.delay = min(slot.delay * 2, RESTART_MAX)

    def _stop_all(self) -> None:
        """SIGTERM every process; kill what is left after the grace period and a margin."""
        processes = [slot.process for slot in self._slots if slot.process is not None]
        log.info("stopping %d worker process(es)", len(processes))
        for process in processes:
            if process.exitcode is None and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self._grace + KILL_MARGIN
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.exitcode is None:
                log.warning("worker process %s still running %g s after SIGTERM; killing it",
                            process.pid, self._grace + KILL_MARGIN)
                process.kill()
                process.join()
        log.info("every worker process stopped")
