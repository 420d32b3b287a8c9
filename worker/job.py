"""``Job``: the handle a handler receives for one delivered job."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.client import encode_value
from conveyor.protocol import Progress

if TYPE_CHECKING:
    from conveyor.client import Connection

__all__ = ["Job"]


class Job:
    """One delivered job: its id, queue, decoded payload and try number."""

    __slots__ = ("_connection", "attempt", "attempts", "data", "id", "lease", "name", "queue",
                 "timeout")

    def __init__(self, connection: Connection, queue: str, job_id: int, lease: int, attempt: int,
                 data: Any, *, attempts: int = 1, timeout: float | None = None,
                 name: str | None = None) -> None:
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

    def __repr__(self) -> str:
        return f"<Job {self.id} of {self.queue!r}, attempt {self.attempt}>"

    async def progress(self, value: Any) -> None:
        """Report progress (any serializable value, often a percentage)."""
        raw = encode_value(value, "progress value")
        self._connection.send(Progress(job=self.id, lease=self.lease, progress=raw))
