"""The manifest: which files of a data directory make up the log, and in what order.

``MANIFEST`` is JSON naming the base file (a snapshot written by compaction, absent until the
first) and the increment files, in replay order. It is replaced atomically (temporary name,
fsync, rename, directory fsync), so it always names a complete set of files. Files are named
``base-NNNNNNNN.log`` and ``incr-NNNNNNNN.log`` after a generation number that only grows.

Every file of the data directory is created readable and writable by the broker's user only
(``create_file``), and the directory itself accessible to that user only (``make_directory``),
whatever the umask: the log holds every payload.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Final

import msgspec

from ._errors import LogError

__all__ = [
    "DIRECTORY_MODE",
    "FILE_MODE",
    "MANIFEST",
    "Manifest",
    "base_name",
    "create_file",
    "fsync_dir",
    "generation_of",
    "increment_name",
    "make_directory",
    "read_manifest",
    "remove_unreferenced",
    "write_manifest",
]

MANIFEST: Final = "MANIFEST"
FILE_MODE: Final = 0o600
"""Permissions of every file the broker creates in its data directory."""
DIRECTORY_MODE: Final = 0o700
"""Permissions of a data directory the broker creates."""


class Manifest(msgspec.Struct):
    """The files of the log, in replay order."""

    version: int
    base: str | None
    increments: list[str]

    def files(self) -> list[str]:
        """Every file named, base first."""
        return [name for name in (self.base, *self.increments) if name]


def base_name(generation: int) -> str:
    return f"base-{generation:08d}.log"


def increment_name(generation: int) -> str:
    return f"incr-{generation:08d}.log"


def generation_of(name: str) -> int:
    """The generation in a log file's name."""
    return int(name.split("-", 1)[1].split(".", 1)[0])


def read_manifest(directory: Path) -> Manifest | None:
    """The manifest of ``directory``, or None when it has none. Raises ``LogError``."""
    path = directory / MANIFEST
    if not path.exists():
        return None
    try:
        return msgspec.json.decode(path.read_bytes(), type=Manifest)
    except msgspec.DecodeError as exc:
        raise LogError(f"{path} is unreadable: {exc}") from None


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Replace the manifest of ``directory`` atomically and durably."""
    path = directory / MANIFEST
    tmp = path.with_suffix(".tmp")
    with os.fdopen(create_file(tmp, os.O_WRONLY | os.O_TRUNC), "wb") as file:
        file.write(msgspec.json.encode(manifest))
        file.flush()
        os.fsync(file.fileno())
    os.rename(tmp, path)
    fsync_dir(directory)


def remove_unreferenced(directory: Path, manifest: Manifest) -> None:
    """Delete what an interrupted compaction or manifest switch left: files the manifest does
    not name, and temporary files."""
    named = {manifest.base, *manifest.increments}
    for path in directory.iterdir():
        leftover = path.suffix == ".tmp" or (path.suffix == ".log" and path.name not in named)
        if leftover and (path.name.startswith(("base-", "incr-", MANIFEST))):
            path.unlink()


def make_directory(directory: Path) -> None:
    """Create ``directory`` (and its parents) unless it exists; it gets ``DIRECTORY_MODE``."""
    if directory.is_dir():
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        directory.mkdir(mode=DIRECTORY_MODE)
    except FileExistsError:
        return
    os.chmod(directory, DIRECTORY_MODE)  # the umask may have taken bits away


def create_file(path: Path, flags: int) -> int:
    """Open ``path`` with ``flags`` and ``O_CREAT``; it gets ``FILE_MODE``."""
    fd = os.open(path, flags | os.O_CREAT, FILE_MODE)
    # The umask can only take bits away, but it could take the owner's too.
    if os.fstat(fd).st_mode & 0o777 != FILE_MODE:
        with contextlib.suppress(PermissionError):  # a file someone else owns keeps its mode
            os.fchmod(fd, FILE_MODE)
    return fd


def fsync_dir(directory: Path) -> None:
    """fsync ``directory`` itself (so renames and new files in it are durable)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
