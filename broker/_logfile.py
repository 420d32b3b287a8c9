"""The log's file format: a file header, then records framed with a length and two checksums.

    file    = header record*
    header  = magic "CNVYLOG\\0" (8 bytes) | version u16 | kind u16 | generation u32
    record  = length u32 | body_crc u32 | head_crc u32 | body (length bytes, MessagePack)

All integers are big-endian. ``body_crc`` is the CRC-32 of the body; ``head_crc`` is the CRC-32 of
the first 8 bytes of the record (length and body_crc), so a damaged length is told apart from a
record cut short by a crash. ``RecordReader`` walks a file and says where its valid records end
and whether anything valid follows the damage (damage before the tail) or not (a torn tail).
"""

from __future__ import annotations

import enum
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final

from ._errors import BrokerError

__all__ = [
    "FILE_HEADER_SIZE",
    "LOG_VERSION",
    "MAGIC",
    "MAX_RECORD",
    "RECORD_HEADER_SIZE",
    "Damage",
    "FileKind",
    "FormatError",
    "RecordReader",
    "append_record",
    "file_header",
    "read_header",
]

MAGIC: Final = b"CNVYLOG\0"
LOG_VERSION: Final = 1
MAX_RECORD: Final = 1 << 30
"""Largest record body accepted on replay (bytes); a larger length is damage."""

_FILE_HEADER: Final = struct.Struct(">8sHHI")
_RECORD_HEADER: Final = struct.Struct(">III")
_LENGTH_CRC: Final = struct.Struct(">II")
FILE_HEADER_SIZE: Final = _FILE_HEADER.size
RECORD_HEADER_SIZE: Final = _RECORD_HEADER.size
_NONZERO: Final = re.compile(rb"[^\0]")
"""Finds the end of a zero run without copying what follows it."""
_CHUNK: Final = 1 << 20
"""Bytes read at a time when replaying a file."""


class FileKind(enum.IntEnum):
    """What a log file holds."""

    BASE = 1
    """A snapshot of the live state, written by compaction."""
    INCREMENT = 2
    """Records appended as changes happen."""


class FormatError(BrokerError):
    """A file is not a Conveyor log file of a version this broker reads."""


@dataclass(frozen=True)
class Damage:
    """Where a file stops being valid, and whether valid records follow."""

    offset: int
    """First byte that is not part of a valid record."""
    resumes_at: int | None
    """Offset of the next valid record after the damage, or None when nothing valid follows."""
    size: int
    """Total size of the file (bytes)."""

    @property
    def at_tail(self) -> bool:
        """True when nothing valid follows: a torn or garbage tail that can be cut off."""
        return self.resumes_at is None


def file_header(kind: FileKind, generation: int) -> bytes:
    """The header that starts a new log file."""
    return _FILE_HEADER.pack(MAGIC, LOG_VERSION, kind, generation)


def read_header(data: bytes | memoryview) -> tuple[FileKind, int]:
    """Return (kind, generation) from a file's first bytes, or raise ``FormatError``."""
    if len(data) < FILE_HEADER_SIZE:
        raise FormatError(f"file is {len(data)} bytes, shorter than the log header")
    magic, version, kind, generation = _FILE_HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FormatError("not a Conveyor log file (bad magic)")
    if version != LOG_VERSION:
        raise FormatError(f"log format version {version}; this broker reads version {LOG_VERSION}")
    try:
        return FileKind(kind), generation
    except ValueError:
        raise FormatError(f"unknown log file kind {kind}") from None


def append_record(buffer: bytearray, body: bytes) -> None:
    """Frame ``body`` onto the end of ``buffer``."""
    head = _LENGTH_CRC.pack(len(body), zlib.crc32(body))
    buffer += head
    buffer += zlib.crc32(head).to_bytes(4, "big")
    buffer += body


def _valid_at(data: memoryview, offset: int, end: int) -> int:
    """Length of the valid record at ``offset``, or -1."""
    if end - offset < RECORD_HEADER_SIZE:
        return -1
    length, body_crc, head_crc = _RECORD_HEADER.unpack_from(data, offset)
    if zlib.crc32(data[offset : offset + 8]) != head_crc or length > MAX_RECORD:
        return -1
    start = offset + RECORD_HEADER_SIZE
    if end - start < length or zlib.crc32(data[start : start + length]) != body_crc:
        return -1
    return int(length)


class RecordReader:
    """The valid records of one log file, from ``start`` on, read a chunk at a time.

    Iterating gives each record's body as a view into the chunk it was read with: decode it, and
    copy what is kept (a ``msgspec.Raw`` decoded from it would keep the whole chunk alive). Then
    ``damage`` says where the valid records stop, or is None when they run to the end. Memory
    is one chunk (or one record, if larger), never the whole file; only damage makes it read
    the rest of the file, to find whether valid records follow.
    """

    def __init__(self, file: BinaryIO, size: int, start: int = FILE_HEADER_SIZE, *,
                 chunk: int = _CHUNK) -> None:
        self._file = file
        self._size = size
        self._start = start
        self._chunk = chunk
        self.damage: Damage | None = None

    def __iter__(self) -> Iterator[memoryview]:
        end = self._size
        offset = self._start  # in the file, of the next record
        need = RECORD_HEADER_SIZE  # bytes the next chunk must hold
        unpack = _RECORD_HEADER.unpack_from
        crc32 = zlib.crc32
        while offset < end:
            view = self._read(offset, need)
            size = len(view)
            at = 0
            need = RECORD_HEADER_SIZE
            damaged = False
            while size - at >= RECORD_HEADER_SIZE:
                length, body_crc, head_crc = unpack(view, at)
                if length > MAX_RECORD or crc32(view[at : at + 8]) != head_crc:
                    damaged = True
                    break
                stop = at + RECORD_HEADER_SIZE + length
                if stop > size:
                    need = stop - at  # the record runs past the chunk: read it whole
                    break
                body = view[at + RECORD_HEADER_SIZE : stop]
                if crc32(body) != body_crc:
                    damaged = True
                    break
                yield body
                at = stop
            offset += at
            if damaged or (offset < end and offset + need > end):
                self.damage = Damage(offset, self._resume_after(offset), end)
                return

    def _read(self, offset: int, need: int) -> memoryview:
        self._file.seek(offset)
        return memoryview(self._file.read(max(self._chunk, need)))

    def _resume_after(self, offset: int) -> int | None:
        self._file.seek(offset)
        rest = self._file.read(self._size - offset)
        found = _resync(memoryview(rest), 1, len(rest))
        return None if found is None else offset + found


def _resync(view: memoryview, offset: int, end: int) -> int | None:
    """The next offset holding a valid record, searching byte by byte (zero runs skipped)."""
    raw = view.obj if isinstance(view.obj, bytes) else bytes(view)
    assert isinstance(raw, bytes)
    while offset <= end - RECORD_HEADER_SIZE:
        if raw[offset] == 0 and raw[offset : offset + 8] == b"\0" * 8:
            # A zero-filled stretch (preallocated or unwritten blocks) holds no record start.
            found = _NONZERO.search(raw, offset)
            nonzero = len(raw) if found is None else found.start()
            offset = max(nonzero - 7, offset + 1)
            continue
        if _valid_at(view, offset, end) >= 0:
            return offset
        offset += 1
    return None
