"""Compaction, both halves: the broker's side, which decides when, freezes the files and switches
to the new base, and the child process that replays the frozen files and writes the base.

1. Appends move to a new increment, named in the manifest before its first record.
2. A child process (``python -m conveyor.broker._compaction DIR OUTPUT KEEP_COMPLETED
   KEEP_FAILED FILE...``) replays the frozen files and writes their live state as a base file
   under a temporary name, fsynced.
3. The broker renames it into place and switches the manifest to it.
4. The frozen files, no longer named anywhere, are deleted.

A crash at any step leaves the old files in charge (the next start deletes what is left of the
new ones). A compaction runs when the log outgrew both a floor and a ratio over the live state,
one at a time; after one failed on an OS error (a full disk), the next waits a while, and takes
the files that one froze again rather than freezing more. Every file operation of steps 1, 3 and
4 (creating, fsyncing, renaming, deleting) runs in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Final, Protocol, TypeVar

from ._errors import LogError
from ._failpoints import failpoint
from ._logfile import (
    FILE_HEADER_SIZE,
    FileKind,
    RecordReader,
    append_record,
    file_header,
    read_header,
)
from ._manifest import base_name, create_file, generation_of
from ._queues import Queues
from ._records import encode_record
from ._recovery import replay_files
from ._replay import snapshot

__all__ = [
    "DEFAULT_COMPACT_FLOOR",
    "DEFAULT_COMPACT_RATIO",
    "Compactor",
    "Files",
    "load_files",
    "main",
    "write_base",
]

DEFAULT_COMPACT_FLOOR: Final = 64 * 1024 * 1024
"""Compaction never runs while the log is smaller than this (bytes)."""
DEFAULT_COMPACT_RATIO: Final = 4.0
"""...nor while it is smaller than this multiple of the live state's estimated size."""
_CHILD: Final = "conveyor.broker._compaction"
"""The module the child process runs."""
_RETRY: Final = 1.0
"""Seconds to wait after a compaction failed on an OS error (a full disk) before another."""
_URGENT_RATIO: Final = 1.25
_URGENT_SLACK: Final = 64 * 1024
"""On a full disk, a log larger than this ratio of the live state plus this many bytes is
compacted, whatever the floor: what it frees is what lets the broker go on."""

_T = TypeVar("_T")

log = logging.getLogger("broker")


class Files(Protocol):
    """What compaction needs of the log whose files it replaces."""

    @property
    def directory(self) -> Path:
        """The data directory."""

    @property
    def size(self) -> int:
        """Bytes in the files of the log now."""

    async def freeze(self) -> tuple[list[str], int]:
        """The files to replace, and the generation of the increment after them (appends move
        to a new increment unless files before the current one are left to replace)."""

    async def switch_base(self, base: str, generation: int) -> None:
        """Name ``base`` in the manifest instead of every file before increment ``generation``."""

    def measure(self) -> int:
        """Recount (and return) the bytes in the files the manifest names."""


class Compactor:
    """The compactions of one log: when one is due, running it, and its outcome."""

    def __init__(self, files: Files, *, floor: int = DEFAULT_COMPACT_FLOOR,
                 ratio: float = DEFAULT_COMPACT_RATIO) -> None:
        self.files = files
        self.floor = floor
        self.ratio = ratio
        self.retry = _RETRY
        """Seconds to wait after a compaction failed on an OS error before another."""
        self.compactions = 0
        """Compactions completed."""
        self._task: asyncio.Future[None] | None = None
        """The compaction under way, until reaped (by ``poll`` or ``cancel``)."""
        self._retry_at = 0.0

    @property
    def busy(self) -> bool:
        """Whether a compaction is under way."""
        return self._task is not None

    def wanted(self, live_bytes: int, *, urgent: bool = False) -> bool:
        """True when the log outgrew both the floor and the ratio over the live state; or, when
        ``urgent`` (the disk is full), when a good part of it is dead, whatever its size."""
        size = self.files.size
        if urgent:
            return size > _URGENT_RATIO * live_bytes + _URGENT_SLACK
        return size > self.floor and size > self.ratio * live_bytes

    def poll(self, queues: Queues, wake: Callable[[], None], *, urgent: bool = False) -> bool:
        """Reap a finished compaction; start one if due (``wake`` is called when it ends).
        Return True when a compaction that succeeded was reaped."""
        loop = asyncio.get_running_loop()
        compacted = False
        if self._task is not None and self._task.done():
            task, self._task = self._task, None
            try:
                task.result()
                compacted = True
            except OSError as exc:
                # No room for its files, say: the log is as it was; try again in a while.
                log.error("compaction failed: %s", exc)
                self._retry_at = loop.time() + self.retry
        if (self._task is None and loop.time() >= self._retry_at
                and self.wanted(queues.live_bytes, urgent=urgent)):
            retention = queues.retention
            self._task = asyncio.ensure_future(
                self._compact(retention.keep_completed, retention.keep_failed))
            self._task.add_done_callback(lambda _: wake())
        return compacted

    async def cancel(self) -> None:
        """Stop a compaction under way; it changes nothing on disk (the next start ignores its
        files)."""
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
            # Only now: until its files are settled, no other compaction may begin.
            self._task = None
            if not task.cancelled() and task.exception() is not None:
                log.error("compaction failed: %s", task.exception())

    async def _compact(self, keep_completed: int, keep_failed: int) -> None:
        """Snapshot the files as they are now into a new base, while appends go on."""
        files = self.files
        directory = files.directory
        # 1. Appends move to a new increment (or an earlier try's files are taken again).
        frozen, generation = await _whole(files.freeze())
        failpoint("compaction.switched")
        base = base_name(generation)
        tmp = directory / (base + ".tmp")
        # 2. A child process replays the frozen files and writes their snapshot.
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", _CHILD, str(directory), str(tmp),
            str(keep_completed), str(keep_failed), *frozen,
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
            # An OSError, like the parent's own file errors: poll() waits before retrying.
            raise OSError(f"the compaction process exited with status {process.returncode}: "
                          f"{last[0]}")
        failpoint("compaction.written")
        # 3 and 4. Switch to the new base, then delete the frozen files.
        await _whole(self._switch(tmp, base, generation, frozen))
        size = files.measure()
        self.compactions += 1
        log.info("compacted the log to %d bytes", size)

    async def _switch(self, tmp: Path, base: str, generation: int, frozen: list[str]) -> None:
        """Steps 3 and 4, their file operations (renames, fsyncs, unlinks) in a thread."""
        files = self.files
        directory = files.directory
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, os.rename, tmp, directory / base)
        failpoint("compaction.renamed")
        await files.switch_base(base, generation)
        failpoint("compaction.manifest")
        await loop.run_in_executor(None, _remove, directory, frozen)


async def _whole(step: Awaitable[_T]) -> _T:
    """Await ``step`` to its end even if cancelled meanwhile (then re-raise the cancellation):
    its thread goes on with the files anyway, and the log must know what it did."""
    task = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


def _remove(directory: Path, names: Sequence[str]) -> None:
    for name in names:
        (directory / name).unlink(missing_ok=True)


# The child's half.


def load_files(directory: Path, names: Sequence[str], queues: Queues) -> int:
    """Replay ``names`` (already validated by a running broker) into ``queues``; return records.

    Used by the compaction child on files the broker froze: any damage here is an error.
    """
    return replay_files(queues, _files(directory, names), _files(directory, names))[1]


def _files(directory: Path, names: Sequence[str]) -> Iterator[tuple[Path, Iterator[memoryview]]]:
    for name in names:
        yield directory / name, _bodies(directory / name)


def _bodies(path: Path) -> Iterator[memoryview]:
    with open(path, "rb") as file:
        read_header(file.read(FILE_HEADER_SIZE))
        reader = RecordReader(file, os.fstat(file.fileno()).st_size)
        yield from reader
    if reader.damage is not None:
        raise LogError(f"{path} is damaged at byte {reader.damage.offset}")


def write_base(path: Path, generation: int, queues: Queues) -> None:
    """Write ``queues``' live state to ``path`` as a base file, fsynced."""
    buffer = bytearray(file_header(FileKind.BASE, generation))
    with os.fdopen(create_file(path, os.O_WRONLY | os.O_TRUNC), "wb") as file:
        for record in snapshot(queues):
            append_record(buffer, encode_record(record))
            if len(buffer) > 1 << 20:
                file.write(buffer)
                buffer.clear()
        file.write(buffer)
        file.flush()
        os.fsync(file.fileno())


def main(argv: list[str]) -> int:
    """Run one compaction (the child process); return the exit status."""
    directory, output, keep_completed, keep_failed, *names = argv
    queues = Queues(keep_completed=int(keep_completed), keep_failed=int(keep_failed))
    load_files(Path(directory), names, queues)
    write_base(Path(output), generation_of(Path(output).name), queues)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
