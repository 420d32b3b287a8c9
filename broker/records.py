"""Log records: one per state change, and the snapshot records a compacted log starts with.

Records are array-like tagged msgspec structs (the tag is the first array element), which keeps
them small and quick to replay; job payloads and results stay ``msgspec.Raw``. Tags are pinned
integers: a record type never changes meaning, new fields go at the end with defaults.
"""

from __future__ import annotations

import msgspec

from protocol import NIL, JobError

__all__ = [
    "JobFinished",
    "JobRequeued",
    "JobSnapshot",
    "JobsAdded",
    "LastId",
    "QueueSnapshot",
    "Record",
]


class _Record(msgspec.Struct, frozen=True, array_like=True, tag_field="t"):
    """Base of every log record."""


class JobsAdded(_Record, tag=1, frozen=True):
    """Jobs added to ``queue`` by one request; their ids run from ``first_id`` upward."""

    queue: str
    first_id: int
    created_at: float
    jobs: list[msgspec.Raw]


class JobFinished(_Record, tag=2, frozen=True):
    """A job completed (``error`` is None) or failed, on try ``attempt``, at ``at``."""

    id: int
    attempt: int
    at: float
    result: msgspec.Raw = NIL
    error: JobError | None = None


class JobRequeued(_Record, tag=3, frozen=True):
    """A job went back to the head of its queue (released, or its worker's connection dropped).

    ``drops`` is how many times its workers' connections have dropped while running it.
    """

    id: int
    drops: int


class QueueSnapshot(_Record, tag=10, frozen=True):
    """A queue and its lifetime counters, as of a snapshot."""

    name: str
    completed: int
    failed: int


class JobSnapshot(_Record, tag=11, frozen=True):
    """A live job as of a snapshot. Waiting jobs come in queue order; active ones are waiting."""

    id: int
    queue: str
    data: msgspec.Raw
    created_at: float
    state: str
    attempt: int
    drops: int = 0
    finished_at: float | None = None
    result: msgspec.Raw = NIL
    error: JobError | None = None


class LastId(_Record, tag=12, frozen=True):
    """The highest job id ever given out; ids are never reused."""

    id: int


Record = JobsAdded | JobFinished | JobRequeued | QueueSnapshot | JobSnapshot | LastId
