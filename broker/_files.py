"""The log's files in its data directory: the lock, the manifest and the files it names, the
increment appended to, and the reserve.

``MANIFEST`` names the base file and the increments in replay order (``_manifest``); only the
last increment is appended to; ``LOCK`` is held (``flock``) while a broker uses the directory.
Opening the files replays them (``_recovery``); compaction moves appends to a new increment and
switches the manifest to a new base (this is the ``Files`` it works on).

``RESERVE`` holds disk space for the day the disk fills up: given up in two steps (most of it,
then the rest), it leaves room for the changes that must still be written and for the
compaction that gives the log's dead space back.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
from pathlib import Path
from typing import Final

from ._compaction import write_base
from ._errors import LogError
from ._failpoints import failpoint
from ._logfile import FILE_HEADER_SIZE, FileKind, file_header
from ._manifest import (
    MANIFEST,
    Manifest,
    base_name,
    create_file,
    generation_of,
    increment_name,
    read_manifest,
    remove_unreferenced,
    write_manifest,
)
from ._queues import Queues
from ._recovery import Recovery, recover

__all__ = ["RESERVE", "SPACE_ERRORS", "LogFiles"]

RESERVE: Final = "RESERVE"
SPACE_ERRORS: Final = (errno.ENOSPC, errno.EDQUOT)
"""What a write gets when the disk (or the user's quota) has no room."""
_LAST_RESORT: Final = 64 * 1024
"""Bytes of the reserve kept after its first step is given up (bytes): room for the changes
made in the pass that finds the disk full again."""
_ZEROS: Final = bytes(64 * 1024)


class LogFiles:
    """The files of one data directory's log."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fd = -1
        """The increment appended to."""
        self.unsynced: list[int] = []
        """Files appends moved away from, still to be fsynced once more (then closed)."""
        self.size = 0
        """Bytes in all files the manifest names (the log's size on disk)."""
        self._manifest = Manifest(version=1, base=None, increments=[])
        self._generation = 0
        self._lock_fd = -1

    # Opening and closing.

    def lock(self) -> None:
        """Take the directory for this broker (``LogError`` if another broker has it)."""
        self._lock_fd = create_file(self.directory / "LOCK", os.O_RDWR)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise LogError(f"{self.directory} is in use by another broker") from None

    def open(self, queues: Queues, *, salvage: bool) -> Recovery:
        """Replay the log into ``queues`` and get ready to append."""
        recovery = Recovery()
        manifest = read_manifest(self.directory)
        if manifest is not None:
            self._manifest = manifest
            damaged = recover(self.directory, manifest, queues, recovery, salvage=salvage)
        else:
            stray = sorted(p.name for p in self.directory.glob("*.log"))
            if stray:
                raise LogError(f"{self.directory} holds log files ({', '.join(stray[:3])}) but no "
                               f"{MANIFEST}; refusing to start over them")
            damaged = False
        remove_unreferenced(self.directory, self._manifest)
        names = self._manifest.files()
        self._generation = max((generation_of(n) for n in names), default=0)
        self.measure()
        if damaged:
            # Salvaged: rewrite what was kept as a clean base, so the next start is clean too.
            self._start_over(queues)
        elif self._manifest.increments:
            self.fd = os.open(self.directory / self._manifest.increments[-1],
                              os.O_WRONLY | os.O_APPEND)
        else:
            self._generation += 1
            manifest = Manifest(version=1, base=self._manifest.base,
                                increments=[increment_name(self._generation)])
            self.fd = _create_increment(self.directory, manifest)
            self._manifest = manifest
            self.size += FILE_HEADER_SIZE
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
        self.fd = _create_increment(self.directory, self._manifest)
        for name in old:
            path = self.directory / name
            if path.exists():
                path.rename(path.with_suffix(".damaged"))
        self.measure()

    def release(self) -> None:
        """Close every file and give the directory up. Idempotent."""
        for fd in self.unsynced:
            os.close(fd)
        self.unsynced = []
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # What compaction switches.

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
        self.size += FILE_HEADER_SIZE
        # The file appends leave gets its last fsync with the next.
        self.unsynced.append(self.fd)
        self.fd = fd
        return frozen, generation

    async def switch_base(self, base: str, generation: int) -> None:
        """Name ``base`` in the manifest instead of every file before increment ``generation``."""
        increments = self._manifest.increments
        manifest = Manifest(version=1, base=base,
                            increments=increments[increments.index(increment_name(generation)):])
        await asyncio.get_running_loop().run_in_executor(
            None, write_manifest, self.directory, manifest)
        self._manifest = manifest

    # The reserve.

    def make_reserve(self, size: int) -> bool:
        """Hold ``size`` bytes of the disk in ``RESERVE`` (more is cut back to it); False when
        there is no room. Blocking: in a thread, but at start."""
        fd = create_file(self.directory / RESERVE, os.O_WRONLY)
        try:
            held = os.fstat(fd).st_size
            if held > size:
                os.ftruncate(fd, size)
            elif held < size:
                try:
                    failpoint("log.reserve", size)
                    _allocate(fd, held, size)
                except OSError as exc:
                    os.ftruncate(fd, held)  # what was held, it still is
                    if exc.errno not in SPACE_ERRORS:
                        raise
                    return False
        finally:
            os.close(fd)
        return True

    def shrink_reserve(self) -> int:
        """Give up the reserve's space: all but a last resort, then that too. Return how much
        is left of it (-1 when nothing was: there was none to give up)."""
        path = self.directory / RESERVE
        try:
            held = path.stat().st_size
        except FileNotFoundError:
            return -1
        left = _LAST_RESORT if held > _LAST_RESORT else 0
        if not held:
            return -1
        os.truncate(path, left)
        return left

    def free_space(self) -> int:
        """Bytes the disk holding the log has free for it."""
        stat = os.statvfs(self.directory)
        return stat.f_bavail * stat.f_frsize

    def measure(self) -> int:
        """Recount (and return) the bytes in the files the manifest names."""
        self.size = sum((self.directory / n).stat().st_size for n in self._manifest.files())
        return self.size


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


def _allocate(fd: int, start: int, end: int) -> None:
    """Give the file real blocks from ``start`` to ``end`` (``OSError`` ENOSPC if no room)."""
    try:
        os.posix_fallocate(fd, start, end - start)
    except OSError as exc:
        if exc.errno in SPACE_ERRORS:
            raise
        # No fallocate on this file system: zeros take the room as well.
        os.lseek(fd, start, os.SEEK_SET)
        while start < end:
            start += os.write(fd, _ZEROS[: end - start])
