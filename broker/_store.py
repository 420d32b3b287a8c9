"""Every queue and job of one broker, by name and id, and the reads requests make of them.

``Store`` is the state the rest of the state machine changes (``Queues`` and its parts); reading
it (counts, summaries, pages of jobs, retained jobs) changes nothing.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable
from itertools import islice

from conveyor.protocol import JobState, QueueSummary

from ._clock import Timeline
from ._jobs import ACTIVE, COMPLETED, DELAYED, WAITING, WAITING_CHILDREN, Consumer, Job, Queue

__all__ = ["Store", "summary"]


class Store:
    """Queues by name, jobs by id and by idempotency key, and the counters they share."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        """The clock, and how wall times turn into times on the deadlines (monotonic)."""
        self.queues: dict[str, Queue] = {}
        self.jobs: dict[int, Job] = {}
        self.keys: dict[str, int] = {}
        """Idempotency keys of retained jobs (a key whose TTL ran out stays until its job is
        forgotten or a new job takes it: see ``keyed``)."""
        self.dedup_ends: dict[str, float] = {}
        """When (monotonic seconds) each key of ``keys`` with a ``dedup`` TTL stops
        deduplicating: measured once, when its job took it, so that no step of the wall clock
        ends a TTL early or stretches it."""
        self.last_id = 0
        """The highest job id given out (ids are never reused)."""
        self.live_bytes = 0
        """Estimated size of the live state as a snapshot (bytes): what compaction would keep."""

    def queue(self, name: str) -> Queue:
        """The queue called ``name``, created on first use."""
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = Queue(name)
        return queue

    def claim(self, key: str, job_id: int, until: float | None) -> None:
        """Job ``job_id`` takes the idempotency key ``key``; ``until``: the wall time its
        ``dedup`` TTL ends (None: it has none)."""
        self.keys[key] = job_id
        if until is None:
            self.dedup_ends.pop(key, None)
        else:
            self.dedup_ends[key] = self.timeline.monotonic(until)

    def unclaim(self, key: str) -> None:
        """No job holds the idempotency key ``key`` any more."""
        self.keys.pop(key, None)
        self.dedup_ends.pop(key, None)

    def keyed(self, key: str, now: float) -> Job | None:
        """The retained job whose idempotency key is ``key`` and still deduplicates at wall time
        ``now`` (its ``dedup`` TTL, if any, has not run out), or None: the key is free."""
        job = self.jobs.get(self.keys.get(key, 0))
        if job is None:
            return None
        end = self.dedup_ends.get(key)
        return job if end is None or self.timeline.monotonic(now) < end else None

    def consumer(self, owner: Hashable, queue_name: str) -> Consumer | None:
        """``owner``'s subscription to a queue, if it has one."""
        queue = self.queues.get(queue_name)
        return None if queue is None else queue.consumers.get(owner)

    def finished_jobs(self, queue: Queue, state: JobState) -> list[Job]:
        """A queue's retained completed (or failed) jobs, oldest first."""
        kept = queue.kept_completed if state is COMPLETED else queue.kept_failed
        jobs = [self.jobs[i] for i in kept]
        own = [job for job in queue.kept_own.values() if job.state is state]
        if own:
            # Merged by finish time, the retained ones staying in their order (a parent failed
            # by its child finished at the child's time, after it, with a lower id).
            own.sort(key=_finished)
            jobs = list(heapq.merge(jobs, own, key=_finished))
        return jobs

    def counts(self, queue_name: str) -> dict[str, int]:
        """Jobs waiting, active and delayed now, completed and failed in all, and subscribers."""
        queue = self.queues.get(queue_name)
        if queue is None:
            return dict.fromkeys(("waiting", "active", "delayed", "completed", "failed",
                                  "workers", "waiting_children"), 0)
        return {
            "waiting": len(queue.waiting),
            "active": queue.active,
            "delayed": len(queue.delayed),
            "completed": queue.completed,
            "failed": queue.failed,
            "workers": len(queue.consumers),
            "waiting_children": len(queue.parents),
        }

    def summaries(self, now: float) -> list[QueueSummary]:
        """Every queue, by name: its counts and its rates over the last minute (``now`` on the
        clock the rates were marked with)."""
        return [summary(queue, now)
                for queue in sorted(self.queues.values(), key=lambda queue: queue.name)]

    def list_jobs(self, queue_name: str, state: JobState, offset: int,
                  limit: int) -> tuple[list[Job], int]:
        """A page of a queue's jobs in ``state``, in order, and how many there are in all."""
        queue = self.queues.get(queue_name)
        if queue is None:
            return [], 0
        jobs: Iterable[Job]
        if state is WAITING:
            jobs, total = queue.waiting, len(queue.waiting)
        elif state is DELAYED:
            total = len(queue.delayed)
            # Only the jobs up to the page's end are put in order: a first page of a million
            # delayed jobs costs one pass over them, not a sort of them all.
            end = min(offset + limit, total)
            jobs = heapq.nsmallest(end, queue.delayed.values(), key=_due)
        elif state is WAITING_CHILDREN:
            jobs, total = queue.parents.values(), len(queue.parents)
        elif state is ACTIVE:
            jobs = [job for c in queue.consumers.values() for job in c.held.values()]
            total = queue.active
        else:
            jobs = self.finished_jobs(queue, state)[::-1]
            total = len(jobs)
        # Past the end is empty (islice takes no index past sys.maxsize; offsets may be 2**64).
        return list(islice(jobs, min(offset, total), min(offset + limit, total))), total


def summary(queue: Queue, now: float) -> QueueSummary:
    """A queue's counts and its rates over the last minute (``now`` on the clock the rates were
    marked with)."""
    return QueueSummary(
        name=queue.name, waiting=len(queue.waiting), active=queue.active,
        delayed=len(queue.delayed), completed=queue.completed, failed=queue.failed,
        workers=len(queue.consumers), paused=queue.paused,
        added_rate=queue.added_rate.per_second(now),
        completed_rate=queue.completed_rate.per_second(now),
        failed_rate=queue.failed_rate.per_second(now),
        waiting_children=len(queue.parents))


def _finished(job: Job) -> float:
    return job.finished_at or 0.0


def _due(job: Job) -> tuple[float | None, int]:
    """A delayed job's place in the ``delayed`` listing: by due time, then by id."""
    return job.options.run_at, job.id
