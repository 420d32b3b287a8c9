"""The append-only log: the write path, group commit, recovery and compaction switches.

Files in the data directory (see ``log.md`` for the byte format):

- ``MANIFEST``: JSON naming the base file (a snapshot, absent until the first compaction) and the
  increment files, in replay order. It is replaced atomically (temporary name, fsync, rename,
  directory fsync), so it always names a complete set of files.
- ``base-NNNNNNNN.log``: a snapshot of the live state written by compaction.
- ``incr-NNNNNNNN.log``: records appended as changes happen; only the last one is written to.
- ``LOCK``: held (``flock``) while a broker uses the directory.

Records produced in one loop pass are written with one ``write``. Under ``--fsync always`` the
caller waits for an fsync covering its records; fsyncs run in a thread and cover everything
written while the previous one ran (group commit). Compaction writes a fresh base in a child
process from the files frozen at its start, while appends go on to a new increment.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import fcntl
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec

from ._queues import Queues
from .errors import BrokerError
from .failpoints import failpoint
from .logfile import (
    FILE_HEADER_SIZE,
    FileKind,
    FormatError,
    append_record,
    file_header,
    read_header,
    scan,
)
from .records import Record
from .replay import Replayer, snapshot

__all__ = [
    "DEFAULT_COMPACT_FLOOR",
    "DEFAULT_COMPACT_RATIO",
    "DiskFull",
    "FsyncPolicy",
    "Log",
    "LogDamaged",
    "LogError",
    "Recovery",
    "load_files",
    "write_base",
]

DEFAULT_COMPACT_FLOOR: Final = 64 * 1024 * 1024
"""Compaction never runs while the log is smaller than this (bytes)."""
DEFAULT_COMPACT_RATIO: Final = 4.0
"""...nor while it is smaller than this multiple of the live state's estimated size."""
_MANIFEST: Final = "MANIFEST"
_SPACE_ERRORS: Final = (errno.ENOSPC, errno.EDQUOT)
_COMPACT_RETRY: Final = 1.0
"""Seconds to wait after a compaction failed on an OS error (a full disk) before another."""

log = logging.getLogger("broker")


class FsyncPolicy(enum.Enum):
    """When the log is fsynced."""

    ALWAYS = "always"
    """Before anything written is acknowledged (group commit)."""
    EVERYSEC = "everysec"
    """At least once a second."""
    NO = "no"
    """When the operating system decides (and on shutdown)."""


class LogError(BrokerError):
    """The log cannot be used: the broker must stop."""


class LogDamaged(LogError):
    """The log is damaged before its tail; only ``salvage`` recovers what is left."""


class DiskFull(BrokerError):
    """A write failed for lack of space; nothing of it was kept."""


@dataclass
class Recovery:
    """What replay found."""

    jobs: int = 0
    """Jobs rebuilt: waiting, plus completed and failed ones retained."""
    waiting: int = 0
    records: int = 0
    seconds: float = 0.0
    bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    """Tail damage cut off, and what salvage skipped."""


class _Manifest(msgspec.Struct):
    version: int
    base: str | None
    increments: list[str]


_record_encoder: Final = msgspec.msgpack.Encoder()
_record_decoder: Final[msgspec.msgpack.Decoder[Record]] = msgspec.msgpack.Decoder(Record)


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
        self.compact_floor = compact_floor
        self.compact_ratio = compact_ratio
        self.written = 0
        """Bytes appended since the log was opened: a position that only grows."""
        self.synced = 0
        """Position up to which an fsync has completed."""
        self.compactions = 0
        self.failure: LogError | None = None
        self._manifest = _Manifest(version=1, base=None, increments=[])
        self._generation = 0
        self._fd = -1
        self._size = 0
        """Bytes in all files the manifest names (the log's size on disk)."""
        self._unsynced_fds: list[int] = []
        """Files written since their last fsync, besides the current one."""
        self._dir_unsynced = False
        self._lock_fd = -1
        self._buffer = bytearray()
        self._sync_waiters: list[tuple[int, Callable[[], None]]] = []
        self._wake = asyncio.Event()
        self._compaction: asyncio.Future[None] | None = None
        self._compacting = False

    # Opening and recovery.

    def open(self, queues: Queues) -> Recovery:
        """Lock the directory, replay the log into ``queues`` and get ready to append."""
        started = time.perf_counter()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            recovery = self._recover(queues)
        except BaseException:
            self._release()
            raise
        recovery.seconds = time.perf_counter() - started
        return recovery

    def _recover(self, queues: Queues) -> Recovery:
        recovery = Recovery()
        manifest_path = self.directory / _MANIFEST
        if manifest_path.exists():
            try:
                self._manifest = msgspec.json.decode(manifest_path.read_bytes(), type=_Manifest)
            except msgspec.DecodeError as exc:
                raise LogError(f"{manifest_path} is unreadable: {exc}") from None
            replayer = Replayer(queues)
            damaged = self._replay(replayer, recovery)
            replayer.finish()
            if replayer.skipped:
                recovery.warnings.append(
                    f"{replayer.skipped} records referred to jobs the log no longer holds")
        else:
            stray = sorted(p.name for p in self.directory.glob("*.log"))
            if stray:
                raise LogError(f"{self.directory} holds log files ({', '.join(stray[:3])}) but no "
                               f"{_MANIFEST}; refusing to start over them")
            damaged = False
        self._remove_unreferenced()
        names = [self._manifest.base, *self._manifest.increments]
        self._generation = max((_generation(n) for n in names if n), default=0)
        self._size = sum((self.directory / n).stat().st_size for n in names if n)
        if damaged:
            # Salvaged: rewrite what was kept as a clean base, so the next start is clean too.
            self._rewrite_from(queues)
        else:
            self._open_increment(reuse_last=bool(self._manifest.increments))
        recovery.jobs = len(queues.jobs)
        recovery.waiting = sum(len(q.waiting) for q in queues.queues.values())
        return recovery

    def _replay(self, replayer: Replayer, recovery: Recovery) -> bool:
        """Replay every file; return True when salvage skipped damage."""
        names = [n for n in (self._manifest.base, *self._manifest.increments) if n]
        damaged = False
        for index, name in enumerate(names):
            path = self.directory / name
            last = index == len(names) - 1
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise LogError(f"{path} is named in {_MANIFEST} but missing") from None
            recovery.bytes += len(data)
            try:
                read_header(data)
            except FormatError as exc:
                if last and len(data) < FILE_HEADER_SIZE and data == file_header(
                        FileKind.INCREMENT, _generation(name))[: len(data)]:
                    # The crash came while the header was being written.
                    self._truncate(path, 0, recovery, len(data))
                    continue
                if not self.salvage:
                    raise LogDamaged(f"{path}: {exc}; start with --salvage to keep what is "
                                     f"readable in the other files") from None
                recovery.warnings.append(f"{path}: {exc}; skipped the whole file")
                damaged = True
                continue
            offset = FILE_HEADER_SIZE
            while True:
                bodies, damage = scan(data, offset)
                for body in bodies:
                    try:
                        record = _record_decoder.decode(body)
                    except msgspec.DecodeError as exc:
                        raise LogError(f"{path}: a record with a valid checksum does not "
                                       f"decode ({exc}); was it written by a newer broker?") \
                            from None
                    replayer.apply(record)
                recovery.records += len(bodies)
                if damage is None:
                    break
                if damage.at_tail and last:
                    self._truncate(path, damage.offset, recovery, damage.size - damage.offset)
                    break
                where = (f"{path} is damaged at byte {damage.offset} of {damage.size}"
                         + (", before valid records" if not damage.at_tail else
                            ", and is not the last file"))
                if not self.salvage:
                    raise LogDamaged(f"{where}; refusing to start. Start with --salvage to keep "
                                     f"every valid record and skip the damage")
                damaged = True
                resume = damage.resumes_at if damage.resumes_at is not None else damage.size
                recovery.warnings.append(f"{where}: skipped {resume - damage.offset} bytes")
                if damage.resumes_at is None:
                    break
                offset = damage.resumes_at
        return damaged

    def _truncate(self, path: Path, offset: int, recovery: Recovery, dropped: int) -> None:
        recovery.warnings.append(
            f"{path}: cut off a torn or damaged tail of {dropped} bytes at byte {offset}")
        if offset == 0:
            path.unlink()
            self._manifest.increments.remove(path.name)
            self._write_manifest()
        else:
            os.truncate(path, offset)

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
        encode = _record_encoder.encode
        for record in records:
            append_record(buffer, encode(record))
        self._write(buffer)
        self._size += len(buffer)
        self.written += len(buffer)
        if self.policy is FsyncPolicy.ALWAYS:
            self._wake.set()
        return self.written

    def _write(self, data: bytearray) -> None:
        done = 0
        try:
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

    @property
    def size(self) -> int:
        """Bytes in the files of the log now."""
        return self._size

    def wants_compaction(self, live_bytes: int) -> bool:
        """True when the log outgrew both the floor and the ratio over the live state."""
        return (not self._compacting and self._size > self.compact_floor
                and self._size > self.compact_ratio * live_bytes)

    # The background task: fsyncs and compactions.

    async def run(self, queues: Queues) -> None:
        """fsync by the policy and compact when due, until cancelled. Raises ``LogError``."""
        loop = asyncio.get_running_loop()
        interval = 1.0 if self.policy is FsyncPolicy.EVERYSEC else None
        retry_at = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()
            if self._compaction is not None and self._compaction.done():
                compaction, self._compaction = self._compaction, None
                try:
                    compaction.result()
                except OSError as exc:
                    # No room for its files, say: the log is as it was; try again in a while.
                    log.error("compaction failed: %s", exc)
                    retry_at = loop.time() + _COMPACT_RETRY
            if (self._compaction is None and loop.time() >= retry_at
                    and self.wants_compaction(queues.live_bytes)):
                self._compaction = asyncio.ensure_future(self._compact(queues))
                self._compaction.add_done_callback(lambda _: self._wake.set())
            if self.policy is not FsyncPolicy.NO or self._sync_waiters:
                await self._sync(loop)

    async def _sync(self, loop: asyncio.AbstractEventLoop) -> None:
        target = self.written
        if target == self.synced and not self._dir_unsynced:
            return
        fds = [*self._unsynced_fds, self._fd]
        self._unsynced_fds = []
        sync_dir = self._dir_unsynced
        self._dir_unsynced = False
        try:
            await loop.run_in_executor(None, _fsync_all, fds,
                                       self.directory if sync_dir else None)
        except OSError as exc:
            self.failure = LogError(f"fsync of the log in {self.directory} failed: {exc}; "
                                    f"stopping without acknowledging what it did not cover")
            raise self.failure from None
        for fd in fds[:-1]:
            os.close(fd)
        self.synced = target
        waiters = self._sync_waiters
        if waiters:
            ready = [w for w in waiters if w[0] <= target]
            self._sync_waiters = [w for w in waiters if w[0] > target]
            for _, callback in ready:
                callback()
        if self._sync_waiters:
            self._wake.set()

    async def close(self) -> None:
        """Write and fsync what is pending, then release the directory. Idempotent."""
        compaction, self._compaction = self._compaction, None
        if compaction is not None:
            # An unfinished compaction changes nothing on disk: the next start ignores its files.
            compaction.cancel()
            await asyncio.wait([compaction])
            if not compaction.cancelled() and compaction.exception() is not None:
                log.error("compaction failed: %s", compaction.exception())
        if self._fd >= 0 and self.failure is None:
            fds = [*self._unsynced_fds, self._fd]
            self._unsynced_fds = []
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, _fsync_all, fds, self.directory)
            except OSError as exc:
                self.failure = LogError(f"fsync of the log failed on shutdown: {exc}")
                raise self.failure from None
            self.synced = self.written
            for fd in fds[:-1]:
                os.close(fd)
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

    # Compaction.

    async def _compact(self, queues: Queues) -> None:
        """Snapshot the files as they are now into a new base, while appends go on."""
        self._compacting = True
        try:
            frozen = [n for n in (self._manifest.base, *self._manifest.increments) if n]
            # 1. Appends move to a new increment, named in the manifest before its first record.
            self._open_increment(reuse_last=False)
            failpoint("compaction.switched")
            generation = self._generation
            base = f"base-{generation:08d}.log"
            tmp = self.directory / (base + ".tmp")
            # 2. A child process replays the frozen files and writes their snapshot.
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "conveyor.broker.compaction", str(self.directory), str(tmp),
                str(queues.retention.keep_completed), str(queues.retention.keep_failed),
                *frozen,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )
            try:
                _, stderr = await process.communicate()
            except asyncio.CancelledError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
                tmp.unlink(missing_ok=True)
                raise
            if process.returncode != 0:
                tmp.unlink(missing_ok=True)
                last = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
                # An OSError, like the parent's own file errors: run() waits before retrying.
                raise OSError(f"the compaction process exited with status {process.returncode}: "
                              f"{last[0]}")
            failpoint("compaction.written")
            # 3. Switch: the new base replaces the frozen files.
            os.rename(tmp, self.directory / base)
            failpoint("compaction.renamed")
            increments = self._manifest.increments[self._manifest.increments.index(
                f"incr-{generation:08d}.log"):]
            self._manifest = _Manifest(version=1, base=base, increments=increments)
            self._write_manifest()
            failpoint("compaction.manifest")
            # 4. The frozen files are no longer named anywhere.
            for name in frozen:
                (self.directory / name).unlink(missing_ok=True)
            self._size = sum((self.directory / n).stat().st_size
                             for n in (base, *increments))
            self.compactions += 1
            log.info("compacted the log to %d bytes", self._size)
        finally:
            self._compacting = False

    def _rewrite_from(self, queues: Queues) -> None:
        """Write the state in ``queues`` as a new base and start a fresh increment on it."""
        self._generation += 1
        base = f"base-{self._generation:08d}.log"
        old = [n for n in (self._manifest.base, *self._manifest.increments) if n]
        write_base(self.directory / base, self._generation, queues)
        increment = f"incr-{self._generation:08d}.log"
        self._fd = self._create_increment(increment)
        self._manifest = _Manifest(version=1, base=base, increments=[increment])
        self._write_manifest()
        for name in old:
            path = self.directory / name
            if path.exists():
                path.rename(path.with_suffix(".damaged"))
        self._size = sum((self.directory / n).stat().st_size for n in (base, increment))

    # Files.

    def _open_increment(self, *, reuse_last: bool) -> None:
        if reuse_last:
            name = self._manifest.increments[-1]
            fd = os.open(self.directory / name, os.O_WRONLY | os.O_APPEND)
        else:
            self._generation += 1
            name = f"incr-{self._generation:08d}.log"
            fd = self._create_increment(name)
            self._manifest.increments.append(name)
            # Renamed into place before the first record, so no record is ever in an unnamed file.
            try:
                self._write_manifest(sync=False)
            except OSError:
                # Nothing switched: appends go on to the current file, named as it was.
                self._manifest.increments.pop()
                os.close(fd)
                (self.directory / name).unlink(missing_ok=True)
                self._size -= FILE_HEADER_SIZE
                raise
            self._dir_unsynced = True
        if self._fd >= 0:
            self._unsynced_fds.append(self._fd)
        self._fd = fd

    def _create_increment(self, name: str) -> int:
        fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND,
                     0o644)
        header = file_header(FileKind.INCREMENT, _generation(name))
        try:
            os.write(fd, header)
        except OSError:
            os.close(fd)
            (self.directory / name).unlink(missing_ok=True)
            raise
        self._size += len(header)
        return fd

    def _write_manifest(self, *, sync: bool = True) -> None:
        path = self.directory / _MANIFEST
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as file:
            file.write(msgspec.json.encode(self._manifest))
            if sync:
                file.flush()
                os.fsync(file.fileno())
        os.rename(tmp, path)
        if sync:
            _fsync_dir(self.directory)

    def _remove_unreferenced(self) -> None:
        named = {self._manifest.base, *self._manifest.increments}
        for path in self.directory.iterdir():
            leftover = path.suffix == ".tmp" or (path.suffix == ".log" and path.name not in named)
            if leftover and (path.name.startswith(("base-", "incr-", _MANIFEST))):
                path.unlink()

    def _lock(self) -> None:
        self._lock_fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise LogError(f"{self.directory} is in use by another broker") from None


def load_files(directory: Path, names: Sequence[str], queues: Queues) -> int:
    """Replay ``names`` (already validated by a running broker) into ``queues``; return records.

    Used by the compaction child on files the broker froze: any damage here is an error.
    """
    replayer = Replayer(queues)
    count = 0
    for name in names:
        data = (directory / name).read_bytes()
        read_header(data)
        bodies, damage = scan(data)
        if damage is not None:
            raise LogError(f"{directory / name} is damaged at byte {damage.offset}")
        for body in bodies:
            replayer.apply(_record_decoder.decode(body))
        count += len(bodies)
    replayer.finish()
    return count


def write_base(path: Path, generation: int, queues: Queues) -> None:
    """Write ``queues``' live state to ``path`` as a base file, fsynced."""
    buffer = bytearray(file_header(FileKind.BASE, generation))
    encode = _record_encoder.encode
    with open(path, "wb") as file:
        for record in snapshot(queues):
            append_record(buffer, encode(record))
            if len(buffer) > 1 << 20:
                file.write(buffer)
                buffer.clear()
        file.write(buffer)
        file.flush()
        os.fsync(file.fileno())


def _generation(name: str) -> int:
    return int(name.split("-", 1)[1].split(".", 1)[0])


def _fsync_all(fds: Sequence[int], directory: Path | None) -> None:
    for fd in fds:
        os.fsync(fd)
    if directory is not None:
        _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
