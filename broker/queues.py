"""The queue state machine: jobs, subscriptions, credit, dispatch, retries and deadlines.

Plain synchronous code with no I/O; the current time is passed in. The server feeds it requests,
calls ``dispatch`` once per loop pass (after the log write) to learn which jobs go to which
subscriber, and calls ``tick`` when ``next_deadline`` comes.

Dispatch rule: work-conserving and spreading. No job waits while a subscriber of its queue has a
free slot, and each job goes to the subscriber with the most free slots, ties broken round-robin
(the one served least recently first). Within a queue, higher priority first, then first in
first out.

Deadlines (delayed jobs coming due, subscribers' leases, retention) are kept by id in
``Deadlines`` and served by ``tick``.
"""

from __future__ import annotations

import contextlib
import heapq
import random
from collections.abc import Hashable, Iterable, Sequence
from itertools import islice
from typing import cast

import msgspec

from conveyor.protocol import NIL, Event, JobDef, JobError, JobState, QueueSummary

from ._deadlines import Deadlines, Kind
from .jobs import (
    ACTIVE,
    COMPLETED,
    DEFAULT_KEEP,
    DEFAULT_LEASE,
    DEFAULT_MAX_REDELIVERIES,
    DEFAULT_OPTIONS,
    DELAYED,
    FAILED,
    JOB_OVERHEAD,
    WAITING,
    Consumer,
    Job,
    JobOptions,
    Queue,
    StateError,
    backoff_delay,
    job_options,
    with_run_at,
)
from .records import (
    JobFinished,
    JobPromoted,
    JobRequeued,
    JobRetrying,
    JobsAdded,
    JobsAddedWithOptions,
    JobsRemoved,
    JobsRetried,
    QueuePaused,
    Record,
)

__all__ = [
    "DEFAULT_KEEP",
    "DEFAULT_LEASE",
    "DEFAULT_MAX_REDELIVERIES",
    "Consumer",
    "Job",
    "Queue",
    "Queues",
    "StateError",
]


class Queues:
    """Every queue, job and subscription of one broker."""

    def __init__(
        self,
        *,
        max_redeliveries: int = DEFAULT_MAX_REDELIVERIES,
        keep_completed: int = DEFAULT_KEEP,
        keep_failed: int = DEFAULT_KEEP,
        keep_age: float | None = None,
        logged: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.records: list[Record] | None = [] if logged else None
        """Log records of the changes made since the caller last cleared it (None: no log)."""
        self.events: list[tuple[str, Event]] = []
        """Events of watched queues since the caller last cleared it."""
        self.watched: set[str] = set()
        """Queues whose events are collected."""
        self.live_bytes = 0
        """Estimated size of the live state as a snapshot (bytes): what compaction would keep."""
        self.max_redeliveries = max_redeliveries
        self.keep_completed = keep_completed
        self.keep_failed = keep_failed
        self.keep_age = keep_age
        """Seconds finished jobs are retained (None: no age limit)."""
        self.rng = rng or random.Random()
        self.queues: dict[str, Queue] = {}
        self.jobs: dict[int, Job] = {}
        self.keys: dict[str, int] = {}
        """Idempotency keys of retained jobs."""
        self.last_id = 0
        self._last_lease = 0
        self._served = 0
        self._owners: dict[Hashable, list[Consumer]] = {}
        self._consumers: dict[int, Consumer] = {}
        """Every subscription, by id."""
        self._last_consumer = 0
        self._ready: set[Queue] = set()
        self.deadlines = Deadlines()
        """What falls due when: delayed jobs, leases, retention."""
        self._leases = self.deadlines.live(Kind.LEASE)
        self.finished: list[Job] = []
        """Jobs that reached completed or failed since the caller last cleared this list."""
        self.removed: list[int] = []
        """Jobs removed before they finished since the caller last cleared this list."""

    def queue(self, name: str) -> Queue:
        """The queue called ``name``, created on first use."""
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = Queue(name)
        return queue

    # Producers.

    def add(self, queue_name: str, payloads: Sequence[msgspec.Raw], now: float) -> list[int]:
        """Append plain jobs to a queue; return their new ids in order."""
        jobs = self.create(queue_name, payloads, now)
        self.enqueue(jobs)
        return [job.id for job in jobs]

    def create(self, queue_name: str, payloads: Sequence[msgspec.Raw | JobDef],
               now: float) -> list[Job]:
        """Create jobs without putting them in line yet; return one job per payload.

        A payload whose idempotency key a retained job already has gets that job (nothing is
        created for it). The server calls ``enqueue`` once the record is durable, so nothing is
        dispatched before it would survive a crash.
        """
        queue = self.queue(queue_name)
        jobs = self.jobs
        out: list[Job] = []
        created: list[Job] = []
        options: list[JobOptions] = []
        plain = True
        job_id = self.last_id
        for payload in payloads:
            if isinstance(payload, JobDef):
                data = payload.data
                option = job_options(payload, now)
                if option.key is not None:
                    existing = self.keys.get(option.key)
                    if existing is not None:
                        out.append(jobs[existing])
                        continue
                plain = plain and option is DEFAULT_OPTIONS
            else:
                data = payload
                option = DEFAULT_OPTIONS
            job_id += 1
            job = Job(job_id, queue_name, data, now, option)
            job.pending = True
            jobs[job_id] = job
            if option.key is not None:
                self.keys[option.key] = job_id
            out.append(job)
            created.append(job)
            options.append(option)
            self.live_bytes += len(data) + JOB_OVERHEAD
        if not created:
            return out
        queue.added_rate.mark(len(created), now)
        self.last_id = job_id
        if self.records is not None:
            first_id = created[0].id
            datas = [job.data for job in created]
            self.records.append(
                JobsAdded(queue=queue_name, first_id=first_id, created_at=now, jobs=datas)
                if plain else
                JobsAddedWithOptions(queue=queue_name, first_id=first_id, created_at=now,
                                     jobs=datas, options=options))
        return out

    def enqueue(self, jobs: Sequence[Job]) -> None:
        """Put jobs made by ``create`` in line (the delayed ones in the deadline heap)."""
        fresh = []
        for job in jobs:
            # A job appears more than once when one bulk add repeats its idempotency key.
            if job.pending:
                job.pending = False
                fresh.append(job)
        if not fresh:
            return
        queue = self.queues[fresh[0].queue]
        watched = queue.name in self.watched
        waiting = []
        for job in fresh:
            if job.state is DELAYED:
                self.delay_job(queue, job)
            else:
                waiting.append(job)
            if watched:
                self._event(queue, "added", job, job.created_at)
                if job.state is DELAYED:
                    self._event(queue, "delayed", job, job.created_at, run_at=job.run_at)
        if waiting:
            queue.waiting.extend(waiting)
            self._wake(queue)

    def discard(self, jobs: Sequence[Job]) -> None:
        """Forget jobs made by ``create`` whose record could not be written (ids stay used)."""
        for job in jobs:
            if job.pending:
                self.forget(job)

    # Subscribers.

    def subscribe(self, owner: Hashable, queue_name: str, window: int,
                  lease: float = DEFAULT_LEASE) -> Consumer:
        """Subscribe ``owner`` to a queue with a credit window (or change the window)."""
        queue = self.queue(queue_name)
        consumer = queue.consumers.get(owner)
        if consumer is None:
            self._served += 1
            self._last_consumer += 1
            consumer = Consumer(self._last_consumer, owner, queue, window, self._served, lease)
            queue.consumers[owner] = consumer
            self._consumers[consumer.id] = consumer
            self._owners.setdefault(owner, []).append(consumer)
        consumer.window = window
        consumer.lease = lease
        if consumer.free > 0:
            self._wake(queue)
        return consumer

    def consumer(self, owner: Hashable, queue_name: str) -> Consumer | None:
        """``owner``'s subscription to a queue, if it has one."""
        queue = self.queues.get(queue_name)
        return None if queue is None else queue.consumers.get(owner)

    def extend(self, owner: Hashable, queue_name: str, now: float) -> None:
        """``owner`` is alive: its subscription's leases run for another lease period."""
        consumer = self.consumer(owner, queue_name)
        if consumer is not None:
            self._heard(consumer, now)

    def ack(self, owner: Hashable, job_id: int, lease: int, result: msgspec.Raw,
            now: float) -> Job | None:
        """Complete the job under ``lease``; None (and no change) if the lease is not held."""
        job = self._take(owner, job_id, lease, now)
        if job is None:
            return None
        job.result = result
        job.error = None
        self.finish(job, COMPLETED, now)
        return job

    def fail(self, owner: Hashable, job_id: int, lease: int, error: JobError, now: float, *,
             retry: bool = True, delay: float | None = None) -> Job | None:
        """Fail the try under ``lease``: retry while attempts are left (and ``retry``), after
        ``delay`` or the job's backoff; else the job fails. None if the lease is not held."""
        job = self._take(owner, job_id, lease, now)
        if job is None:
            return None
        job.error = error
        if retry and job.attempt < job.options.attempts:
            wait = delay if delay is not None else backoff_delay(job.options.backoff, job.attempt,
                                                            self.rng)
            self._retry(job, error, now, wait)
        else:
            self.finish(job, FAILED, now)
        return job

    def release(self, owner: Hashable, job_id: int, lease: int, now: float = 0.0) -> Job | None:
        """Put the job under ``lease`` back at the head of its queue, its try given back."""
        job = self._take(owner, job_id, lease, now)
        if job is None:
            return None
        job.attempt -= 1
        self._requeue([job])
        return job

    def progress(self, owner: Hashable, job_id: int, lease: int, value: msgspec.Raw,
                 now: float = 0.0) -> bool:
        """Record progress for the job under ``lease``; False if the lease is not held."""
        job = self.jobs.get(job_id)
        if job is None or job.lease != lease or job.holder is None or job.holder.owner != owner:
            return False
        job.progress = value
        self._heard(job.holder, now)
        if job.queue in self.watched:
            self._event(job.holder.queue, "progress", job, now, value=value)
        return True

    def drop(self, owner: Hashable, now: float) -> list[Job]:
        """Forget every subscription of ``owner`` (its connection is gone).

        Its jobs go back to the head of their queues, in delivery order. A job lost with its
        worker more than ``max_redeliveries`` times fails instead, so a job that kills its
        workers cannot loop forever. Returns the jobs that went back.
        """
        requeued: list[Job] = []
        for consumer in self._owners.pop(owner, ()):
            del consumer.queue.consumers[owner]
            del self._consumers[consumer.id]
            self.deadlines.cancel(Kind.LEASE, consumer.id)
            requeued += self._take_back(consumer, now)
        return requeued

    # Dispatch.

    def dispatch(self, now: float = 0.0) -> list[tuple[Consumer, list[Job]]]:
        """Lease waiting jobs to subscribers with free slots; return who gets what.

        ``now`` starts the lease of a subscriber that held nothing.
        """
        out: list[tuple[Consumer, list[Job]]] = []
        ready = self._ready
        while ready:
            queue = ready.pop()
            waiting = queue.waiting
            if not waiting or queue.paused:
                continue
            heap = [(-c.free, c.served, c) for c in queue.consumers.values() if c.free > 0]
            if not heap:
                continue
            heapq.heapify(heap)
            given: dict[Consumer, list[Job]] = {}
            served = self._served
            lease = self._last_lease
            line = waiting.first()
            taken = 0
            while heap:
                if not line:
                    waiting.taken(line, taken)
                    taken = 0
                    if not waiting:
                        break
                    line = waiting.first()
                negative_free, _, consumer = heap[0]
                job = line.popleft()
                taken += 1
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
            if taken:
                waiting.taken(line, taken)
            self._served = served
            self._last_lease = lease
            queue.active += sum(len(jobs) for jobs in given.values())
            watched = queue.name in self.watched
            for consumer, jobs in given.items():
                if len(consumer.held) == len(jobs):
                    # It held nothing: its lease starts now.
                    self._heard(consumer, now)
                if watched:
                    for job in jobs:
                        self._event(queue, "active", job, now)
            out += given.items()
        return out

    # Deadlines.

    def next_deadline(self) -> float | None:
        """When ``tick`` next has something to do (Unix seconds), or None."""
        return self.deadlines.next()

    def tick(self, now: float) -> None:
        """Do what is due by ``now``: delayed jobs join their queues, silent subscribers lose
        their jobs, finished jobs past their retention are forgotten."""
        deadlines = self.deadlines
        jobs = self.jobs
        while (due := deadlines.pop(now)) is not None:
            kind, key = due
            if kind is Kind.DUE:
                job = jobs.get(cast(int, key))
                if job is not None and job.state is DELAYED and not job.pending:
                    self._promote(job)
            elif kind is Kind.LEASE:
                consumer = self._consumers.get(cast(int, key))
                if consumer is not None:
                    self._lease_due(consumer, now)
            elif kind is Kind.EXPIRE:
                job = jobs.get(cast(int, key))
                if job is not None and job.finished_at is not None:
                    self._remove([job])
            else:
                queue = self.queues.get(cast(str, key))
                if queue is not None:
                    self._age_out(queue, now)

    # Queue control.

    def promote(self, job_id: int) -> Job | None:
        """Make a delayed job waiting now; None when there is no such job."""
        job = self.jobs.get(job_id)
        if job is None:
            return None
        if job.state is not DELAYED or job.pending:
            raise StateError(f"job {job_id} is {job.state.value}, not delayed")
        self._promote(job)
        return job

    def remove(self, job_id: int) -> Job | None:
        """Remove a job that is not active; None when there is no such job."""
        job = self.jobs.get(job_id)
        if job is None:
            return None
        if job.state is ACTIVE or job.pending:
            raise StateError(f"job {job_id} is active and cannot be removed")
        self._remove([job])
        return job

    def pause(self, queue_name: str, paused: bool) -> None:
        """Stop (or restart) deliveries from a queue; it accepts jobs either way."""
        queue = self.queue(queue_name)
        if queue.paused != paused:
            queue.paused = paused
            if self.records is not None:
                self.records.append(QueuePaused(queue=queue_name, paused=paused))
            self._wake(queue)

    def retry_failed(self, queue_name: str | None = None, job_id: int | None = None) -> int:
        """Put failed jobs (one, or every retained one of a queue) back at the tail of their
        queues with their attempts renewed; return how many."""
        if job_id is not None:
            job = self.jobs.get(job_id)
            if job is None:
                return 0
            if job.state is not FAILED:
                raise StateError(f"job {job_id} is {job.state.value}, not failed")
            jobs = [job]
        else:
            queue = self.queues.get(queue_name or "")
            if queue is None:
                return 0
            jobs = [self.jobs[i] for i in queue.kept_failed]
            jobs += [job for job in queue.kept_own.values() if job.state is FAILED]
        self._retry_failed(jobs)
        return len(jobs)

    def drain(self, queue_name: str) -> int:
        """Remove every waiting and delayed job of a queue; return how many."""
        queue = self.queues.get(queue_name)
        if queue is None:
            return 0
        jobs = queue.waiting.clear()
        jobs += queue.delayed.values()
        queue.delayed.clear()
        self._remove(jobs, unlined=True)
        return len(jobs)

    def clean(self, queue_name: str, state: JobState, older_than: float, now: float) -> int:
        """Remove a queue's completed or failed jobs finished at least ``older_than`` seconds
        ago; return how many."""
        if state not in (COMPLETED, FAILED):
            raise StateError(f"clean removes completed or failed jobs, not {state.value} ones")
        queue = self.queues.get(queue_name)
        if queue is None:
            return 0
        cutoff = now - older_than
        jobs = [job for job in self.finished_jobs(queue, state) if job.finished_at is not None
                and job.finished_at <= cutoff]
        self._remove(jobs)
        return len(jobs)

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
            "delayed": len(queue.delayed),
            "completed": queue.completed,
            "failed": queue.failed,
            "workers": len(queue.consumers),
        }

    def summaries(self, now: float) -> list[QueueSummary]:
        """Every queue, by name: its counts and its rates over the last minute."""
        return [
            QueueSummary(
                name=queue.name, waiting=len(queue.waiting), active=queue.active,
                delayed=len(queue.delayed), completed=queue.completed, failed=queue.failed,
                workers=len(queue.consumers), paused=queue.paused,
                added_rate=queue.added_rate.per_second(now),
                completed_rate=queue.completed_rate.per_second(now),
                failed_rate=queue.failed_rate.per_second(now))
            for queue in sorted(self.queues.values(), key=lambda queue: queue.name)
        ]

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
            jobs = sorted(queue.delayed.values(), key=lambda job: (job.options.run_at, job.id))
            total = len(queue.delayed)
        elif state is ACTIVE:
            jobs = [job for c in queue.consumers.values() for job in c.held.values()]
            total = queue.active
        else:
            jobs = self.finished_jobs(queue, state)[::-1]
            total = len(jobs)
        return list(islice(jobs, offset, offset + limit)), total

    def finished_jobs(self, queue: Queue, state: JobState) -> list[Job]:
        """A queue's retained completed (or failed) jobs, oldest first."""
        kept = queue.kept_completed if state is COMPLETED else queue.kept_failed
        jobs = [self.jobs[i] for i in kept]
        own = [job for job in queue.kept_own.values() if job.state is state]
        if own:
            jobs = sorted(jobs + own, key=lambda job: (job.finished_at, job.id))
        return jobs

    # Internals: moving jobs.

    def _take(self, owner: Hashable, job_id: int, lease: int, now: float) -> Job | None:
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
        self._heard(consumer, now)
        self._wake(queue)
        return job

    def _requeue(self, jobs: Sequence[Job]) -> None:
        """Put active jobs back at the head of their queue, in order."""
        if not jobs:
            return
        queue = self.queues[jobs[0].queue]
        records = self.records
        for job in reversed(jobs):
            job.state = WAITING
            queue.waiting.appendleft(job)
            if records is not None:
                records.append(JobRequeued(id=job.id, drops=job.drops))
        self._wake(queue)

    def _take_back(self, consumer: Consumer, now: float) -> list[Job]:
        """The consumer's worker is lost: its jobs go back, or fail after too many losses."""
        queue = consumer.queue
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
                    message=f"the worker running it was lost {job.drops} times "
                            f"(limit {self.max_redeliveries} redeliveries)",
                )
                self.finish(job, FAILED, now)
            else:
                job.attempt -= 1
                back.append(job)
        self._requeue(back)
        return back

    def _retry(self, job: Job, error: JobError, now: float, wait: float) -> None:
        queue = self.queues[job.queue]
        run_at = now + wait if wait > 0 else None
        if self.records is not None:
            self.records.append(JobRetrying(id=job.id, attempt=job.attempt, at=now, error=error,
                                            run_at=run_at))
        if queue.name in self.watched:
            self._event(queue, "retrying", job, now, error=error, run_at=run_at)
        if run_at is None:
            job.state = WAITING
            queue.waiting.append(job)
            self._wake(queue)
        else:
            job.options = with_run_at(job.options, run_at=run_at)
            job.state = DELAYED
            self.delay_job(queue, job)
            if queue.name in self.watched:
                self._event(queue, "delayed", job, now, run_at=run_at)

    def delay_job(self, queue: Queue, job: Job) -> None:
        """Hold a delayed job until its ``run_at``."""
        run_at = job.options.run_at
        assert run_at is not None
        queue.delayed[job.id] = job
        self.deadlines.set(Kind.DUE, job.id, run_at)

    def _promote(self, job: Job) -> None:
        queue = self.queues[job.queue]
        del queue.delayed[job.id]
        self.deadlines.cancel(Kind.DUE, job.id)
        job.options = with_run_at(job.options, run_at=None)
        job.state = WAITING
        queue.waiting.append(job)
        if self.records is not None:
            self.records.append(JobPromoted(id=job.id))
        self._wake(queue)

    def _retry_failed(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        for job in jobs:
            queue = self.queues[job.queue]
            self.renew(job)
            queue.waiting.append(job)
            self._wake(queue)
        if self.records is not None:
            self.records.append(JobsRetried(ids=[job.id for job in jobs]))

    def finish(self, job: Job, state: JobState, now: float, *, record: bool = True) -> None:
        """Move ``job`` to completed or failed (its result or error already set)."""
        job.state = state
        job.finished_at = now
        self.live_bytes += len(job.result)
        queue = self.queues[job.queue]
        if record and self.records is not None:
            self.records.append(JobFinished(id=job.id, attempt=job.attempt, at=now,
                                            result=job.result, error=job.error))
        if queue.name in self.watched:
            if state is COMPLETED:
                self._event(queue, "completed", job, now, value=job.result)
            else:
                self._event(queue, "failed", job, now, error=job.error)
        if state is COMPLETED:
            queue.completed += 1
            queue.completed_rate.mark(1, now)
        else:
            queue.failed += 1
            queue.failed_rate.mark(1, now)
        self.finished.append(job)
        keep = job.options.keep_result
        if keep is not None:
            if keep <= 0:
                self.forget(job)
                return
            queue.kept_own[job.id] = job
            self.expire_at(job, now + keep)
            return
        kept, limit = ((queue.kept_completed, self.keep_completed) if state is COMPLETED
                       else (queue.kept_failed, self.keep_failed))
        if self.keep_age is not None and not queue.kept_completed and not queue.kept_failed:
            self.deadlines.set(Kind.AGE, queue.name, now + self.keep_age)
        kept.append(job.id)
        while len(kept) > limit:
            self.forget(self.jobs[kept.popleft()])

    def _remove(self, jobs: Sequence[Job], *, unlined: bool = False) -> None:
        """Remove jobs that are not active (``unlined``: already out of their lines)."""
        if not jobs:
            return
        for job in jobs:
            queue = self.queues[job.queue]
            if job.finished_at is None:
                self.removed.append(job.id)
            if job.state is WAITING and not unlined:
                queue.waiting.remove(job)
            else:
                self.detach(job)
            self.forget(job)
        if self.records is not None:
            self.records.append(JobsRemoved(ids=[job.id for job in jobs]))

    def detach(self, job: Job) -> None:
        """Take a delayed or finished job out of its queue's delayed set or retention lists."""
        queue = self.queues[job.queue]
        if job.state is DELAYED:
            queue.delayed.pop(job.id, None)
            self.deadlines.cancel(Kind.DUE, job.id)
        elif job.finished_at is not None and queue.kept_own.pop(job.id, None) is not None:
            self.deadlines.cancel(Kind.EXPIRE, job.id)
        elif job.finished_at is not None:
            kept = queue.kept_completed if job.state is COMPLETED else queue.kept_failed
            # Absent only when replaying a salvaged log that lost the record of its finish.
            with contextlib.suppress(ValueError):
                kept.remove(job.id)

    def renew(self, job: Job) -> None:
        """Make a failed job waiting again with its attempts renewed; the caller puts it in line."""
        self.detach(job)
        self.live_bytes -= len(job.result)  # counted while finished, as ``finish`` does
        job.state = WAITING
        job.attempt = 0
        job.error = None
        job.result = NIL
        job.finished_at = None

    def forget(self, job: Job) -> None:
        """Drop every trace of ``job`` (it is in no line and no retention list)."""
        del self.jobs[job.id]
        if job.state is DELAYED:
            self.deadlines.cancel(Kind.DUE, job.id)
        elif job.options.keep_result is not None:
            self.deadlines.cancel(Kind.EXPIRE, job.id)
        key = job.options.key
        if key is not None and self.keys.get(key) == job.id:
            del self.keys[key]
        self.live_bytes -= len(job.data) + JOB_OVERHEAD + (
            len(job.result) if job.finished_at is not None else 0)

    def _age_out(self, queue: Queue, now: float) -> None:
        keep_age = self.keep_age
        if keep_age is None:
            return
        cutoff = now - keep_age
        gone: list[Job] = []
        oldest: float | None = None
        for kept in (queue.kept_completed, queue.kept_failed):
            while kept:
                job = self.jobs[kept[0]]
                assert job.finished_at is not None
                if job.finished_at > cutoff:
                    oldest = job.finished_at if oldest is None else min(oldest, job.finished_at)
                    break
                kept.popleft()
                gone.append(job)
        for job in gone:
            self.forget(job)
        if gone and self.records is not None:
            self.records.append(JobsRemoved(ids=[job.id for job in gone]))
        if oldest is not None:
            self.deadlines.set(Kind.AGE, queue.name, oldest + keep_age)

    # Internals: subscribers.

    def _heard(self, consumer: Consumer, now: float) -> None:
        consumer.deadline = now + consumer.lease
        if consumer.silent:
            consumer.silent = False
            self._wake(consumer.queue)
        if consumer.held and consumer.id not in self._leases:
            self.deadlines.set(Kind.LEASE, consumer.id, consumer.deadline)

    def _lease_due(self, consumer: Consumer, now: float) -> None:
        if not consumer.held:
            return
        if consumer.deadline > now:
            self.deadlines.set(Kind.LEASE, consumer.id, consumer.deadline)
            return
        # Silent for a whole lease (a blocked loop, a stopped process): its jobs go elsewhere,
        # and it gets no more until it is heard from.
        consumer.silent = True
        self._take_back(consumer, now)

    def expire_at(self, job: Job, when: float) -> None:
        """Forget finished ``job`` at ``when`` (its own ``keep_result``)."""
        self.deadlines.set(Kind.EXPIRE, job.id, when)

    def age_retained(self, queue: Queue) -> None:
        """Start retention by age for jobs retained without ``finish`` (restored on start)."""
        if self.keep_age is None:
            return
        oldest = [self.jobs[kept[0]].finished_at for kept in (queue.kept_completed,
                                                              queue.kept_failed) if kept]
        times = [when for when in oldest if when is not None]
        if times:
            self.deadlines.set(Kind.AGE, queue.name, min(times) + self.keep_age)

    def _wake(self, queue: Queue) -> None:
        if queue.waiting and queue.consumers:
            self._ready.add(queue)

    def _event(self, queue: Queue, kind: str, job: Job, now: float, *,
               value: msgspec.Raw = NIL, error: JobError | None = None,
               run_at: float | None = None) -> None:
        self.events.append((queue.name, Event(kind=kind, job=job.id, at=now, attempt=job.attempt,
                                              value=value, error=error, run_at=run_at,
                                              name=job.options.name)))
