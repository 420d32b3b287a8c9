"""The append-only log: appending records, group commit, and the data directory's files.

Files in the data directory (see ``log.md`` for the byte format): ``MANIFEST`` names the base
file and the increments in replay order (``_manifest``); only the last increment is appended to;
``LOCK`` is held (``flock``) while a broker uses the directory.

Records produced in one loop pass are written with one ``write``. Under ``--fsync always`` the
caller waits for an fsync covering its records; fsyncs run in a thread and cover everything
written while the previous one ran (group commit). Opening the log replays it (``_recovery``);
the background task ``run`` fsyncs by the policy and compacts (``_compaction``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import fcntl
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from ._compaction import DEFAULT_COMPACT_FLOOR, DEFAULT_COMPACT_RATIO, Compactor, write_base
from ._errors import DiskFull, LogError
from ._failpoints import failpoint, hooked
from ._logfile import FILE_HEADER_SIZE, FileKind, append_record, file_header
from ._manifest import (
    MANIFEST,
    Manifest,
    base_name,
    create_file,
    generation_of,
    increment_name,
    make_directory,
    read_manifest,
    remove_unreferenced,
    write_manifest,
)
from ._queues import Queues
from ._records import Record, encode_record
from ._recovery import Recovery, recover

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
        self.compactor = Compactor(self, floor=compact_floor, ratio=compact_ratio)
        self._manifest = Manifest(version=1, base=None, increments=[])
        self._generation = 0
        self._fd = -1
        self._size = 0
        """Bytes in all files the manifest names (the log's size on disk)."""
        self._unsynced_fds: list[int] = []
        """Files written since their last fsync, besides the current one."""
        self._lock_fd = -1
        self._buffer = bytearray()
        self._sync_waiters: list[tuple[int, Callable[[], None]]] = []
        self._syncing: asyncio.Future[None] | None = None
        """The fsync under way, or the last one."""
        self._wake = asyncio.Event()

    @property
    def size(self) -> int:
        """Bytes in the files of the log now."""
        return self._size

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
            self._lock()
            recovery = self._recover(queues)
        except BaseException as exc:
            self._release()
            if isinstance(exc, OSError):
                raise LogError(f"cannot open the log in {self.directory}: {exc}") from None
            raise
        recovery.seconds = time.perf_counter() - started
        return recovery

    def _recover(self, queues: Queues) -> Recovery:
        recovery = Recovery()
        manifest = read_manifest(self.directory)
        if manifest is not None:
            self._manifest = manifest
            damaged = recover(self.directory, manifest, queues, recovery, salvage=self.salvage)
        else:
            stray = sorted(p.name for p in self.directory.glob("*.log"))
            if stray:
                raise LogError(f"{self.directory} holds log files ({', '.join(stray[:3])}) but no "
                               f"{MANIFEST}; refusing to start over them")
            damaged = False
        remove_unreferenced(self.directory, self._manifest)
        names = self._manifest.files()
        self._generation = max((generation_of(n) for n in names), default=0)
        self._size = sum((self.directory / n).stat().st_size for n in names)
        if damaged:
            # Salvaged: rewrite what was kept as a clean base, so the next start is clean too.
            self._start_over(queues)
        elif self._manifest.increments:
            self._fd = os.open(self.directory / self._manifest.increments[-1],
                               os.O_WRONLY | os.O_APPEND)
        else:
            self._generation += 1
            manifest = Manifest(version=1, base=self._manifest.base,
                                increments=[increment_name(self._generation)])
            self._fd = _create_increment(self.directory, manifest)
            self._manifest = manifest
            self._size += FILE_HEADER_SIZE
        recovery.jobs = len(queues.jobs)
        recovery.waiting = sum(len(q.waiting) for q in queues.queues.values())
        return recovery

    def _start_over(self, queues: Queues) -> None:
        """Write the state in ``queues`` as a new base and start a fresh increment on it; the
        old files are kept aside, renamed ``*.damaged``."""
        self._generation += 1
        base = base_name(self._generation)
        old = self._manifest.files()
        write_base(self.directory / base, self._generation, queues)
        self._manifest = Manifest(version=1, base=base,
                                  increments=[increment_name(self._generation)])
        self._fd = _create_increment(self.directory, self._manifest)
        for name in old:
            path = self.directory / name
            if path.exists():
                path.rename(path.with_suffix(".damaged"))
        self.measure()

    # Appending.

    def append(self, records: Sequence[Record]) -> int:
        """Write ``records`` in one write; return the log position after them.

        Raises ``DiskFull`` (nothing written) when the disk has no room, ``LogError`` on any
        other write error.
        """
        if self.failure is not None:
            raise self.failure
        if self._fd < 0:
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
        self._size += len(buffer)
        self.written += len(buffer)
        if self.policy is FsyncPolicy.ALWAYS:
            self._wake.set()
        return self.written

    def _write(self, data: bytearray) -> None:
        done = 0
        try:
            failpoint("log.write")
            with memoryview(data) as view:
                while done < len(view):
                    done += os.write(self._fd, view[done:])
        except OSError as exc:
            if done:
                # Leave no partial record behind: the next write starts where this one did.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, os.lseek(self._fd, 0, os.SEEK_CUR) - done)
                    os.lseek(self._fd, 0, os.SEEK_END)
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
        fds = [*self._unsynced_fds, self._fd]
        self._unsynced_fds = []
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
            if self._fd >= 0 and self.failure is None:
                await self.sync()
        finally:
            self._release()

    def _release(self) -> None:
        for fd in self._unsynced_fds:
            os.close(fd)
        self._unsynced_fds = []
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # Files (what compaction switches: the ``Files`` it works on).

    async def freeze(self) -> tuple[list[str], int]:
        """The files a compaction is to replace, and the generation of the increment after them.

        Appends move to a new increment first, named in the manifest (durably) before its first
        record; unless files before the current increment are left from a compaction that did
        not finish (it failed, or the broker crashed): those are replaced, and appends stay where
        they are, so the retries of a failing compaction do not pile up increments.
        """
        increments = self._manifest.increments
        if len(increments) > 1:
            return self._manifest.files()[:-1], generation_of(increments[-1])
        frozen = self._manifest.files()
        generation = self._generation + 1
        manifest = Manifest(version=1, base=self._manifest.base,
                            increments=[*increments, increment_name(generation)])
        fd = await asyncio.get_running_loop().run_in_executor(
            None, _create_increment, self.directory, manifest)
        self._generation = generation
        self._manifest = manifest
        self._size += FILE_HEADER_SIZE
        # The file appends leave gets its last fsync with the next.
        self._unsynced_fds.append(self._fd)
        self._fd = fd
        return frozen, generation

    async def switch_base(self, base: str, generation: int) -> None:
        """Name ``base`` in the manifest instead of every file before increment ``generation``."""
        increments = self._manifest.increments
        manifest = Manifest(version=1, base=base,
                            increments=increments[increments.index(increment_name(generation)):])
        await asyncio.get_running_loop().run_in_executor(
            None, write_manifest, self.directory, manifest)
        self._manifest = manifest

    def measure(self) -> int:
        """Recount (and return) the bytes in the files the manifest names."""
        self._size = sum((self.directory / n).stat().st_size for n in self._manifest.files())
        return self._size

    def _lock(self) -> None:
        self._lock_fd = create_file(self.directory / "LOCK", os.O_RDWR)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise LogError(f"{self.directory} is in use by another broker") from None


def _retrieve(task: asyncio.Future[None]) -> None:
    # Its failure is kept as the log's ``failure`` and raised to every caller after it.
    if not task.cancelled():
        task.exception()


def _create_increment(directory: Path, manifest: Manifest) -> int:
    """Create the last increment ``manifest`` names, durably, then make ``manifest`` the log's
    (durably too); return the new file, open to append. On an error neither is left behind."""
    name = manifest.increments[-1]
    path = directory / name
    fd = create_file(path, os.O_WRONLY | os.O_EXCL | os.O_APPEND)
    try:
        os.write(fd, file_header(FileKind.INCREMENT, generation_of(name)))
        os.fsync(fd)
        write_manifest(directory, manifest)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return fd


def _fsync_all(fds: Sequence[int]) -> None:
    sizes = {fd: os.fstat(fd).st_size for fd in fds} if hooked("log.synced") else None
    failpoint("log.fsync")
    for fd in fds:
        os.fsync(fd)
    if sizes is not None:
        failpoint("log.synced", sizes)
