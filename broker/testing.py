"""The broker's internals that the test suite drives directly. Not a stable API.

The state machine, the log and the flush are tested without sockets (STYLE.md rule 18): this
module is where the tests find them, so that the rest of the package can stay private. A test
drives a ``Core`` as the server does: ``handle`` for each request from a ``RecordingPeer``,
``flush`` once per pass.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from conveyor.protocol import BrokerMessage, Error, ProtocolError

from ._auth import FailureLimiter
from ._compaction import load_files, write_base
from ._core import Core
from ._deadlines import Deadlines, Kind
from ._errors import StateError
from ._exposure import peer_allowed
from ._failpoints import FAILPOINTS
from ._failpoints import install as install_failpoint
from ._flush import flush
from ._groups import GroupedLine
from ._jobs import MAX_DELAY, Consumer, Job, backoff_delay
from ._log import Log
from ._logfile import FILE_HEADER_SIZE, RECORD_HEADER_SIZE, RecordReader, append_record
from ._queues import Queues
from ._rates import WINDOW, Rate
from ._records import Record
from ._recovery import Recovery
from ._replay import Replayer, snapshot
from ._requests import MIN_LEASE, handle
from ._stats import STATS_PAGE
from ._users import User

__all__ = [
    "FAILPOINTS",
    "FILE_HEADER_SIZE",
    "MAX_DELAY",
    "MIN_LEASE",
    "RECORD_HEADER_SIZE",
    "STATS_PAGE",
    "WINDOW",
    "Consumer",
    "Core",
    "Deadlines",
    "FailureLimiter",
    "GroupedLine",
    "Job",
    "Kind",
    "Log",
    "ManualClock",
    "Queues",
    "Rate",
    "Record",
    "RecordReader",
    "RecordingPeer",
    "Recovery",
    "Replayer",
    "StateError",
    "SteppedClock",
    "append_record",
    "backoff_delay",
    "flush",
    "handle",
    "install_failpoint",
    "load_files",
    "peer_allowed",
    "snapshot",
    "write_base",
]


class RecordingPeer:
    """A client without a connection: keeps what the broker sends it, in order."""

    def __init__(self, name: str = "peer") -> None:
        self.name = name
        self.user: User | None = None
        self.sent: list[BrokerMessage] = []
        self.aborted = False

    def __repr__(self) -> str:
        return f"<RecordingPeer {self.name}>"

    def send(self, message: BrokerMessage) -> None:
        self.sent.append(message)

    def send_later(self, messages: Iterator[BrokerMessage]) -> None:
        self.sent.extend(messages)

    def refuse(self, error: ProtocolError) -> None:
        self.sent.append(Error(req=error.req, code=error.code, message=error.message))

    def abort(self, error: ProtocolError) -> None:
        self.refuse(error)
        self.aborted = True

    def cut_off(self, error: ProtocolError) -> None:
        self.abort(error)

    def backlog(self) -> int:
        return 0

    def flush(self) -> None:
        pass

    def take(self) -> list[BrokerMessage]:
        """What was sent since the last take."""
        sent, self.sent = self.sent, []
        return sent


class ManualClock:
    """A clock that moves only when told: ``advance`` moves both clocks (time passes), ``step``
    moves the wall clock alone (an operator or NTP set it)."""

    def __init__(self, wall: float = 1_700_000_000.0, monotonic: float = 1000.0) -> None:
        self._wall = wall
        self._monotonic = monotonic

    def wall(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        """``seconds`` pass."""
        self._wall += seconds
        self._monotonic += seconds

    def step(self, seconds: float) -> None:
        """The wall clock is set ``seconds`` forward (or back, if negative)."""
        self._wall += seconds


class SteppedClock:
    """The system's clocks, with the wall clock set ``step``-ped away from the system's: a real
    broker given it sees the wall clock jump when a test calls ``step``."""

    def __init__(self) -> None:
        self.offset = 0.0
        """Seconds added to the system's wall clock."""

    def wall(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic()

    def step(self, seconds: float) -> None:
        """The wall clock is set ``seconds`` forward (or back, if negative)."""
        self.offset += seconds
