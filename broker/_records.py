"""Log records: one per state change, and the snapshot records a compacted log starts with.

Records are array-like tagged msgspec structs (the tag is the first array element), which keeps
them small and quick to replay; job payloads and results stay ``msgspec.Raw``. Tags are pinned
integers: a record type never changes meaning, new fields go at the end with defaults.
"""

from __future__ import annotations

from typing import Final

import msgspec

from conveyor.protocol import NIL, ChildResult, JobError, QueueLimits, Schedule

from ._jobs import DEFAULT_OPTIONS, JobOptions

__all__ = [
    "ChildDone",
    "FlowAdded",
    "FlowJobRecord",
    "JobFinished",
    "JobPromoted",
    "JobRequeued",
    "JobRetrying",
    "JobSnapshot",
    "JobsAdded",
    "JobsAddedWithOptions",
    "JobsRemoved",
    "JobsRetried",
    "LastId",
    "QueueLimited",
    "QueuePaused",
    "QueueSnapshot",
    "Record",
    "ScheduleRemoved",
    "ScheduleSet",
    "decode_record",
    "encode_record",
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


class JobsAddedWithOptions(_Record, tag=4, frozen=True):
    """Like ``JobsAdded``, for jobs of which at least one has options."""

    queue: str
    first_id: int
    created_at: float
    jobs: list[msgspec.Raw]
    options: list[JobOptions]


class JobRetrying(_Record, tag=5, frozen=True):
    """Try ``attempt`` failed with ``error`` and the job will be tried again: at ``run_at``
    (it is delayed), or at once (it is at the tail of its queue) when ``run_at`` is None."""

    id: int
    attempt: int
    at: float
    error: JobError
    run_at: float | None = None


class JobPromoted(_Record, tag=6, frozen=True):
    """A delayed job became waiting (it was due, or was promoted), at the tail of its queue."""

    id: int


class JobsRemoved(_Record, tag=7, frozen=True):
    """Jobs removed (``remove``, ``drain``, ``clean``, or retention by age)."""

    ids: list[int]


class QueuePaused(_Record, tag=8, frozen=True):
    """A queue was paused (``paused`` true) or resumed."""

    queue: str
    paused: bool


class JobsRetried(_Record, tag=9, frozen=True):
    """Failed jobs put back at the tail of their queues with their attempts renewed."""

    ids: list[int]


class QueueSnapshot(_Record, tag=10, frozen=True):
    """A queue and its lifetime counters, as of a snapshot."""

    name: str
    completed: int
    failed: int
    paused: bool = False
    limits: QueueLimits | None = None


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
    options: JobOptions = DEFAULT_OPTIONS
    children_left: int = 0
    """For the parent of a flow: its children not finished yet."""
    children_done: list[ChildResult] = []
    """For the parent of a flow: the outcomes of its children that finished."""


class LastId(_Record, tag=12, frozen=True):
    """The highest job id ever given out; ids are never reused."""

    id: int


class QueueLimited(_Record, tag=13, frozen=True):
    """A queue's limits were set (``QueueLimits()``: cleared)."""

    queue: str
    limits: QueueLimits


class ScheduleSet(_Record, tag=15, frozen=True):
    """A schedule was set (created or replaced), or made the job of its due time ``last``."""

    schedule: Schedule
    anchor: float
    last: float | None = None


class ScheduleRemoved(_Record, tag=16, frozen=True):
    """A schedule was removed."""

    id: str


class FlowJobRecord(msgspec.Struct, frozen=True, array_like=True):
    """One job of a ``FlowAdded`` record (its parent and children are in its options)."""

    queue: str
    data: msgspec.Raw
    options: JobOptions


class FlowAdded(_Record, tag=17, frozen=True):
    """The jobs of one flow, added at once; their ids run from ``first_id`` upward, in order."""

    first_id: int
    created_at: float
    jobs: list[FlowJobRecord]


class ChildDone(_Record, tag=18, frozen=True):
    """A child of a flow finished (``error``: it failed for good, or was removed unfinished);
    its parent took note at ``at``. ``release``: that was the parent's last child, and the
    parent became waiting (or delayed, until its ``run_at``)."""

    parent: int
    child: int
    at: float
    result: msgspec.Raw = NIL
    error: JobError | None = None
    release: bool = False


Record = (
    JobsAdded | JobFinished | JobRequeued | JobsAddedWithOptions | JobRetrying | JobPromoted
    | JobsRemoved | QueuePaused | JobsRetried | QueueSnapshot | JobSnapshot | LastId
    | QueueLimited | ScheduleSet | ScheduleRemoved | FlowAdded | ChildDone
)

_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final[msgspec.msgpack.Decoder[Record]] = msgspec.msgpack.Decoder(Record)

encode_record: Final = _encoder.encode
"""A record's body, as the log stores it."""
decode_record: Final = _decoder.decode
"""The record in a body read from the log (``msgspec.DecodeError`` if it is none)."""
