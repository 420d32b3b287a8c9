"""The compaction child, run by the broker as
``python -m conveyor.broker.compaction DIR OUTPUT KEEP_COMPLETED KEEP_FAILED FILE...``.

Replays the log files the broker froze and writes their live state as a new base file at OUTPUT
(fsynced). The broker renames it into place and switches the manifest; a crash at any point
leaves the old files in charge.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ._queues import Queues
from .log import load_files, write_base


def main(argv: list[str]) -> int:
    """Run one compaction; return the exit status."""
    directory, output, keep_completed, keep_failed, *names = argv
    queues = Queues(keep_completed=int(keep_completed), keep_failed=int(keep_failed))
    load_files(Path(directory), names, queues)
    generation = int(Path(output).name.split("-", 1)[1].split(".", 1)[0])
    write_base(Path(output), generation, queues)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
