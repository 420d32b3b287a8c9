"""Recovery: replaying the log's files into the queue state when the broker starts.

Files are replayed in the manifest's order. A torn or damaged tail of the last file (what a crash
mid-write leaves) is cut off with a warning naming the bytes dropped. Damage anywhere else stops
the start with ``LogDamaged``, unless the operator asked to salvage: then every valid record is
kept and the damage skipped, with a warning each time (the caller then rewrites the log clean).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

import msgspec

from ._census import Census
from ._errors import LogDamaged, LogError
from ._logfile import (
    FILE_HEADER_SIZE,
    FileKind,
    FormatError,
    RecordReader,
    file_header,
    read_header,
)
from ._manifest import MANIFEST, Manifest, generation_of, write_manifest
from ._queues import Queues
from ._records import decode_record
from ._replay import Replayer

__all__ = ["Recovery", "recover", "replay_files"]

_T = TypeVar("_T")
_FileBodies = Iterable[tuple[Path, Iterable[memoryview]]]


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


def recover(directory: Path, manifest: Manifest, queues: Queues, recovery: Recovery, *,
            salvage: bool) -> bool:
    """Replay the files ``manifest`` names into ``queues``; return True when salvage skipped
    damage. A last increment cut short in its header is dropped from ``manifest`` (rewritten).
    Raises ``LogDamaged`` or ``LogError``.

    Two passes (``replay_files``): the first reads only; the second cuts off a torn tail.
    """
    files = _Files(directory, manifest, recovery, salvage=salvage)
    replayer, records = replay_files(
        queues, _Files(directory, manifest, None, salvage=salvage), files)
    recovery.records += records
    if replayer.skipped:
        recovery.warnings.append(
            f"{replayer.skipped} records referred to jobs the log no longer holds")
    return files.damaged


def replay_files(queues: Queues, census_pass: _FileBodies, replay_pass: _FileBodies,
                 ) -> tuple[Replayer, int]:
    """Replay log files into ``queues``; return the replayer and the number of records.

    Two passes over the same files, each giving every file's path and the bodies of its valid
    records: the census (which jobs the files do not outlive), then the replay proper, which
    builds only the others. Raises ``LogError`` for a record that does not decode, and whatever
    the passes raise.
    """
    retention = queues.retention
    census = Census(keep_completed=retention.keep_completed, keep_failed=retention.keep_failed)
    for path, bodies in census_pass:
        for body in bodies:
            _decoded(path, census.apply, body)
    replayer = Replayer(queues, census)
    skips = census.skips
    apply = replayer.apply
    records = 0
    for path, bodies in replay_pass:
        for body in bodies:
            if not skips(body):
                apply(_decoded(path, decode_record, body))
            records += 1
    replayer.finish()
    return replayer, records


def _decoded(path: Path, decode: Callable[[memoryview], _T], body: memoryview) -> _T:
    try:
        return decode(body)
    except msgspec.DecodeError as exc:
        raise LogError(f"{path}: a record with a valid checksum does not decode ({exc}); was "
                       f"it written by a newer broker?") from None


class _Files:
    """Every file ``manifest`` names, in order, each with the bodies of its valid records. Damage
    before the tail raises ``LogDamaged``, unless ``salvage``: then it is skipped (``damaged``
    says so). With a ``recovery`` to report to, a torn tail of the last file is cut off (and a
    last file cut short in its header dropped); without, the files are only read."""

    def __init__(self, directory: Path, manifest: Manifest, recovery: Recovery | None, *,
                 salvage: bool) -> None:
        self.directory = directory
        self.manifest = manifest
        self.recovery = recovery
        self.salvage = salvage
        self.damaged = False

    def __iter__(self) -> Iterator[tuple[Path, Iterator[memoryview]]]:
        names = self.manifest.files()
        for index, name in enumerate(names):
            path = self.directory / name
            try:
                file = open(path, "rb")  # noqa: SIM115 (a with block just below: only open fails)
            except FileNotFoundError:
                raise LogError(f"{path} is named in {MANIFEST} but missing") from None
            with file:
                yield path, self._file(path, file, last=index == len(names) - 1)

    def _file(self, path: Path, file: BinaryIO, *, last: bool) -> Iterator[memoryview]:
        recovery = self.recovery
        size = os.fstat(file.fileno()).st_size
        if recovery is not None:
            recovery.bytes += size
        header = file.read(FILE_HEADER_SIZE)
        try:
            read_header(header)
        except FormatError as exc:
            if last and size < FILE_HEADER_SIZE and header == file_header(
                    FileKind.INCREMENT, generation_of(path.name))[:size]:
                # The crash came while the header was being written.
                self._cut(path, 0, size)
                return
            if not self.salvage:
                raise LogDamaged(f"{path}: {exc}; start with --salvage to keep what is "
                                 f"readable in the other files") from None
            self._skipped(f"{path}: {exc}; skipped the whole file")
            return
        offset = FILE_HEADER_SIZE
        while True:
            reader = RecordReader(file, size, offset)
            yield from reader
            damage = reader.damage
            if damage is None:
                return
            if damage.at_tail and last:
                self._cut(path, damage.offset, damage.size - damage.offset)
                return
            where = (f"{path} is damaged at byte {damage.offset} of {damage.size}"
                     + (", before valid records" if not damage.at_tail else
                        ", and is not the last file"))
            if not self.salvage:
                raise LogDamaged(f"{where}; refusing to start. Start with --salvage to keep "
                                 f"every valid record and skip the damage")
            resume = damage.resumes_at if damage.resumes_at is not None else damage.size
            self._skipped(f"{where}: skipped {resume - damage.offset} bytes")
            if damage.resumes_at is None:
                return
            offset = damage.resumes_at

    def _skipped(self, warning: str) -> None:
        self.damaged = True
        if self.recovery is not None:
            self.recovery.warnings.append(warning)

    def _cut(self, path: Path, offset: int, dropped: int) -> None:
        """Cut off a torn or damaged tail of the last file (when reporting to a recovery)."""
        if self.recovery is None:
            return
        self.recovery.warnings.append(
            f"{path}: cut off a torn or damaged tail of {dropped} bytes at byte {offset}")
        if offset == 0:
            path.unlink()
            self.manifest.increments.remove(path.name)
            write_manifest(self.directory, self.manifest)
        else:
            os.truncate(path, offset)
