"""The job model: jobs and their options, subscriptions and queues (state only; ``Queues`` moves
them)."""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING, Final

import msgspec

from conveyor.protocol import (
    NIL,
    Backoff,
    ChildPolicy,
    ChildResult,
    JobDef,
    JobError,
    JobInfo,
    JobState,
    QueueLimits,
)

from ._durations import Durations
from ._limits import Limiter
from ._rates import Rate
from ._waiting import WaitingLine

if TYPE_CHECKING:
    from ._groups import GroupedLine

__all__ = [
    "ACTIVE",
    "COMPLETED",
    "DEFAULT_KEEP",
    "DEFAULT_LEASE",
    "DEFAULT_MAX_REDELIVERIES",
    "DEFAULT_OPTIONS",
    "DELAYED",
    "FAILED",
    "JOB_OVERHEAD",
    "MAX_DELAY",
    "NO_LIMITS",
    "WAITING",
    "WAITING_CHILDREN",
    "Consumer",
    "Flow",
    "Job",
    "JobOptions",
    "Queue",
    "backoff_delay",
    "clamp_delay",
    "job_options",
    "join",
    "with_run_at",
]

DEFAULT_MAX_REDELIVERIES: Final = 5
"""How many times a job may go back to its queue because its worker was lost."""
DEFAULT_KEEP: Final = 10_000
"""How many completed (and, separately, failed) jobs each queue retains."""
DEFAULT_LEASE: Final = 30.0
"""Seconds a subscriber may stay silent while holding jobs before they are taken back."""
JOB_OVERHEAD: Final = 64
"""Bytes a job's record takes in a snapshot beyond its payload and result (an estimate)."""
MAX_DELAY: Final = 1e9
"""Longest wait the broker schedules (seconds, about 31 years): a longer delay, backoff or a
later ``run_at`` is cut to it, so every time it computes is a finite float."""

WAITING: Final = JobState.WAITING
WAITING_CHILDREN: Final = JobState.WAITING_CHILDREN
DELAYED: Final = JobState.DELAYED
ACTIVE: Final = JobState.ACTIVE
COMPLETED: Final = JobState.COMPLETED
FAILED: Final = JobState.FAILED


class JobOptions(msgspec.Struct, frozen=True, array_like=True):
    """A job's options as the broker keeps them, and as the log records them.

    ``run_at`` is absolute (the producer's delay already applied); it is None once the job is due.
    ``dedup_until`` is absolute too (the producer's ``dedup`` added to the time of the add).
    Array-like, because it is written into log records (``JobsAddedWithOptions``, ``JobSnapshot``):
    fields are only ever added at the end, with defaults.
    """

    key: str | None = None
    priority: int = 0
    attempts: int = 1
    backoff: Backoff | None = None
    timeout: float | None = None
    run_at: float | None = None
    keep_result: float | None = None
    name: str | None = None
    dedup_until: float | None = None
    """Wall time from which ``key`` no longer deduplicates (none: never)."""
    lifo: bool = False
    """The job joins the head of its priority's waiting line, not the tail."""
    parent: int | None = None
    """The job's parent, for a child of a flow."""
    children: int = 0
    """How many children the job has (the parent of a flow): it waits for them."""
    on_failure: ChildPolicy = "fail"
    """What the job failing for good (or removed unfinished) does to its parent."""
    group: str | None = None
    """The group the job belongs to (``_groups``)."""


DEFAULT_OPTIONS: Final = JobOptions()
NO_LIMITS: Final = QueueLimits()


class Job:
    """A job's record."""

    __slots__ = (
        "attempt",
        "created_at",
        "data",
        "drops",
        "error",
        "finished_at",
        "flow",
        "group",
        "holder",
        "id",
        "lease",
        "options",
        "pending",
        "priority",
        "progress",
        "queue",
        "ready",
        "result",
        "started",
        "state",
    )

    def __init__(self, job_id: int, queue: str, data: msgspec.Raw, created_at: float,
                 options: JobOptions = DEFAULT_OPTIONS) -> None:
        self.id = job_id
        self.queue = queue
        # Decoded, ``data`` is a view of its whole frame (or of a chunk of the log, on replay):
        # the job keeps a copy of its own bytes, so one job cannot keep the rest alive.
        self.data = data.copy()
        self.created_at = created_at
        self.options = options
        self.priority = options.priority
        self.group = options.group
        self.state = DELAYED if options.run_at is not None else WAITING
        self.pending = False
        """Created but not yet in line (its record is not durable yet)."""
        self.attempt = 0
        """The number of the current (or last) try; a release or a lost worker gives it back."""
        self.drops = 0
        """Times the job was active on a worker that was lost (dropped or silent)."""
        self.lease = 0
        self.holder: Consumer | None = None
        self.result = NIL
        self.error: JobError | None = None
        self.progress = NIL
        self.finished_at: float | None = None
        self.ready = 0.0
        """When (monotonic seconds) the current try became waiting: its wait counts from
        there (statistics)."""
        self.started = 0.0
        """When (monotonic seconds) the current try was delivered (statistics)."""
        self.flow: Flow | None = None
        """For the parent of a flow: where its children stand."""

    @property
    def run_at(self) -> float | None:
        """When a delayed job becomes waiting."""
        return self.options.run_at if self.state is DELAYED else None

    def info(self) -> JobInfo:
        """The job as the wire describes it."""
        options = self.options
        return JobInfo(
            id=self.id,
            queue=self.queue,
            state=self.state,
            attempt=self.attempt,
            data=self.data,
            created_at=self.created_at,
            finished_at=self.finished_at,
            result=self.result,
            error=self.error,
            progress=self.progress,
            key=options.key,
            priority=options.priority,
            attempts=options.attempts,
            run_at=self.run_at,
            name=options.name,
            parent=options.parent,
            children=options.children,
            children_left=0 if self.flow is None else self.flow.left,
            group=options.group,
        )


class Flow:
    """Where the children of a flow's parent stand."""

    __slots__ = ("children", "done")

    def __init__(self, children: int, done: Iterable[ChildResult] = ()) -> None:
        self.children = children
        self.done: dict[int, ChildResult] = {child.id: child for child in done}
        """The outcomes of the children that finished, by child id."""

    @property
    def left(self) -> int:
        """Children not finished yet."""
        return self.children - len(self.done)

    def size(self) -> int:
        """The bytes of results and errors it holds (live-size estimate)."""
        return sum(len(child.result) for child in self.done.values())


class Consumer:
    """One owner's (a connection's) subscription to one queue."""

    __slots__ = ("deadline", "held", "id", "lease", "owner", "queue", "served", "silent",
                 "window")

    def __init__(self, consumer_id: int, owner: Hashable, queue: Queue, window: int, served: int,
                 lease: float = DEFAULT_LEASE) -> None:
        self.id = consumer_id
        self.owner = owner
        self.queue = queue
        self.window = window
        self.lease = lease
        self.held: dict[int, Job] = {}
        """Jobs leased to this consumer, in delivery order."""
        self.served = served
        """Sequence number of the last job given to it: the round-robin tie-break."""
        self.deadline = 0.0
        """When its jobs are taken back unless it is heard from."""
        self.silent = False
        """Its lease ran out: it gets nothing more until it is heard from."""

    @property
    def free(self) -> int:
        """Slots open for more jobs."""
        return 0 if self.silent else self.window - len(self.held)


class Queue:
    """One named queue: its waiting line, delayed jobs, subscribers and counters."""

    __slots__ = ("active", "added", "added_rate", "completed", "completed_rate", "consumers",
                 "delayed", "failed", "failed_rate", "group_limits", "kept_completed",
                 "kept_failed", "kept_own", "limiter", "limits", "name", "parents", "paused",
                 "pending", "retried", "retried_rate", "run_time", "started", "started_rate",
                 "wait_time", "waiting")

    def __init__(self, name: str) -> None:
        self.name = name
        self.waiting: WaitingLine[Job] | GroupedLine = WaitingLine()
        """Its waiting jobs: a ``GroupedLine`` while jobs of groups wait or run."""
        self.delayed: dict[int, Job] = {}
        self.parents: dict[int, Job] = {}
        """Parents of flows waiting for their children (``WAITING_CHILDREN``)."""
        self.consumers: dict[Hashable, Consumer] = {}
        self.paused = False
        self.limiter: Limiter | None = None
        """The queue's limits, or its ``throttle`` hold (None: it has neither)."""
        self.limits = NO_LIMITS
        """The limits as set (``set_limits``), the per-group ones included."""
        self.group_limits: QueueLimits | None = None
        """The limits of each group, as a queue's (``rate``, ``per``, ``concurrency``); None:
        the groups have none."""
        self.active = 0
        self.pending = 0
        """Jobs created and not yet in line (their record is not durable yet)."""
        self.completed = 0
        """Jobs completed since the queue was created."""
        self.failed = 0
        """Jobs failed since the queue was created."""
        self.kept_completed: deque[int] = deque()
        self.kept_failed: deque[int] = deque()
        """Retained finished jobs, oldest first (within the count and age limits)."""
        self.kept_own: dict[int, Job] = {}
        """Retained finished jobs with a ``keep_result`` of their own."""
        self.added_rate = Rate()
        self.completed_rate = Rate()
        self.failed_rate = Rate()
        """Jobs added, completed and failed over the last minutes (not logged)."""
        # The statistics below count from the broker's start (not logged); with statistics
        # off, only ``added`` is counted.
        self.added = 0
        """Jobs added."""
        self.started = 0
        """Tries started (jobs delivered)."""
        self.retried = 0
        """Failed tries followed by another."""
        self.started_rate = Rate()
        self.retried_rate = Rate()
        self.wait_time = Durations()
        """Seconds from waiting to delivered, per try."""
        self.run_time = Durations()
        """Seconds from delivered to acknowledged or failed, per try."""

    def unused(self) -> bool:
        """Whether nothing would be lost if the queue were forgotten: it holds no job in any
        state, nobody is subscribed, it is not paused, it has no limits and it never finished a
        job (its totals are 0). Whether it is watched is the caller's to check."""
        return (not self.waiting and not self.delayed and not self.parents and not self.consumers
                and not self.pending
                and not self.active and not self.paused and self.limiter is None
                and self.group_limits is None
                and not self.completed
                and not self.failed and not self.kept_completed and not self.kept_failed
                and not self.kept_own)


def job_options(job: JobDef, now: float) -> JobOptions:
    """A job's options as kept and logged: the delay turned into an absolute ``run_at``, at
    most ``MAX_DELAY`` from ``now``."""
    run_at = now + clamp_delay(job.delay)
    if job.run_at is not None and job.run_at > run_at:  # (a NaN is never later)
        run_at = min(job.run_at, now + MAX_DELAY)
    due = run_at if run_at > now else None
    if (job.id is None and job.priority == 0 and job.attempts == 1 and job.backoff is None
            and job.timeout is None and due is None and job.keep_result is None
            and job.name is None and not job.lifo and job.group is None):
        return DEFAULT_OPTIONS
    # A TTL only matters with a key; kept absolute, so that it holds across restarts.
    until = now + clamp_delay(job.dedup) if job.dedup is not None and job.id is not None else None
    return JobOptions(key=job.id, priority=job.priority, attempts=job.attempts,
                      backoff=job.backoff, timeout=job.timeout, run_at=due,
                      keep_result=job.keep_result, name=job.name, dedup_until=until,
                      lifo=job.lifo, group=job.group)


def join(line: WaitingLine[Job] | GroupedLine, job: Job) -> None:
    """Put a job that becomes waiting (added, due, retried) in line: at the tail of its
    priority, or at the head when it is LIFO."""
    if job.options.lifo:
        line.appendleft(job)
    else:
        line.append(job)


def with_run_at(options: JobOptions, *, run_at: float | None) -> JobOptions:
    if options.run_at == run_at:
        return options
    return msgspec.structs.replace(options, run_at=run_at)


def clamp_delay(seconds: float) -> float:
    """``seconds`` within 0 and ``MAX_DELAY`` (NaN counts as 0)."""
    if seconds <= MAX_DELAY:
        return seconds if seconds > 0.0 else 0.0
    return MAX_DELAY if seconds > MAX_DELAY else 0.0


def backoff_delay(backoff: Backoff | None, attempt: int, rng: random.Random) -> float:
    """Seconds to wait before the try after ``attempt``, at most ``MAX_DELAY``."""
    if backoff is None:
        return 0.0
    if backoff.type == "fixed":
        wait = backoff.delay
    else:
        try:
            # ldexp(d, n) is d * 2 ** n, exactly; 2.0 ** n alone overflows past n = 1023.
            wait = math.ldexp(backoff.delay, max(attempt - 1, 0))
        except OverflowError:
            wait = MAX_DELAY
        if backoff.cap is not None:
            wait = min(wait, backoff.cap)
    if backoff.jitter:
        wait *= 1.0 - backoff.jitter * rng.random()
    return clamp_delay(wait)
