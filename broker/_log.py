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
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from ._compaction import DEFAULT_COMPACT_FLOOR, DEFAULT_COMPACT_RATIO, Compactor
from ._durations import Durations
from ._errors import DiskFull, LogError
from ._failpoints import failpoint, hooked
from ._files import SPACE_ERRORS, LogFiles
from ._logfile import append_record
from ._manifest import make_directory
from ._queues import Queues
from ._records import Record, encode_record
from ._recovery import Recovery

__all__ = [
    # Log's option defaults and errors come with it.
    "DEFAULT_COMPACT_FLOOR",
    "DEFAULT_COMPACT_RATIO",
    "DEFAULT_DISK_RESERVE",
    "DiskFull",
    "FsyncPolicy",
    "Log",
    "LogError",
]

DEFAULT_DISK_RESERVE: Final = 1024 * 1024
"""The least disk space the log holds in reserve (bytes); it holds the estimated size of the
live state instead when that is larger, so a compaction fits in it."""
_NO_RESERVE_ROOM: Final = 64 * 1024
"""With no reserve, the free space (bytes) a full log waits for, twice over, to take adds."""
_TICK: Final = 1.0
"""Seconds between passes of the background task (fsync under everysec, compaction check)."""
_ROOM_RETRY: Final = 1.0
"""Seconds between attempts to take the reserve back while the disk is full."""

log = logging.getLogger("broker")


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
        disk_reserve: int = DEFAULT_DISK_RESERVE,
    ) -> None:
        self.directory = Path(directory)
        self.policy = fsync
        self.salvage = salvage
        self.reserve = disk_reserve
        """The least disk space held in reserve (bytes; 0: none)."""
        self.full = False
        """The disk had no room for the log: the reserve is being given up, and adds are
        refused until it is held again."""
        self.exhausted = False
        """...and all of it is given up: nothing more may be changed until it is held again
        (the server holds every request back)."""
        self.on_room: Callable[[], None] = _nothing
        """Called once the reserve is held again after the disk was full."""
        self.written = 0
        """Bytes appended since the log was opened: a position that only grows."""
        self.synced = 0
        """Position up to which an fsync has completed."""
        self.fsync_time = Durations()
        """Seconds each fsync of the appended files took (timed in its thread, counted on the
        loop's, at ``time.monotonic`` times)."""
        self.failure: LogError | None = None
        self.files = LogFiles(self.directory)
        self.compactor = Compactor(self.files, floor=compact_floor, ratio=compact_ratio)
        self._buffer = bytearray()
        self._sync_waiters: list[tuple[int, Callable[[], None]]] = []
        self._syncing: asyncio.Future[None] | None = None
        """The fsync under way, or the last one."""
        self._wake = asyncio.Event()
        self._room_at = 0.0
        """When (loop time) to try next to take the reserve back."""
        self._room_given = 0
        """Times part of the reserve was given up (an attempt to take it back that began
        before the last of them proves nothing)."""

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
            if not self.files.make_reserve(self._reserve_size(queues)):
                self.full = True
                recovery.warnings.append(
                    f"no room for the log's reserve of {self._reserve_size(queues)} bytes in "
                    f"{self.directory}: adds are refused until there is")
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
            failpoint("log.write", len(data))
            with memoryview(data) as view:
                while done < len(view):
                    done += os.write(fd, view[done:])
        except OSError as exc:
            if done:
                # Leave no partial record behind: the next write starts where this one did.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_CUR) - done)
                    os.lseek(fd, 0, os.SEEK_END)
            if exc.errno in SPACE_ERRORS:
                raise DiskFull(f"no space left to write the log in {self.directory}") from None
            self.failure = LogError(f"writing the log in {self.directory} failed: {exc}")
            raise self.failure from None

    def make_room(self) -> bool:
        """The disk had no room for records: give up part of the reserve for the records that
        must still be written. False when nothing was left to give up.

        The first time, most of it: adds are refused from then on, until the reserve is held
        again. The second, the last of it: that pass's records are written, and then nothing
        more is changed (``exhausted``) until the reserve is held again.
        """
        if not self.full:
            self.full = True
            log.warning("no room left for the log in %s: adds are refused until compaction or "
                        "freed space make room", self.directory)
            self._wake.set()  # compaction gives the log's dead space back
        self._room_given += 1
        left = self.files.shrink_reserve()
        if left <= 0 and not self.exhausted:
            self.exhausted = True
            log.warning("the log's reserve in %s is used up: requests wait until there is room",
                        self.directory)
        return left >= 0

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
        while True:
            # Appends wake the task under ALWAYS; under the other policies the clock does, to
            # fsync (EVERYSEC) and to see whether a compaction is due (both).
            interval = (_ROOM_RETRY if self.full else
                        None if self.policy is FsyncPolicy.ALWAYS else _TICK)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()
            failpoint("log.run")
            compactor = self.compactor
            if compactor.poll(queues, self._wake.set, urgent=self.full):
                await self._after_compaction(queues)
            if self.full and not compactor.busy:
                await self._take_room_back(queues)
            if self.policy is not FsyncPolicy.NO or self._sync_waiters:
                await self.sync()

    def _reserve_size(self, queues: Queues) -> int:
        return max(self.reserve, queues.live_bytes) if self.reserve > 0 else 0

    async def _after_compaction(self, queues: Queues) -> None:
        """The files compaction replaced are closed, their space given back; the reserve follows
        the live state; on a full disk, try to take the reserve back at once."""
        await self.sync()
        if self.full:
            self._room_at = 0.0
            return
        size = self._reserve_size(queues)
        if not await asyncio.get_running_loop().run_in_executor(
                None, self.files.make_reserve, size):
            self.full = True
            log.warning("no room for the log's reserve of %d bytes in %s: adds are refused "
                        "until there is", size, self.directory)

    async def _take_room_back(self, queues: Queues) -> None:
        """Hold the reserve again, if the disk has room for it and as much again (for the adds
        to come): then adds are accepted again."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._room_at:
            return
        self._room_at = loop.time() + _ROOM_RETRY
        files = self.files
        size = self._reserve_size(queues)
        given = self._room_given

        def take_back() -> bool:
            if not size:  # no reserve: room enough for a few passes' records will do
                return files.free_space() >= 2 * _NO_RESERVE_ROOM
            return files.make_reserve(2 * size) and files.make_reserve(size)

        if await loop.run_in_executor(None, take_back) and given == self._room_given:
            self.full = self.exhausted = False
            log.warning("room again for the log in %s: adds are accepted", self.directory)
            self.on_room()

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
        files = self.files
        if files.unsynced and self.synced >= self.written:
            # Files appends left with nothing unsynced in them (no fsync under way uses them):
            # closed now, so the disk space of those compaction deleted is given back.
            for fd in files.unsynced:
                os.close(fd)
            files.unsynced = []

    async def _fsync(self) -> None:
        target = self.written
        files = self.files
        fds = [*files.unsynced, files.fd]
        files.unsynced = []
        try:
            took = await asyncio.get_running_loop().run_in_executor(None, _fsync_all, fds)
        except OSError as exc:
            self.failure = LogError(f"fsync of the log in {self.directory} failed: {exc}; "
                                    f"stopping without acknowledging what it did not cover")
            raise self.failure from None
        finally:
            # Files appends moved away from: this fsync was their last.
            for fd in fds[:-1]:
                os.close(fd)
        self.fsync_time.add(took, 1, time.monotonic())
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

def _nothing() -> None:
    pass


def _retrieve(task: asyncio.Future[None]) -> None:
    # Its failure is kept as the log's ``failure`` and raised to every caller after it.
    if not task.cancelled():
        task.exception()


def _fsync_all(fds: Sequence[int]) -> float:
    """fsync ``fds``; return how long that took (seconds)."""
    sizes = {fd: os.fstat(fd).st_size for fd in fds} if hooked("log.synced") else None
    failpoint("log.fsync")
    started = time.monotonic()
    for fd in fds:
        os.fsync(fd)
    took = time.monotonic() - started
    if sizes is not None:
        failpoint("log.synced", sizes)
    return took
