"""The flush on a disk with no room at all: records it could not write are kept, once each."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

from conveyor.broker import DiskFull, FsyncPolicy
from conveyor.broker.testing import Core, Log, Queues, Record, flush


class NoRoom:
    """A log whose disk has no room left, not even in a reserve, until ``room`` is set."""

    policy = FsyncPolicy.EVERYSEC
    directory = Path("/nowhere")

    def __init__(self) -> None:
        self.full = True
        self.room = False
        self.written: list[Record] = []

    def append(self, records: Sequence[Record]) -> int:
        if not self.room:
            raise DiskFull("no room")
        self.written += records
        return len(self.written)

    def make_room(self) -> bool:
        return False

    def when_synced(self, position: int, callback: Callable[[], None]) -> None:
        callback()


def test_records_held_back_on_a_full_disk_are_written_once_each() -> None:
    log = NoRoom()
    queues = Queues(logged=True)
    core = Core(queues, cast(Log, log))
    queues.pause("q", True)
    for _ in range(5):  # the server retries while the disk stays full
        flush(core, 0.0)
    assert len(core.held_back) == 1, core.held_back
    log.room = True
    flush(core, 0.0)
    assert [type(record).__name__ for record in log.written] == ["QueuePaused"]
    assert not core.held_back
