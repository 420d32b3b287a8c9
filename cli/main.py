"""``conveyor COMMAND``: parse the command line and run one subcommand."""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``conveyor`` command; return its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "broker":
        from conveyor.broker.cli import main as broker_main
        return broker_main(args[1:])
    if args and args[0] == "worker":
        from conveyor.worker.cli import main as worker_main
        return worker_main(args[1:])
    print("usage: conveyor {broker,worker} ...", file=sys.stderr)
    return 2
