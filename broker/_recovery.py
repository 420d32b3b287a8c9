"""Recovery: replaying the log's files into the queue state when the broker starts.

Files are replayed in the manifest's order. A torn or damaged tail of the last file (what a crash
mid-write leaves) is cut off with a warning naming the bytes dropped. Damage anywhere else stops
the start with ``LogDamaged``, unless the operator asked to salvage: then every valid record is
kept and the damage skipped, with a warning each time (the caller then rewrites the log clean).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from ._errors import LogDamaged, LogError
from ._logfile import FILE_HEADER_SIZE, FileKind, FormatError, file_header, read_header, scan
from ._manifest import MANIFEST, Manifest, generation_of, write_manifest
from ._queues import Queues
from ._records import decode_record
from ._replay import Replayer

__all__ = ["Recovery", "recover"]


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
    Raises ``LogDamaged`` or ``LogError``."""
    replayer = Replayer(queues)
    names = manifest.files()
    damaged = False
    for index, name in enumerate(names):
        path = directory / name
        last = index == len(names) - 1
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise LogError(f"{path} is named in {MANIFEST} but missing") from None
        recovery.bytes += len(data)
        try:
            read_header(data)
        except FormatError as exc:
            if last and len(data) < FILE_HEADER_SIZE and data == file_header(
                    FileKind.INCREMENT, generation_of(name))[: len(data)]:
                # The crash came while the header was being written.
                _truncate(directory, manifest, path, 0, recovery, len(data))
                continue
            if not salvage:
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
                    record = decode_record(body)
                except msgspec.DecodeError as exc:
                    raise LogError(f"{path}: a record with a valid checksum does not "
                                   f"decode ({exc}); was it written by a newer broker?") from None
                replayer.apply(record)
            recovery.records += len(bodies)
            if damage is None:
                break
            if damage.at_tail and last:
                _truncate(directory, manifest, path, damage.offset, recovery,
                          damage.size - damage.offset)
                break
            where = (f"{path} is damaged at byte {damage.offset} of {damage.size}"
                     + (", before valid records" if not damage.at_tail else
                        ", and is not the last file"))
            if not salvage:
                raise LogDamaged(f"{where}; refusing to start. Start with --salvage to keep "
                                 f"every valid record and skip the damage")
            damaged = True
            resume = damage.resumes_at if damage.resumes_at is not None else damage.size
            recovery.warnings.append(f"{where}: skipped {resume - damage.offset} bytes")
            if damage.resumes_at is None:
                break
            offset = damage.resumes_at
    replayer.finish()
    if replayer.skipped:
        recovery.warnings.append(
            f"{replayer.skipped} records referred to jobs the log no longer holds")
    return damaged


def _truncate(directory: Path, manifest: Manifest, path: Path, offset: int, recovery: Recovery,
              dropped: int) -> None:
    recovery.warnings.append(
        f"{path}: cut off a torn or damaged tail of {dropped} bytes at byte {offset}")
    if offset == 0:
        path.unlink()
        manifest.increments.remove(path.name)
        write_manifest(directory, manifest)
    else:
        os.truncate(path, offset)
