"""The queue state machine: jobs, subscriptions, credit and dispatch.

Plain synchronous code with no I/O; the current time is passed in. The server feeds it requests and
calls ``dispatch`` once per loop pass (after the log write, once durability lands) to learn which
jobs go to which subscriber.

Dispatch rule: work-conserving and spreading. No job waits while a subscriber of its queue has a
free slot, and each job goes to the subscriber with the most free slots, ties broken round-robin
(the one served least recently first).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Hashable, Sequence
from typing import Final

import msgspec

from protocol import NIL, JobError, JobInfo, JobState

from .records import JobFinished, JobRequeued, JobsAdded, Record

__all__ = ["DEFAULT_KEEP", "DEFAULT_MAX_REDELIVERIES", "Consumer", "Job", "Queue", "Queues"]

DEFAULT_MAX_REDELIVERIES: Final = 5
"""How many times a job may go back to its queue because its worker's connection dropped."""
DEFAULT_KEEP: Final = 10_000
"""How many completed (and, separately, failed) jobs each queue retains."""
JOB_OVERHEAD: Final = 64
"""Bytes a job's record takes in a snapshot beyond its payload and result (an estimate)."""

WAITING: Final = JobState.WAITING
ACTIVE: Final = JobState.ACTIVE
COMPLETED: Final = JobState.COMPLETED
FAILED: Final = JobState.FAILED


class Job:
    """A job's record."""

    __slots__ = (
        "attempt",
        "created_at",
        "data",
        "drops",
        "error",
        "finished_at",
        "holder",
        "id",
        "lease",
        "progress",
        "queue",
        "result",
        "state",
    )

    def __init__(self, job_id: int, queue: str, data: msgspec.Raw, created_at: float) -> None:
        self.id = job_id
        self.queue = queue
        self.data = data
        self.created_at = created_at
        self.state = WAITING
        self.attempt = 0
        """The number of the current (or last) try; a release or a dropped worker gives it back."""
        self.drops = 0
        """Times the job was active on a worker whose connection dropped."""
        self.lease = 0
        self.holder: Consumer | None = None
        self.result = NIL
        self.error: JobError | None = None
        self.progress = NIL
        self.finished_at: float | None = None

    def info(self) -> JobInfo:
        """The job as the wire describes it."""
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
        )


class Consumer:
    """One owner's (a connection's) subscription to one queue."""

    __slots__ = ("held", "owner", "queue", "served", "window")

    def __init__(self, owner: Hashable, queue: Queue, window: int, served: int) -> None:
        self.owner = owner
        self.queue = queue
        self.window = window
        self.held: dict[int, Job] = {}
        """Jobs leased to this consumer, in delivery order."""
        self.served = served
        """Sequence number of the last job given to it: the round-robin tie-break."""

    @property
    def free(self) -> int:
        """Slots open for more jobs."""
        return self.window - len(self.held)


class Queue:
    """One named queue: its waiting line, subscribers and counters."""

    __slots__ = ("active", "completed", "consumers", "failed", "kept_completed", "kept_failed",
                 "name", "waiting")

    def __init__(self, name: str) -> None:
        self.name = name
        self.waiting: deque[Job] = deque()
        self.consumers: dict[Hashable, Consumer] = {}
        self.active = 0
        self.completed = 0
        """Jobs completed since the queue was created."""
        self.failed = 0
        """Jobs failed since the queue was created."""
        self.kept_completed: deque[int] = deque()
        self.kept_failed: deque[int] = deque()


class Queues:
    """Every queue, job and subscription of one broker."""

    def __init__(
        self,
        *,
        max_redeliveries: int = DEFAULT_MAX_REDELIVERIES,
        keep_completed: int = DEFAULT_KEEP,
        keep_failed: int = DEFAULT_KEEP,
        logged: bool = False,
    ) -> None:
        self.records: list[Record] | None = [] if logged else None
        """Log records of the changes made since the caller last cleared it (None: no log)."""
        self.live_bytes = 0
        """Estimated size of the live state as a snapshot (bytes): what compaction would keep."""
        self.max_redeliveries = max_redeliveries
        self.keep_completed = keep_completed
        self.keep_failed = keep_failed
        self.queues: dict[str, Queue] = {}
        self.jobs: dict[int, Job] = {}
        self.last_id = 0
        self._last_lease = 0
        self._served = 0
        self._owners: dict[Hashable, list[Consumer]] = {}
        self._ready: set[Queue] = set()
        self.finished: list[Job] = []
        """Jobs that reached completed or failed since the caller last cleared this list."""

    def queue(self, name: str) -> Queue:
        """The queue called ``name``, created on first use."""
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = Queue(name)
        return queue

    # Producers.

    def add(self, queue_name: str, payloads: Sequence[msgspec.Raw], now: float) -> list[int]:
        """Append jobs to a queue; return their new ids in order."""
        jobs = self.create(queue_name, payloads, now)
        self.enqueue(jobs)
        return [job.id for job in jobs]

    def create(self, queue_name: str, payloads: Sequence[msgspec.Raw], now: float) -> list[Job]:
        """Create jobs (ids given, record made) without putting them in line yet.

        The server calls ``enqueue`` once their record is durable, so nothing is dispatched
        before it would survive a crash.
        """
        self.queue(queue_name)
        jobs = self.jobs
        first_id = self.last_id + 1
        created = [Job(job_id, queue_name, data, now)
                   for job_id, data in enumerate(payloads, first_id)]
        for job in created:
            jobs[job.id] = job
        self.last_id += len(created)
        self.live_bytes += sum(len(data) for data in payloads) + JOB_OVERHEAD * len(created)
        if self.records is not None and created:
            self.records.append(JobsAdded(queue=queue_name, first_id=first_id, created_at=now,
                                          jobs=list(payloads)))
        return created

    def enqueue(self, jobs: Sequence[Job]) -> None:
        """Put jobs made by ``create`` at the tail of their queue."""
        if not jobs:
            return
        queue = self.queues[jobs[0].queue]
        queue.waiting.extend(jobs)
        if queue.consumers:
            self._ready.add(queue)

    def discard(self, jobs: Sequence[Job]) -> None:
        """Forget jobs made by ``create`` whose record could not be written (ids stay used)."""
        for job in jobs:
            del self.jobs[job.id]
            self.live_bytes -= len(job.data) + JOB_OVERHEAD

    # Subscribers.

    def subscribe(self, owner: Hashable, queue_name: str, window: int) -> Consumer:
        """Subscribe ``owner`` to a queue with a credit window (or change the window)."""
        queue = self.queue(queue_name)
        consumer = queue.consumers.get(owner)
        if consumer is None:
            self._served += 1
            consumer = Consumer(owner, queue, window, self._served)
            queue.consumers[owner] = consumer
            self._owners.setdefault(owner, []).append(consumer)
        consumer.window = window
        if consumer.free > 0 and queue.waiting:
            self._ready.add(queue)
        return consumer

    def consumer(self, owner: Hashable, queue_name: str) -> Consumer | None:
        """``owner``'s subscription to a queue, if it has one."""
        queue = self.queues.get(queue_name)
        return None if queue is None else queue.consumers.get(owner)

    def ack(self, owner: Hashable, job_id: int, lease: int, result: msgspec.Raw,
            now: float) -> Job | None:
        """Complete the job under ``lease``; None (and no change) if the lease is not held."""
        job = self._take(owner, job_id, lease)
        if job is None:
            return None
        job.result = result
        self.finish(job, COMPLETED, now)
        return job

    def fail(self, owner: Hashable, job_id: int, lease: int, error: JobError,
             now: float) -> Job | None:
        """Fail the try under ``lease``; None (and no change) if the lease is not held."""
        job = self._take(owner, job_id, lease)
        if job is None:
            return None
        job.error = error
        self.finish(job, FAILED, now)
        return job

    def release(self, owner: Hashable, job_id: int, lease: int) -> Job | None:
        """Put the job under ``lease`` back at the head of its queue, its try given back."""
        job = self._take(owner, job_id, lease)
        if job is None:
            return None
        job.attempt -= 1
        self._requeue([job])
        return job

    def progress(self, owner: Hashable, job_id: int, lease: int, value: msgspec.Raw) -> bool:
        """Record progress for the job under ``lease``; False if the lease is not held."""
        job = self.jobs.get(job_id)
        if job is None or job.lease != lease or job.holder is None or job.holder.owner != owner:
            return False
        job.progress = value
        return True

    def drop(self, owner: Hashable, now: float) -> list[Job]:
        """Forget every subscription of ``owner`` (its connection is gone).

        Its jobs go back to the head of their queues, in delivery order. A job dropped more than
        ``max_redeliveries`` times fails instead, so a job that kills its workers cannot loop
        forever. Returns the jobs that went back.
        """
        requeued: list[Job] = []
        for consumer in self._owners.pop(owner, ()):
            queue = consumer.queue
            del queue.consumers[owner]
            jobs = list(consumer.held.values())
            consumer.held.clear()
            queue.active -= len(jobs)
            back = []
            for job in jobs:
                job.holder = None
                job.lease = 0
                job.drops += 1
                if job.drops > self.max_redeliveries:
                    job.error = JobError(
                        type="WorkerLost",
                        message=f"the connection of the worker running it dropped {job.drops} "
                        f"times (limit {self.max_redeliveries} redeliveries)",
                    )
                    self.finish(job, FAILED, now)
                else:
                    job.attempt -= 1
                    back.append(job)
            self._requeue(back)
            requeued += back
        return requeued

    # Dispatch.

    def dispatch(self) -> list[tuple[Consumer, list[Job]]]:
        """Lease waiting jobs to subscribers with free slots; return who gets what."""
        out: list[tuple[Consumer, list[Job]]] = []
        ready = self._ready
        while ready:
            queue = ready.pop()
            waiting = queue.waiting
            if not waiting:
                continue
            heap = [(-c.free, c.served, c) for c in queue.consumers.values() if c.free > 0]
            if not heap:
                continue
            heapq.heapify(heap)
            given: dict[Consumer, list[Job]] = {}
            served = self._served
            lease = self._last_lease
            while heap and waiting:
                negative_free, _, consumer = heap[0]
                job = waiting.popleft()
                lease += 1
                served += 1
                job.state = ACTIVE
                job.attempt += 1
                job.lease = lease
                job.holder = consumer
                consumer.held[job.id] = job
                consumer.served = served
                batch = given.get(consumer)
                if batch is None:
                    batch = given[consumer] = []
                batch.append(job)
                if negative_free < -1:
                    heapq.heapreplace(heap, (negative_free + 1, served, consumer))
                else:
                    heapq.heappop(heap)
            self._served = served
            self._last_lease = lease
            queue.active += sum(len(jobs) for jobs in given.values())
            out += given.items()
        return out

    # Reading.

    def counts(self, queue_name: str) -> dict[str, int]:
        """Jobs waiting, active and delayed now, completed and failed in all, and subscribers."""
        queue = self.queues.get(queue_name)
        if queue is None:
            return dict.fromkeys(("waiting", "active", "delayed", "completed", "failed",
                                  "workers"), 0)
        return {
            "waiting": len(queue.waiting),
            "active": queue.active,
            "delayed": 0,
            "completed": queue.completed,
            "failed": queue.failed,
            "workers": len(queue.consumers),
        }

    # Internals.

    def _take(self, owner: Hashable, job_id: int, lease: int) -> Job | None:
        job = self.jobs.get(job_id)
        if job is None or job.lease != lease or lease == 0:
            return None
        consumer = job.holder
        if consumer is None or consumer.owner != owner:
            return None
        del consumer.held[job_id]
        job.holder = None
        job.lease = 0
        queue = consumer.queue
        queue.active -= 1
        if queue.waiting:
            self._ready.add(queue)
        return job

    def _requeue(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        queue = self.queues[jobs[0].queue]
        records = self.records
        for job in reversed(jobs):
            job.state = WAITING
            queue.waiting.appendleft(job)
            if records is not None:
                records.append(JobRequeued(id=job.id, drops=job.drops))
        if queue.consumers:
            self._ready.add(queue)

    def finish(self, job: Job, state: JobState, now: float, *, record: bool = True) -> None:
        """Move ``job`` to completed or failed (its result or error already set)."""
        job.state = state
        job.finished_at = now
        self.live_bytes += len(job.result)
        if record and self.records is not None:
            self.records.append(JobFinished(id=job.id, attempt=job.attempt, at=now,
                                            result=job.result, error=job.error))
        queue = self.queues[job.queue]
        if state is COMPLETED:
            queue.completed += 1
            kept, limit = queue.kept_completed, self.keep_completed
        else:
            queue.failed += 1
            kept, limit = queue.kept_failed, self.keep_failed
        kept.append(job.id)
        while len(kept) > limit:
            gone = self.jobs.pop(kept.popleft())
            self.live_bytes -= len(gone.data) + len(gone.result) + JOB_OVERHEAD
        self.finished.append(job)
