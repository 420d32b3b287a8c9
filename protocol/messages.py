"""Every message on the wire, as frozen tagged msgspec structs.

Each message is a MessagePack map whose ``t`` field names its type. Tags are pinned explicitly so a
class rename never changes the wire; new fields go at the end with defaults and types never change.
Job payloads, results and progress values are ``msgspec.Raw``: already-encoded MessagePack that the
broker stores and forwards without decoding.
"""

from __future__ import annotations

import enum
import sys
from typing import Annotated, Final, Literal

import msgspec

__all__ = [
    "AUTH_MECHANISM",
    "MAX_GROUP",
    "MAX_JOB_NAME",
    "MAX_LIMIT",
    "MAX_LIMIT_PERIOD",
    "MAX_OFFSET",
    "MAX_PAGE",
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "NIL",
    "PROTOCOL_VERSION",
    "Ack",
    "Add",
    "Added",
    "Backoff",
    "BrokerMessage",
    "BrokerStats",
    "Clean",
    "ClientMessage",
    "Closing",
    "Count",
    "Counts",
    "Deliver",
    "Delivery",
    "Drain",
    "Error",
    "Event",
    "Events",
    "Extend",
    "Fail",
    "FindJob",
    "Finished",
    "GetCounts",
    "GetJob",
    "GetJobs",
    "GetQueues",
    "GetStats",
    "HISTOGRAM_BOUNDS",
    "Hello",
    "Histogram",
    "JobDef",
    "JobError",
    "JobInfo",
    "JobReply",
    "JobState",
    "Jobs",
    "Ok",
    "Pause",
    "Progress",
    "Promote",
    "QueueSummary",
    "QueueList",
    "QueueStats",
    "QueueLimits",
    "SetLimits",
    "GetSchedules",
    "RemoveSchedule",
    "Schedule",
    "ScheduleInfo",
    "Schedules",
    "SetSchedule",
    "Throttle",
    "RECENT",
    "Rates",
    "Release",
    "Remove",
    "RetryFailed",
    "SetWindow",
    "Stats",
    "Subscribe",
    "Subscription",
    "Unwait",
    "Wait",
    "Watch",
    "Welcome",
    "WorkerInfo",
]

PROTOCOL_VERSION: Final = 1
"""The version this code speaks. A peer with another version is refused."""

AUTH_MECHANISM: Final = "SCRAM-SHA-256"
"""``Hello.mechanism`` of a login with a user name and secret: the one mechanism spoken."""

NIL: Final = msgspec.Raw(b"\xc0")
"""MessagePack nil as a raw value: the result or progress of a job that has none."""


MAX_JOB_NAME: Final = 128
"""Longest job name, in characters."""
MAX_GROUP: Final = 255
"""Longest group name (``JobDef.group``), in characters."""
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
    WAITING_CHILDREN = "waiting-children"
    """The parent of a flow, waiting for its children to finish."""


JobName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_JOB_NAME)]
"""A job's name: what kind of job it is."""
_FLOAT_MAX: Final = sys.float_info.max
# Every float a client sends is bounded on both sides so that NaN and the infinities fail to
# decode: ``MessageDecoder`` reports them as ``INVALID_ARGUMENT``.
Seconds = Annotated[float, msgspec.Meta(ge=0, le=_FLOAT_MAX)]
"""A duration in seconds: a finite number, 0 or more."""
Positive = Annotated[float, msgspec.Meta(gt=0, le=_FLOAT_MAX)]
"""A duration in seconds: a finite number above zero."""
UnixTime = Annotated[float, msgspec.Meta(ge=-_FLOAT_MAX, le=_FLOAT_MAX)]
"""A time in Unix seconds: any finite number."""
MIN_PRIORITY: Final = -(1 << 31)
MAX_PRIORITY: Final = (1 << 31) - 1
Priority = Annotated[int, msgspec.Meta(ge=MIN_PRIORITY, le=MAX_PRIORITY)]
"""A job's priority: a 32-bit signed integer, higher runs first."""
MAX_OFFSET: Final = (1 << 63) - 1
"""The largest ``get_jobs`` offset (an ``int64``)."""
MAX_PAGE: Final = 10_000
"""The most jobs one ``get_jobs`` asks for."""
MAX_LIMIT: Final = 1_000_000_000
"""The largest rate (starts per period) and concurrency a queue's limits may name."""
MAX_LIMIT_PERIOD: Final = 1e9
"""The longest period of a rate limit, in seconds (about 31 years)."""
LimitCount = Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)]
"""A rate's starts per period, or a concurrency: 1 to ``MAX_LIMIT``."""
LimitPeriod = Annotated[float, msgspec.Meta(gt=0, le=MAX_LIMIT_PERIOD)]
"""A rate limit's period in seconds: above 0, at most ``MAX_LIMIT_PERIOD``."""


class Backoff(msgspec.Struct, frozen=True, omit_defaults=True):
    """How long a failed try waits before the next one.

    ``fixed``: ``delay`` seconds every time. ``exponential``: ``delay * 2 ** (attempt - 1)``
    seconds, at most ``cap``; ``jitter`` (0 to 1) takes up to that fraction off at random.
    """

    type: Literal["fixed", "exponential"]
    delay: Seconds
    cap: Seconds | None = None
    jitter: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0


class JobDef(msgspec.Struct, frozen=True, omit_defaults=True):
    """One job as a producer submits it, with its options (all optional)."""

    data: msgspec.Raw
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] | None = None
    """Idempotency key: adding a key that a retained job has returns that job's id (within its
    ``dedup`` seconds, if it has them)."""
    priority: Priority = 0
    """Higher runs first; equal priorities run in the order added."""
    attempts: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1
    """Tries in all, the first included."""
    backoff: Backoff | None = None
    """Wait between tries; none means at once."""
    timeout: Positive | None = None
    """Seconds one try may run before the worker cancels it."""
    delay: Seconds = 0.0
    """Seconds from now before the job may run."""
    run_at: UnixTime | None = None
    """Unix time before which the job may not run (the later of this and ``delay`` wins)."""
    keep_result: Seconds | None = None
    """Seconds the finished job is retained, instead of the broker's retention."""
    name: JobName | None = None
    """What kind of job this is, for a worker serving several (a task registry's key)."""
    dedup: Seconds | None = None
    """Seconds after the add during which ``id`` deduplicates; after them the key is free and an
    add with it creates a new job (none: for as long as the job is retained)."""
    lifo: bool = False
    """Join the head of its priority's waiting line instead of the tail."""
    group: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_GROUP)] | None = None
    """The group (tenant) the job belongs to: dispatch takes turns across a queue's groups, and
    the queue's per-group limits apply to it (none: the queue's ungrouped jobs)."""


ChildPolicy = Literal["fail", "ignore", "remove"]
"""What a child of a flow that fails for good (or is removed before it finished) does to its
parent: fail it, be ignored by it (the parent runs when its other children are done), or remove
it."""


class FlowJob(msgspec.Struct, frozen=True, omit_defaults=True):
    """One job of a flow (``add_flow``): its queue, its definition, and its parent, the index of
    an earlier job of the same flow (None only for the first job, the flow's root)."""

    queue: str
    job: JobDef
    parent: Annotated[int, msgspec.Meta(ge=0)] | None = None
    on_failure: ChildPolicy = "fail"
    """What this job failing for good does to its parent."""


class JobError(msgspec.Struct, frozen=True):
    """Why a try failed: the exception's type name, its message and the formatted traceback."""

    type: str
    message: str
    traceback: str = ""


class Delivery(msgspec.Struct, frozen=True, omit_defaults=True):
    """One job pushed to a worker under a lease."""

    job: int
    lease: int
    attempt: int
    data: msgspec.Raw
    timeout: float | None = None
    """Seconds this try may run (the job's ``timeout``)."""
    attempts: int = 1
    """Tries the job has in all."""
    name: str | None = None
    """The job's name, when it has one."""
    group: str | None = None
    """The job's group, when it has one."""


class JobInfo(msgspec.Struct, frozen=True, omit_defaults=True):
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
    key: str | None = None
    priority: int = 0
    attempts: int = 1
    run_at: float | None = None
    """When a delayed job becomes waiting."""
    name: str | None = None
    """The job's name, when it has one."""
    parent: int | None = None
    """The job's parent, for a child of a flow."""
    children: int = 0
    """How many children the job has (the parent of a flow)."""
    children_left: int = 0
    """How many of them have not finished yet."""
    group: str | None = None
    """The job's group, when it has one."""


class Event(msgspec.Struct, frozen=True, omit_defaults=True):
    """Something that happened to a job: ``added``, ``active``, ``progress``, ``completed``,
    ``failed``, ``retrying`` or ``delayed``."""

    kind: str
    job: int
    at: float
    attempt: int = 0
    value: msgspec.Raw = NIL
    """The progress value (``progress``) or the result (``completed``)."""
    error: JobError | None = None
    """Why the try failed (``failed``, ``retrying``)."""
    run_at: float | None = None
    """When the job runs next (``delayed``, ``retrying``)."""
    name: str | None = None
    """The job's name, when it has one."""


class _Message(msgspec.Struct, frozen=True, tag_field="t"):
    """Base of every wire message; ``t`` carries the tag."""


# Client to broker.


class Hello(_Message, tag="hello", frozen=True):
    """First message on every connection. ``mechanism`` and ``auth`` start an authentication
    (``AUTH_MECHANISM`` and its client-first-message); without them a broker that requires
    authentication accepts only a client certificate."""

    version: int
    client: str = ""
    mechanism: str = ""
    auth: str = ""
    host: str = ""
    """The host name the client runs on (shown in statistics)."""
    pid: int = 0
    """The client's process id (shown in statistics)."""


class Authenticate(_Message, tag="authenticate", frozen=True):
    """The client's answer to ``challenge``: its SCRAM client-final-message."""

    data: str


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
    lease: Positive = 30.0
    """Seconds the broker waits without hearing from the subscriber before taking its jobs."""


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
    """The try under ``lease`` failed. No reply.

    The job is tried again while it has attempts left, unless ``retry`` is false; ``delay``
    overrides its backoff for this retry.
    """

    job: int
    lease: int
    error: JobError
    retry: bool = True
    delay: Seconds | None = None


class Extend(_Message, tag="extend", frozen=True):
    """The subscriber to ``queue`` is alive: its leases run for another lease period. No reply."""

    queue: str


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


class Unwait(_Message, tag="unwait", frozen=True):
    """Withdraw the pending ``wait`` whose request id is ``wait``, on job ``job``: it will get no
    reply. No reply (a notification); nothing happens if no such wait is pending."""

    job: int
    wait: RequestId


class GetCounts(_Message, tag="get_counts", frozen=True):
    """Read a queue's counters; replied to with ``counts``."""

    req: RequestId
    queue: str


class GetJobs(_Message, tag="get_jobs", frozen=True):
    """List a queue's jobs in one state, in order; replied to with ``jobs``."""

    req: RequestId
    queue: str
    state: JobState
    offset: Annotated[int, msgspec.Meta(ge=0, le=MAX_OFFSET)] = 0
    limit: Annotated[int, msgspec.Meta(ge=0, le=MAX_PAGE)] = 100


class Promote(_Message, tag="promote", frozen=True):
    """Make a delayed job waiting now; replied to with ``ok``."""

    req: RequestId
    job: int


class AddFlow(_Message, tag="add_flow", frozen=True):
    """Add a flow: a parent and its children (nested to any depth, on any queues), in one
    record; replied to with ``added``, the ids in the order the jobs were given."""

    req: RequestId
    jobs: Annotated[list[FlowJob], msgspec.Meta(min_length=1)]


class GetChildren(_Message, tag="get_children", frozen=True):
    """The outcomes of a job's children that finished, in the order they finished, skipping the
    first ``offset``; replied to with ``children``."""

    req: RequestId
    job: int
    offset: Annotated[int, msgspec.Meta(ge=0, le=MAX_OFFSET)] = 0


class Remove(_Message, tag="remove", frozen=True):
    """Remove a job that is not active; replied to with ``ok``."""

    req: RequestId
    job: int


class Pause(_Message, tag="pause", frozen=True):
    """Stop (``paused`` true) or restart deliveries from a queue; replied to with ``ok``."""

    req: RequestId
    queue: str
    paused: bool = True


class QueueLimits(msgspec.Struct, frozen=True, omit_defaults=True):
    """How fast a queue's jobs may start: at most ``rate`` starts in any ``per`` seconds (evenly
    spaced, one every ``per / rate`` seconds), and at most ``concurrency`` of its jobs active at
    once across all workers. None: no such limit. The ``group_`` limits apply to each group of
    the queue on its own (at most ``group_rate`` starts of one group in any ``group_per`` seconds,
    at most ``group_concurrency`` of one group's jobs active at once), on top of the queue's."""

    rate: LimitCount | None = None
    per: LimitPeriod = 1.0
    concurrency: LimitCount | None = None
    group_concurrency: LimitCount | None = None
    group_rate: LimitCount | None = None
    group_per: LimitPeriod = 1.0


class RetryFailed(_Message, tag="retry_failed", frozen=True):
    """Put failed jobs back in line (one job, or every retained one of a queue); ``count``."""

    req: RequestId
    queue: str | None = None
    job: int | None = None


class Drain(_Message, tag="drain", frozen=True):
    """Remove every waiting and delayed job of a queue; replied to with ``count``."""

    req: RequestId
    queue: str


class Clean(_Message, tag="clean", frozen=True):
    """Remove a queue's completed or failed jobs finished over ``older_than`` seconds ago."""

    req: RequestId
    queue: str
    state: JobState
    older_than: Seconds = 0.0


class GetQueues(_Message, tag="get_queues", frozen=True):
    """List the queues the broker knows, with their counts, by name from the first after
    ``after``; replied to with ``queues``."""

    req: RequestId
    after: str = ""


class Watch(_Message, tag="watch", frozen=True):
    """Receive a queue's events (``watching`` false: stop); replied to with ``ok``."""

    req: RequestId
    queue: str
    watching: bool = True


class FindJob(_Message, tag="find_job", frozen=True):
    """Read the job that has the idempotency key ``key``; replied to with ``job`` (nil when no
    retained job has that key, or the user may not read its queue)."""

    req: RequestId
    key: str


class GetStats(_Message, tag="get_stats", frozen=True):
    """Read the broker's statistics; replied to with ``stats``. ``queue`` narrows the queues
    (and the workers) to that one queue; without it, every queue the user may read, a page at a
    time: the queues whose names sort after ``after`` (the last queue of the page before)."""

    req: RequestId
    queue: str | None = None
    after: str = ""


class SetLimits(_Message, tag="set_limits", frozen=True):
    """Replace a queue's limits (``QueueLimits()`` clears them); replied to with ``ok``."""

    req: RequestId
    queue: str
    limits: QueueLimits = QueueLimits()


class Throttle(_Message, tag="throttle", frozen=True):
    """Hand the job back unrun, its try given back, and start no job of its queue for
    ``seconds`` (the service it calls is rate limiting); no reply."""

    job: int
    lease: int
    seconds: LimitPeriod


# Broker to client.


class Challenge(_Message, tag="challenge", frozen=True):
    """The broker's reply to a ``hello`` that starts an authentication: its SCRAM
    server-first-message (the salt, the iteration count and the nonce)."""

    data: str


class Welcome(_Message, tag="welcome", frozen=True):
    """Reply to ``hello`` (or ``authenticate``): the broker's version and the largest frame it
    accepts (bytes); after an authentication, the user and the SCRAM server-final-message that
    proves the broker knows the user's secret."""

    version: int
    server: str
    max_frame: int
    user: str = ""
    auth: str = ""


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
    waiting_children: int = 0
    """Parents of flows waiting for their children."""


class Jobs(_Message, tag="jobs", frozen=True):
    """Reply to ``get_jobs``: a page of jobs and how many are in that state in all."""

    req: RequestId
    jobs: list[JobInfo]
    total: int


class Count(_Message, tag="count", frozen=True):
    """Reply to ``retry_failed``, ``drain`` and ``clean``: how many jobs it affected."""

    req: RequestId
    count: int


class QueueSummary(msgspec.Struct, frozen=True):
    """One queue in a ``queues`` reply: its counts (as ``counts``) and recent rates (jobs a second
    over the last minute)."""

    name: str
    waiting: int
    active: int
    delayed: int
    completed: int
    failed: int
    workers: int
    paused: bool
    added_rate: float = 0.0
    completed_rate: float = 0.0
    failed_rate: float = 0.0
    waiting_children: int = 0


class QueueList(_Message, tag="queues", frozen=True):
    """Reply to ``get_queues``: queues by name, as many as fit in a frame; ``more`` when the page
    is not the last."""

    req: RequestId
    queues: list[QueueSummary]
    more: bool = False


HISTOGRAM_BOUNDS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                           5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
"""Upper bounds (seconds) of the buckets of every duration histogram, before the last bucket
(everything longer)."""
RECENT: Final = 300.0
"""Seconds a histogram's ``recent`` counts look back over."""


class Rates(msgspec.Struct, frozen=True):
    """Jobs a second over the last 1, 5 and 15 minutes."""

    m1: float = 0.0
    m5: float = 0.0
    m15: float = 0.0


class Histogram(msgspec.Struct, frozen=True):
    """Durations (seconds) counted in buckets: ``counts[i]`` durations longer than
    ``bounds[i - 1]`` and at most ``bounds[i]``; the last count, those longer than the last
    bound. ``counts`` and ``sum`` cover everything since the broker started, ``recent`` the
    same buckets over the last ``RECENT`` seconds (about)."""

    bounds: list[float]
    counts: list[int]
    sum: float = 0.0
    recent: list[int] = []

    @property
    def count(self) -> int:
        """Durations counted since the broker started."""
        return sum(self.counts)

    def quantile(self, q: float, *, recent: bool = True) -> float | None:
        """The ``q`` quantile (0 to 1) as the upper bound of the bucket it falls in (or the
        last bound, for the overflow bucket); None when nothing was counted."""
        counts = self.recent if recent else self.counts
        total = sum(counts)
        if not total or not self.bounds:
            return None
        rank = q * total
        seen = 0
        for index, count in enumerate(counts):
            seen += count
            if seen >= rank and count:
                return self.bounds[min(index, len(self.bounds) - 1)]
        return self.bounds[-1]


class QueueStats(msgspec.Struct, frozen=True):
    """One queue in a ``stats`` reply: its counts (as ``counts``), what it did since the broker
    started, its rates, and how long its jobs waited before they started and then ran."""

    name: str
    waiting: int
    active: int
    delayed: int
    completed: int
    """Jobs completed since the queue was created (as ``counts``)."""
    failed: int
    """Jobs failed since the queue was created."""
    workers: int
    paused: bool
    added: int = 0
    """Jobs added since the broker started."""
    started: int = 0
    """Tries started (jobs delivered) since the broker started."""
    retried: int = 0
    """Failed tries followed by another since the broker started."""
    added_rate: Rates = Rates()
    started_rate: Rates = Rates()
    completed_rate: Rates = Rates()
    failed_rate: Rates = Rates()
    retried_rate: Rates = Rates()
    wait_time: Histogram | None = None
    """Seconds from waiting to started, per try."""
    run_time: Histogram | None = None
    """Seconds from started to completed or failed, per try."""
    limits: QueueLimits | None = None
    """The queue's limits (``set_limits``); nil when it has none."""
    waiting_children: int = 0
    """Parents of flows waiting for their children (as ``counts``)."""
    schedules: int = 0
    """Schedules that add jobs to the queue (``set_schedule``)."""
    groups: int = 0
    """Groups with waiting or active jobs."""


class Subscription(msgspec.Struct, frozen=True):
    """One queue a worker takes jobs from: its credit window and the jobs it holds now."""

    queue: str
    window: int
    held: int


class WorkerInfo(msgspec.Struct, frozen=True):
    """A connection subscribed to at least one queue. Times are Unix seconds."""

    id: int
    """The connection's number on this broker."""
    name: str
    """What the client called itself (``hello.client``)."""
    host: str
    pid: int
    address: str
    """The peer's address, ``HOST:PORT``."""
    user: str
    """The user it logged in as ("" without authentication)."""
    connected_at: float
    last_heard: float
    """When the broker last received anything from it."""
    subscriptions: list[Subscription]


class BrokerStats(msgspec.Struct, frozen=True):
    """The broker process: what it runs, since when, and how its log is doing. Sizes in bytes,
    times in Unix seconds."""

    version: str
    started_at: float
    uptime: float
    """Seconds since the broker started."""
    connections: int
    queues: int
    jobs: int
    """Jobs held in memory, in every state."""
    memory: int
    """The process's resident memory."""
    log_bytes: int = 0
    """The log's size on disk (0 without a log)."""
    live_bytes: int = 0
    """The estimated size of the live state: what a compaction would keep."""
    compactions: int = 0
    """Compactions since the broker started."""
    fsync_time: Histogram | None = None
    """Seconds each fsync of the log took."""


class Stats(_Message, tag="stats", frozen=True):
    """Reply to ``get_stats``: one page of queues (the workers come with the first)."""

    req: RequestId
    broker: BrokerStats
    queues: list[QueueStats]
    workers: list[WorkerInfo]
    more: bool = False
    """Queues past this page remain: ask again with ``after`` the last queue's name."""


class Events(_Message, tag="events", frozen=True):
    """Events of a watched queue, in the order they happened."""

    queue: str
    events: list[Event]


class Closing(_Message, tag="closing", frozen=True):
    """The broker is shutting down: it pushes nothing more and closes the connection soon."""

    reason: str


ScheduleId = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
"""A schedule's id: the key ``set_schedule`` upserts by."""


class Schedule(msgspec.Struct, frozen=True, omit_defaults=True):
    """A repeatable job: the broker adds a job made from the template to ``queue`` at every due
    time, ``every`` seconds or on the ``cron`` expression (in the IANA time zone ``tz``); exactly
    one of the two is given."""

    id: ScheduleId
    queue: str
    data: msgspec.Raw
    name: JobName | None = None
    priority: Priority = 0
    attempts: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1
    backoff: Backoff | None = None
    timeout: Positive | None = None
    every: Annotated[float, msgspec.Meta(ge=0.001, le=_FLOAT_MAX)] | None = None
    """Seconds between due times, the first one ``every`` seconds after the schedule is set."""
    cron: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] | None = None
    """A five-field cron expression (minute hour day month weekday)."""
    tz: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "UTC"
    """The time zone ``cron`` is read in."""
    missed: Literal["once", "skip"] = "once"
    """Due times that passed while the broker was down: one job at start (``once``) or none."""


class ScheduleInfo(msgspec.Struct, frozen=True):
    """One schedule in a ``schedules`` reply, with its next due time (Unix seconds)."""

    schedule: Schedule
    next_run: float


class SetSchedule(_Message, tag="set_schedule", frozen=True):
    """Create or replace the schedule of the same id; replied to with ``ok``."""

    req: RequestId
    schedule: Schedule


class RemoveSchedule(_Message, tag="remove_schedule", frozen=True):
    """Remove a schedule (``UNKNOWN_JOB`` if there is none of that id); replied to with ``ok``."""

    req: RequestId
    id: str


class GetSchedules(_Message, tag="get_schedules", frozen=True):
    """List the schedules of the queues the user may read, by id, from the first id after
    ``after``; replied to with ``schedules``."""

    req: RequestId
    after: str = ""


class Schedules(_Message, tag="schedules", frozen=True):
    """Reply to ``get_schedules``, by id, as many as fit in a frame; ``more`` when the page is not
    the last."""

    req: RequestId
    schedules: list[ScheduleInfo]
    more: bool = False


class ChildResult(msgspec.Struct, frozen=True, omit_defaults=True):
    """A finished child of a flow: its result, or the error it failed with (or was removed
    with)."""

    id: int
    result: msgspec.Raw = NIL
    error: JobError | None = None


class Children(_Message, tag="children", frozen=True):
    """Reply to ``get_children``: a page of outcomes; ``more`` when the page is not the
    last."""

    req: RequestId
    children: list[ChildResult]
    more: bool = False


ClientMessage = (
    Hello | Add | Subscribe | SetWindow | Ack | Fail | Release | Progress | GetJob | Wait
    | GetCounts | Extend | GetJobs | Promote | Remove | Pause | RetryFailed | Drain | Clean | Watch
    | GetQueues | Unwait | Authenticate | FindJob | GetStats | SetLimits | Throttle | SetSchedule
    | RemoveSchedule | GetSchedules | AddFlow | GetChildren
)
"""Everything a client or worker may send."""

BrokerMessage = (
    Welcome | Ok | Error | Added | Deliver | JobReply | Finished | Counts | Closing | Jobs | Count
    | Events | QueueList | Challenge | Stats | Schedules | Children
)
"""Everything the broker may send."""
