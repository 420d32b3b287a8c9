"""``python tests/log/log_failpoint_broker.py OPTIONS``: ``python -m conveyor.broker OPTIONS`` with
hooks at its failpoints, set by the environment:

- ``CONVEYOR_TEST_RAISE=NAME``: failpoint ``NAME`` raises ``RuntimeError`` once the file named by
  ``CONVEYOR_TEST_TRIGGER`` exists.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from conveyor.broker.cli import main
from conveyor.broker.testing import install_failpoint


def _raise_when_triggered(trigger: Path, name: str) -> None:
    def hook(detail: object) -> None:
        if trigger.exists():
            raise RuntimeError(f"failpoint {name} triggered")

    install_failpoint(name, hook)


if __name__ == "__main__":
    if "CONVEYOR_TEST_RAISE" in os.environ:
        _raise_when_triggered(Path(os.environ["CONVEYOR_TEST_TRIGGER"]),
                              os.environ["CONVEYOR_TEST_RAISE"])
    sys.exit(main(sys.argv[1:]))
