"""What the queue state machine produces besides its own state: log records, events for
watchers, finished jobs for waiters, and jobs removed before they finished.

Every change puts what it produces in the state's ``Output``; the flush takes all of it once per
loop pass as one ``Outbox`` (``Queues.take_outbox``). Nobody clears a list by hand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from conveyor.protocol import NIL, Event, JobError

if TYPE_CHECKING:
    from ._jobs import Job
    from ._records import Record

__all__ = ["Outbox", "Output"]


class Outbox:
    """What changes produced between two takes, in the order they produced it."""

    __slots__ = ("events", "finished", "records", "removed")

    def __init__(self, records: list[Record], events: list[tuple[str, Event]],
                 finished: list[Job], removed: list[int]) -> None:
        self.records = records
        """Log records of the changes (none when the state is not logged)."""
        self.events = events
        """(queue, event) for the queues being watched."""
        self.finished = finished
        """Jobs that completed or failed: their waiters get ``finished``."""
        self.removed = removed
        """Ids of jobs removed before they finished: their waiters are told so."""

    def extend(self, later: Outbox) -> None:
        """Append what ``later`` holds (produced after this)."""
        self.records += later.records
        self.events += later.events
        self.finished += later.finished
        self.removed += later.removed


class Output:
    """Where the state machine puts what it produces, until the flush takes it."""

    __slots__ = ("events", "finished", "logged", "records", "removed", "watched")

    def __init__(self, *, logged: bool) -> None:
        self.logged = logged
        """Whether changes are logged (records are collected only then)."""
        self.watched: set[str] = set()
        """Queues whose events are collected."""
        self.records: list[Record] = []
        self.events: list[tuple[str, Event]] = []
        self.finished: list[Job] = []
        self.removed: list[int] = []

    def take(self) -> Outbox:
        """Everything produced since the last take; start over empty."""
        outbox = Outbox(self.records, self.events, self.finished, self.removed)
        self.records, self.events, self.finished, self.removed = [], [], [], []
        return outbox

    def event(self, queue: str, kind: str, job: Job, now: float, *, value: msgspec.Raw = NIL,
              error: JobError | None = None, run_at: float | None = None) -> None:
        """An event of ``job`` in ``queue`` (the caller checked the queue is watched)."""
        self.events.append((queue, Event(kind=kind, job=job.id, at=now, attempt=job.attempt,
                                         value=value, error=error, run_at=run_at,
                                         name=job.options.name)))
