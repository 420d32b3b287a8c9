"""``python tests/log/log_fsync_fault.py OPTIONS``: ``python -m conveyor.broker OPTIONS`` on a
disk whose
fsyncs fail with EIO once the first ``$CONVEYOR_TEST_FSYNC_OK`` (default 0) have succeeded."""

from __future__ import annotations

import errno
import os
import sys
import threading
from typing import TYPE_CHECKING

from conveyor.broker.cli import main

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

_real_fsync = os.fsync
_lock = threading.Lock()
_allowed = int(os.environ.get("CONVEYOR_TEST_FSYNC_OK", "0"))


def _failing_fsync(fd: FileDescriptorLike) -> None:
    global _allowed
    with _lock:
        allowed, _allowed = _allowed, _allowed - 1
    if allowed <= 0:
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    _real_fsync(fd)


os.fsync = _failing_fsync

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
