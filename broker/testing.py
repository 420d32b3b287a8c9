"""The broker's internals that the test suite drives directly. Not a stable API.

The state machine, the log and the flush are tested without sockets (STYLE.md rule 18): this
module is where the tests find them, so that the rest of the package can stay private. A test
drives a ``Core`` as the server does: ``handle`` for each request from a ``RecordingPeer``,
``flush`` once per pass.
"""

from __future__ import annotations

from conveyor.protocol import BrokerMessage, Error, ProtocolError

from ._compaction import load_files, write_base
from ._core import Core
from ._deadlines import Deadlines, Kind
from ._errors import StateError
from ._failpoints import FAILPOINTS, HOOKS
from ._failpoints import install as install_failpoint
from ._flush import flush
from ._jobs import Consumer, Job, Queue, backoff_delay
from ._log import Log
from ._logfile import FILE_HEADER_SIZE, RECORD_HEADER_SIZE, RecordReader, append_record
from ._outbox import Outbox
from ._queues import Queues
from ._rates import WINDOW, Rate
from ._records import Record
from ._recovery import Recovery
from ._replay import Replayer, snapshot
from ._requests import handle

__all__ = [
    "FAILPOINTS",
    "FILE_HEADER_SIZE",
    "HOOKS",
    "RECORD_HEADER_SIZE",
    "WINDOW",
    "Consumer",
    "Core",
    "Deadlines",
    "Job",
    "Kind",
    "Log",
    "Outbox",
    "Queue",
    "Queues",
    "Rate",
    "Record",
    "RecordReader",
    "RecordingPeer",
    "Recovery",
    "Replayer",
    "StateError",
    "append_record",
    "backoff_delay",
    "flush",
    "handle",
    "install_failpoint",
    "load_files",
    "snapshot",
    "write_base",
]


class RecordingPeer:
    """A client without a connection: keeps what the broker sends it, in order."""

    def __init__(self, name: str = "peer") -> None:
        self.name = name
        self.sent: list[BrokerMessage] = []
        self.aborted = False

    def __repr__(self) -> str:
        return f"<RecordingPeer {self.name}>"

    def send(self, message: BrokerMessage) -> None:
        self.sent.append(message)

    def refuse(self, error: ProtocolError) -> None:
        self.sent.append(Error(req=error.req, code=error.code, message=error.message))

    def abort(self, error: ProtocolError) -> None:
        self.refuse(error)
        self.aborted = True

    def backlog(self) -> int:
        return 0

    def flush(self) -> None:
        pass

    def take(self) -> list[BrokerMessage]:
        """What was sent since the last take."""
        sent, self.sent = self.sent, []
        return sent
