"""``python tests/log/log_failpoint_broker.py OPTIONS``: ``python -m conveyor.broker OPTIONS`` with
hooks at its failpoints, set by the environment:

- ``CONVEYOR_TEST_RAISE=NAME``: failpoint ``NAME`` raises ``RuntimeError`` once the file named by
  ``CONVEYOR_TEST_TRIGGER`` exists.
- ``CONVEYOR_TEST_SYNCED=PATH``: after every fsync of the log, a JSON line is appended to ``PATH``:
  the path of each file fsynced and its size when the fsync began (what a power loss keeps).
- ``CONVEYOR_TEST_FSYNC_DELAY=SECONDS``: every fsync of the log takes that much longer.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from conveyor.broker.cli import main
from conveyor.broker.testing import install_failpoint


def _raise_when_triggered(trigger: Path, name: str) -> None:
    def hook(detail: object) -> None:
        if trigger.exists():
            raise RuntimeError(f"failpoint {name} triggered")

    install_failpoint(name, hook)


def _record_synced(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def hook(detail: object) -> None:
        assert isinstance(detail, dict)
        sizes = {os.readlink(f"/proc/self/fd/{fd}"): size for fd, size in detail.items()}
        # One write per line, to a file in append mode: whole lines whenever the broker dies.
        os.write(fd, json.dumps(sizes).encode() + b"\n")

    install_failpoint("log.synced", hook)


def _slow_fsync(seconds: float) -> None:
    install_failpoint("log.fsync", lambda detail: time.sleep(seconds))


if __name__ == "__main__":
    environ = os.environ
    if "CONVEYOR_TEST_RAISE" in environ:
        _raise_when_triggered(Path(environ["CONVEYOR_TEST_TRIGGER"]),
                              environ["CONVEYOR_TEST_RAISE"])
    if "CONVEYOR_TEST_SYNCED" in environ:
        _record_synced(Path(environ["CONVEYOR_TEST_SYNCED"]))
    if "CONVEYOR_TEST_FSYNC_DELAY" in environ:
        _slow_fsync(float(environ["CONVEYOR_TEST_FSYNC_DELAY"]))
    sys.exit(main(sys.argv[1:]))
