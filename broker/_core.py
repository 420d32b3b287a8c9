"""The broker without I/O: the queue state, the log, waiters and watchers, and what the requests
of one loop pass leave for the flush.

``handle`` (``_requests``) applies requests to a ``Core``; ``flush`` (``_flush``) sends out what
they caused, once per pass. The server owns one ``Core`` and feeds it; so do the tests.
"""

from __future__ import annotations

from conveyor.protocol import DEFAULT_MAX_FRAME

from ._jobs import Job
from ._log import Log
from ._peer import Peer
from ._queues import Queues
from ._records import Record
from ._stats import Observed, Unobserved
from ._watchers import DEFAULT_MAX_WAITS, Waiters, Watchers

__all__ = ["Accepted", "Core"]

Accepted = tuple[Peer | None, int, list[Job]]
"""An ``add`` whose jobs wait for their record to be durable: (producer, request id, jobs);
jobs made by schedules have no producer."""


class Core:
    """One broker's state, and what the current pass left for the flush."""

    def __init__(self, queues: Queues, log: Log | None = None, *,
                 max_frame: int = DEFAULT_MAX_FRAME, max_waits: int = DEFAULT_MAX_WAITS) -> None:
        self.queues = queues
        self.log = log
        """The log every change is written to (None: the queues live in memory only)."""
        self.max_frame = max_frame
        self.waiters = Waiters(limit=max_waits)
        self.watchers = Watchers(queues.watched)
        self.accepting = True
        """Whether adds are accepted (not once the broker shuts down)."""
        self.dispatching = True
        """Whether jobs are dispatched (not once the broker shuts down)."""
        self.accepted: list[Accepted] = []
        """Adds applied this pass: their records are written by the next flush."""
        self.unsynced = 0
        """Adds written and waiting for an fsync to cover them (``--fsync always``)."""
        self.durable: list[Accepted] = []
        """Adds an fsync covered since the last flush: the next one puts their jobs in line."""
        self.held_back: list[Record] = []
        """Records a full disk kept out of the log; the next flush writes them first."""
        self.dirty: list[Peer] = []
        """Peers with output queued for this pass's flush."""
        self.observed: Observed = Unobserved()
        """What the statistics read of the server (it sets its own)."""
