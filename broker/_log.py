"""The append-only log: appending records, group commit, and the background task.

Records produced in one loop pass are written with one ``write`` to the increment appended to
(``_files`` keeps the data directory's files). Under ``--fsync always`` the caller waits for an
fsync covering its records; fsyncs run in a thread and cover everything written while the
previous one ran (group commit). Opening the log replays it (``_recovery``); the background task
``run`` fsyncs by the policy and compacts (``_compaction``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from ._compaction import DEFAULT_COMPACT_FLOOR, DEFAULT_COMPACT_RATIO, Compactor
from ._errors import DiskFull, LogError
from ._failpoints import failpoint, hooked
from ._files import LogFiles
from ._logfile import append_record
from ._manifest import make_directory
from ._queues import Queues
from ._records import Record, encode_record
from ._recovery import Recovery

__all__ = [
    # Log's option defaults and errors come with it.
    "DEFAULT_COMPACT_FLOOR",
    "DEFAULT_COMPACT_RATIO",
    "DiskFull",
    "FsyncPolicy",
    "Log",
    "LogError",
]

_SPACE_ERRORS: Final = (errno.ENOSPC, errno.EDQUOT)


class FsyncPolicy(enum.Enum):
    """When the log is fsynced."""

    ALWAYS = "always"
    """Before anything written is acknowledged (group commit)."""
    EVERYSEC = "everysec"
    """At least once a second."""
    NO = "no"
    """When the operating system decides (and on shutdown)."""


class Log:
    """The log of one data directory."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        fsync: FsyncPolicy = FsyncPolicy.EVERYSEC,
        salvage: bool = False,
        compact_floor: int = DEFAULT_COMPACT_FLOOR,
        compact_ratio: float = DEFAULT_COMPACT_RATIO,
    ) -> None:
        self.directory = Path(directory)
        self.policy = fsync
        self.salvage = salvage
        self.written = 0
        """Bytes appended since the log was opened: a position that only grows."""
        self.synced = 0
        """Position up to which an fsync has completed."""
        self.failure: LogError | None = None
        self.files = LogFiles(self.directory)
        self.compactor = Compactor(self.files, floor=compact_floor, ratio=compact_ratio)
        self._buffer = bytearray()
        self._sync_waiters: list[tuple[int, Callable[[], None]]] = []
        self._syncing: asyncio.Future[None] | None = None
        """The fsync under way, or the last one."""
        self._wake = asyncio.Event()

    @property
    def size(self) -> int:
        """Bytes in the files of the log now."""
        return self.files.size

    @property
    def compactions(self) -> int:
        """Compactions completed since the log was opened."""
        return self.compactor.compactions

    # Opening.

    def open(self, queues: Queues) -> Recovery:
        """Lock the directory, replay the log into ``queues`` and get ready to append."""
        started = time.perf_counter()
        try:
            make_directory(self.directory)
            self.files.lock()
            recovery = self.files.open(queues, salvage=self.salvage)
        except BaseException as exc:
            self.files.release()
            if isinstance(exc, OSError):
                raise LogError(f"cannot open the log in {self.directory}: {exc}") from None
            raise
        recovery.seconds = time.perf_counter() - started
        return recovery

    # Appending.

    def append(self, records: Sequence[Record]) -> int:
        """Write ``records`` in one write; return the log position after them.

        Raises ``DiskFull`` (nothing written) when the disk has no room, ``LogError`` on any
        other write error.
        """
        if self.failure is not None:
            raise self.failure
        if self.files.fd < 0:
            raise LogError(f"the log in {self.directory} is closed")
        buffer = self._buffer
        buffer.clear()
        encode = encode_record
        try:
            for record in records:
                append_record(buffer, encode(record))
            self._write(buffer)
        except (DiskFull, LogError):
            raise
        except Exception as exc:
            # A bug, not the disk: the records are not in the log, so nothing more may be
            # acknowledged.
            self.failure = LogError(f"writing the log in {self.directory} failed "
                                    f"({type(exc).__name__}: {exc})")
            raise self.failure from exc
        self.files.size += len(buffer)
        self.written += len(buffer)
        if self.policy is FsyncPolicy.ALWAYS:
            self._wake.set()
        return self.written

    def _write(self, data: bytearray) -> None:
        fd = self.files.fd
        done = 0
        try:
            failpoint("log.write")
            with memoryview(data) as view:
                while done < len(view):
                    done += os.write(fd, view[done:])
        except OSError as exc:
            if done:
                # Leave no partial record behind: the next write starts where this one did.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_CUR) - done)
                    os.lseek(fd, 0, os.SEEK_END)
            if exc.errno in _SPACE_ERRORS:
                raise DiskFull(f"no space left to write the log in {self.directory}") from None
            self.failure = LogError(f"writing the log in {self.directory} failed: {exc}")
            raise self.failure from None

    def when_synced(self, position: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` once an fsync covers ``position`` (at once when one already has)."""
        if self.synced >= position:
            callback()
        else:
            self._sync_waiters.append((position, callback))
            self._wake.set()

    # The background task: fsyncs and compactions.

    async def run(self, queues: Queues) -> None:
        """fsync by the policy and compact when due, until cancelled.

        Raises ``LogError`` when the log fails, and for any other exception that ends the task:
        without it nothing is fsynced any more, so the broker must stop.
        """
        try:
            await self._run(queues)
        except (LogError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise LogError(f"the log's background task failed ({type(exc).__name__}: {exc}); "
                           f"stopping without acknowledging anything more") from exc

    async def _run(self, queues: Queues) -> None:
        interval = 1.0 if self.policy is FsyncPolicy.EVERYSEC else None
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()
            failpoint("log.run")
            self.compactor.poll(queues, self._wake.set)
            if self.policy is not FsyncPolicy.NO or self._sync_waiters:
                await self.sync()

    async def sync(self) -> None:
        """fsync everything written so far; answer the waiters it covers (``when_synced``).
        Raises ``LogError``.

        One fsync runs at a time, in a thread, as a task of its own: a caller cancelled while it
        runs leaves it to finish (its thread uses the files), and the next caller waits for it.
        """
        target = self.written
        while self.synced < target:
            if self.failure is not None:
                raise self.failure
            task = self._syncing
            if task is None or task.done():
                task = self._syncing = asyncio.ensure_future(self._fsync())
                task.add_done_callback(_retrieve)
            await asyncio.shield(task)

    async def _fsync(self) -> None:
        target = self.written
        files = self.files
        fds = [*files.unsynced, files.fd]
        files.unsynced = []
        try:
            await asyncio.get_running_loop().run_in_executor(None, _fsync_all, fds)
        except OSError as exc:
            self.failure = LogError(f"fsync of the log in {self.directory} failed: {exc}; "
                                    f"stopping without acknowledging what it did not cover")
            raise self.failure from None
        finally:
            # Files appends moved away from: this fsync was their last.
            for fd in fds[:-1]:
                os.close(fd)
        self.synced = max(self.synced, target)
        waiters = self._sync_waiters
        if waiters:
            ready = [w for w in waiters if w[0] <= target]
            self._sync_waiters = [w for w in waiters if w[0] > target]
            for _, callback in ready:
                callback()
        if self._sync_waiters:
            self._wake.set()

    async def close(self) -> None:
        """Write and fsync what is pending, answering the waiters that covers, then release the
        directory. Idempotent."""
        await self.compactor.cancel()
        if self._syncing is not None:
            # An fsync under way finishes first: its thread still uses the files.
            await asyncio.wait([self._syncing])
        try:
            if self.files.fd >= 0 and self.failure is None:
                await self.sync()
        finally:
            self.files.release()

def _retrieve(task: asyncio.Future[None]) -> None:
    # Its failure is kept as the log's ``failure`` and raised to every caller after it.
    if not task.cancelled():
        task.exception()


def _fsync_all(fds: Sequence[int]) -> None:
    sizes = {fd: os.fstat(fd).st_size for fd in fds} if hooked("log.synced") else None
    failpoint("log.fsync")
    for fd in fds:
        os.fsync(fd)
    if sizes is not None:
        failpoint("log.synced", sizes)
