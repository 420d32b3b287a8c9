"""Failpoints: named steps where a test can crash the broker, or run code of its own.

A crash point (``compaction.renamed``, say) is armed by setting ``CONVEYOR_FAILPOINT`` to its name
in the environment: reaching the step sends SIGKILL to the broker's own process, which is exactly
what a crash at that point leaves on disk.

Every failpoint also runs the hook a test installed for it in this process (``install``), if any:
a hook may block (hold an fsync), raise (a full disk, an unexpected error) or record something
(how far each file is fsynced). Disarmed, a failpoint is one string comparison and one dict
lookup; it is reached once per loop pass at most, never per job.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Final

__all__ = ["FAILPOINTS", "HOOKS", "Hook", "failpoint", "hooked", "install"]

FAILPOINTS: Final = (
    "compaction.switched",
    "compaction.written",
    "compaction.renamed",
    "compaction.manifest",
)
"""Every crash point, in the order compaction reaches them."""

HOOKS: Final = (
    "log.run",
    "log.write",
    "log.fsync",
    "log.synced",
    "log.reserve",
)
"""The other failpoints, for hooks only:

- ``log.run``: each round of the log's background task (on the event loop);
- ``log.write``: before each write of records (on the event loop), with the number of bytes to
  write; an ``OSError`` raised here is a failed write;
- ``log.fsync``: before each fsync of the log's files (in the fsync thread); an ``OSError``
  raised here is a failed fsync;
- ``log.synced``: after each fsync of the log's files (in the fsync thread, before they may be
  closed), with a ``dict`` of each file descriptor fsynced and the file's size when the fsync
  began: how much of it a power loss keeps;
- ``log.reserve``: before disk space is taken for the log's reserve (in a thread, or at start),
  with the size it is to have; an ``OSError`` raised here (ENOSPC) is no room.
"""

Hook = Callable[[object], None]
"""A test's code for a failpoint; it gets what the failpoint passes (``None`` for most)."""

_ARMED: Final = os.environ.get("CONVEYOR_FAILPOINT", "")
_hooks: dict[str, Hook] = {}


def failpoint(name: str, detail: object = None) -> None:
    """Die here, by SIGKILL, if this failpoint is armed; run its hook if one is installed."""
    if name == _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
    hook = _hooks.get(name)
    if hook is not None:
        hook(detail)


def hooked(name: str) -> bool:
    """Whether a hook is installed for ``name`` (to skip working out a detail nobody reads)."""
    return name in _hooks


def install(name: str, hook: Hook | None) -> None:
    """Run ``hook`` at failpoint ``name`` from now on (``None``: no longer)."""
    if name not in FAILPOINTS and name not in HOOKS:
        raise ValueError(f"no failpoint {name!r}")
    if hook is None:
        _hooks.pop(name, None)
    else:
        _hooks[name] = hook
