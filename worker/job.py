"""``Job``: the handle a handler receives for one delivered job, and ``current_job()``."""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any

from conveyor.client import children_errors, children_results, encode_value
from conveyor.protocol import JobError, Progress

from .limits import check_progress

if TYPE_CHECKING:
    from conveyor.client import Connection

__all__ = ["Job", "current_job"]


class Job:
    """One delivered job: its id, queue, decoded payload and try number."""

    __slots__ = ("_connection", "_finished", "attempt", "attempts", "data", "group", "id",
                 "lease", "name", "queue", "timeout")

    def __init__(self, connection: Connection, queue: str, job_id: int, lease: int, attempt: int,
                 data: Any, *, attempts: int = 1, timeout: float | None = None,
                 name: str | None = None, group: str | None = None) -> None:
        self._connection = connection
        self.id = job_id
        self.queue = queue
        self.lease = lease
        self.attempt = attempt
        """1 on the first try, 2 on the second, and so on."""
        self.attempts = attempts
        """Tries the job has in all."""
        self.timeout = timeout
        """Seconds this try may run before it is cancelled, or None."""
        self.data = data
        self.name = name
        """The job's name (what kind of job it is), or None."""
        self.group = group
        """The group (tenant) the job belongs to, or None."""
        self._finished: float | None = None
        """When the worker finished running it (``time.perf_counter()``)."""

    def __repr__(self) -> str:
        return f"<Job {self.id} of {self.queue!r}, attempt {self.attempt}>"

    async def progress(self, value: Any) -> None:
        """Report progress (any serializable value, often a percentage).

        Raises:
            TypeError: ``value`` cannot be serialized.
            ResultTooLarge: ``value`` does not fit in a frame of the broker's (nothing is sent).
        """
        raw = encode_value(value, "progress value")
        message = Progress(job=self.id, lease=self.lease, progress=raw)
        check_progress(self.id, message, raw, self._connection.max_frame)
        self._connection.send(message)

    async def children_results(self) -> dict[int, Any]:
        """The results of this job's children that completed, by child id (the parent of a
        flow runs once all of them finished)."""
        return await children_results(self._connection, self.id)

    async def children_errors(self) -> dict[int, JobError]:
        """The errors of this job's children that failed for good or were removed before they
        finished and that it ignored (``on_failure="ignore"``), by child id."""
        return await children_errors(self._connection, self.id)


_current: contextvars.ContextVar[Job] = contextvars.ContextVar("conveyor_current_job")
"""The job the running handler serves: set by the worker in each job's task (and copied into
the thread of a plain handler)."""


def current_job() -> Job:
    """The job being run: its ``id``, ``attempt``, ``progress()``...

    For code that does not receive the ``Job``: a task of a ``Tasks`` registry (async or plain),
    or any function it calls.

    Raises:
        RuntimeError: when called outside a job run by a ``Worker``.
    """
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("current_job() was called outside a job run by a Conveyor worker") \
            from None
