"""Every message on the wire, as frozen tagged msgspec structs.

Each message is a MessagePack map whose ``t`` field names its type. Tags are pinned explicitly so a
class rename never changes the wire; new fields go at the end with defaults and types never change.
Job payloads, results and progress values are ``msgspec.Raw``: already-encoded MessagePack that the
broker stores and forwards without decoding.
"""

from __future__ import annotations

import enum
from typing import Annotated, Final

import msgspec

__all__ = [
    "NIL",
    "PROTOCOL_VERSION",
    "Ack",
    "Add",
    "Added",
    "BrokerMessage",
    "ClientMessage",
    "Closing",
    "Counts",
    "Deliver",
    "Delivery",
    "Error",
    "Fail",
    "Finished",
    "GetCounts",
    "GetJob",
    "Hello",
    "JobDef",
    "JobError",
    "JobInfo",
    "JobReply",
    "JobState",
    "Ok",
    "Progress",
    "Release",
    "SetWindow",
    "Subscribe",
    "Wait",
    "Welcome",
]

PROTOCOL_VERSION: Final = 1
"""The version this code speaks. A peer with another version is refused."""

NIL: Final = msgspec.Raw(b"\xc0")
"""MessagePack nil as a raw value: the result or progress of a job that has none."""


RequestId = Annotated[int, msgspec.Meta(ge=1, le=(1 << 63) - 1)]
"""Chosen by the client, echoed in the reply; 0 is reserved for "no request"."""
ErrorRequestId = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
"""The request an error answers, or 0 when it answers none (or its id could not be read)."""
Window = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
"""A credit window: the most jobs a subscriber may hold unacknowledged."""


class JobState(enum.Enum):
    """Where a job is in its lifecycle (see protocol.md, "Job lifecycle")."""

    WAITING = "waiting"
    DELAYED = "delayed"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"


class JobDef(msgspec.Struct, frozen=True):
    """One job as a producer submits it."""

    data: msgspec.Raw


class JobError(msgspec.Struct, frozen=True):
    """Why a try failed: the exception's type name, its message and the formatted traceback."""

    type: str
    message: str
    traceback: str = ""


class Delivery(msgspec.Struct, frozen=True):
    """One job pushed to a worker under a lease."""

    job: int
    lease: int
    attempt: int
    data: msgspec.Raw


class JobInfo(msgspec.Struct, frozen=True):
    """A job's record as the broker holds it. Times are Unix seconds."""

    id: int
    queue: str
    state: JobState
    attempt: int
    data: msgspec.Raw
    created_at: float
    finished_at: float | None = None
    result: msgspec.Raw = NIL
    error: JobError | None = None
    progress: msgspec.Raw = NIL


class _Message(msgspec.Struct, frozen=True, tag_field="t"):
    """Base of every wire message; ``t`` carries the tag."""


# Client to broker.


class Hello(_Message, tag="hello", frozen=True):
    """First message on every connection."""

    version: int
    client: str = ""


class Add(_Message, tag="add", frozen=True):
    """Add jobs to a queue; replied to with ``added``."""

    req: RequestId
    queue: str
    jobs: list[JobDef]


class Subscribe(_Message, tag="subscribe", frozen=True):
    """Start receiving a queue's jobs, holding at most ``window`` unacknowledged; replied ``ok``."""

    req: RequestId
    queue: str
    window: Window


class SetWindow(_Message, tag="window", frozen=True):
    """Change the credit window of an existing subscription; replied to with ``ok``."""

    req: RequestId
    queue: str
    window: Window


class Ack(_Message, tag="ack", frozen=True):
    """The job under ``lease`` completed with ``result``. No reply."""

    job: int
    lease: int
    result: msgspec.Raw


class Fail(_Message, tag="fail", frozen=True):
    """The try under ``lease`` failed. No reply."""

    job: int
    lease: int
    error: JobError


class Release(_Message, tag="release", frozen=True):
    """Hand the job back unrun; it returns to the head of its queue. No reply."""

    job: int
    lease: int


class Progress(_Message, tag="progress", frozen=True):
    """Record a progress value for the job under ``lease``. No reply."""

    job: int
    lease: int
    progress: msgspec.Raw


class GetJob(_Message, tag="get_job", frozen=True):
    """Read a job; replied to with ``job``."""

    req: RequestId
    job: int


class Wait(_Message, tag="wait", frozen=True):
    """Reply with ``finished`` once the job is completed or failed."""

    req: RequestId
    job: int


class GetCounts(_Message, tag="get_counts", frozen=True):
    """Read a queue's counters; replied to with ``counts``."""

    req: RequestId
    queue: str


# Broker to client.


class Welcome(_Message, tag="welcome", frozen=True):
    """Reply to ``hello``: the broker's version and the largest frame it accepts (bytes)."""

    version: int
    server: str
    max_frame: int


class Ok(_Message, tag="ok", frozen=True):
    """The request ``req`` succeeded."""

    req: RequestId


class Error(_Message, tag="error", frozen=True):
    """The request ``req`` was refused (``req`` is 0 when it could not be read)."""

    req: ErrorRequestId
    code: int
    message: str


class Added(_Message, tag="added", frozen=True):
    """Reply to ``add``: the new job ids, in the order the jobs were given."""

    req: RequestId
    ids: list[int]


class Deliver(_Message, tag="deliver", frozen=True):
    """Jobs pushed to a subscriber of ``queue``."""

    queue: str
    jobs: list[Delivery]


class JobReply(_Message, tag="job", frozen=True):
    """Reply to ``get_job``; ``job`` is nil when no such job is retained."""

    req: RequestId
    job: JobInfo | None


class Finished(_Message, tag="finished", frozen=True):
    """Reply to ``wait``: the job in its final state."""

    req: RequestId
    job: JobInfo


class Counts(_Message, tag="counts", frozen=True):
    """Reply to ``get_counts``."""

    req: RequestId
    waiting: int
    active: int
    delayed: int
    completed: int
    failed: int
    workers: int = 0
    """Subscriptions to the queue right now (connected workers)."""


class Closing(_Message, tag="closing", frozen=True):
    """The broker is shutting down: it pushes nothing more and closes the connection soon."""

    reason: str


ClientMessage = (
    Hello | Add | Subscribe | SetWindow | Ack | Fail | Release | Progress | GetJob | Wait
    | GetCounts
)
"""Everything a client or worker may send."""

BrokerMessage = Welcome | Ok | Error | Added | Deliver | JobReply | Finished | Counts | Closing
"""Everything the broker may send."""
