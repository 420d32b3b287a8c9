"""Crash points for testing recovery: the process kills itself where ``CONVEYOR_FAILPOINT`` says.

A failpoint is a named step (``compaction.renamed``, say). With ``CONVEYOR_FAILPOINT`` set to that
name in the environment, reaching the step sends SIGKILL to the broker's own process, which is
exactly what a crash at that point leaves on disk. Unset, a failpoint is one string comparison.
"""

from __future__ import annotations

import os
import signal
from typing import Final

__all__ = ["FAILPOINTS", "failpoint"]

FAILPOINTS: Final = (
    "compaction.switched",
    "compaction.written",
    "compaction.renamed",
    "compaction.manifest",
)
"""Every failpoint, in the order compaction reaches them."""

_ARMED: Final = os.environ.get("CONVEYOR_FAILPOINT", "")


def failpoint(name: str) -> None:
    """Die here, by SIGKILL, if this failpoint is armed."""
    if name == _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
