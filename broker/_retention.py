"""Retention: finishing jobs, how long finished jobs are kept, and forgetting jobs.

A finished job (completed or failed) is retained so ``get_job`` and ``wait`` can read it: within
a count per queue (``keep_completed``, ``keep_failed``, the oldest going first), and, with
``keep_age``, for that many seconds after it finished. A job with its own ``keep_result`` is kept
for exactly that long instead (0: not at all). Jobs are also forgotten on request (``remove``,
``drain``, ``clean``). Forgetting a job drops every trace of it: its record, its idempotency key,
its deadlines and its share of the live-size estimate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

from conveyor.protocol import NIL, JobState

from ._clock import Timeline
from ._deadlines import Deadlines, Kind
from ._jobs import (
    COMPLETED,
    DEFAULT_KEEP,
    DEFAULT_OPTIONS,
    DELAYED,
    JOB_OVERHEAD,
    WAITING,
    WAITING_CHILDREN,
    Job,
    Queue,
)
from ._outbox import Output
from ._records import JobFinished, JobsRemoved
from ._store import Store

__all__ = ["Retention"]


class Retention:
    """Finished jobs of one broker: their counters, retention lists and forgetting."""

    __slots__ = ("_deadlines", "_output", "_store", "_timeline", "child_ended", "keep_age",
                 "keep_completed", "keep_failed")

    def __init__(self, store: Store, output: Output, deadlines: Deadlines, timeline: Timeline, *,
                 keep_completed: int = DEFAULT_KEEP, keep_failed: int = DEFAULT_KEEP,
                 keep_age: float | None = None) -> None:
        self._store = store
        self._output = output
        self._deadlines = deadlines
        self._timeline = timeline
        self.keep_completed = keep_completed
        self.keep_failed = keep_failed
        self.keep_age = keep_age
        """Seconds finished jobs are retained (None: no age limit)."""
        self.child_ended: Callable[[Job, float], None] | None = None
        """Told when a child of a flow completes, fails for good or is removed unfinished
        (``Flows.finished``); not while replaying."""

    def finish(self, job: Job, state: JobState, now: float, *, record: bool = True) -> None:
        """Move ``job`` to completed or failed (its result or error already set); the parent
        of a child of a flow takes note (after the child's own retention, as replay does).

        ``record=False`` when replaying the log: nothing is logged, there is no waiter to tell,
        and the parent's note has a record of its own.
        """
        self._finish(job, state, now, record=record)
        if record and job.options.parent is not None and self.child_ended is not None:
            self.child_ended(job, now)

    def _finish(self, job: Job, state: JobState, now: float, *, record: bool) -> None:
        job.state = state
        job.finished_at = now
        store = self._store
        store.live_bytes += len(job.result)
        queue = store.queues[job.queue]
        output = self._output
        if record:
            if output.logged:
                output.records.append(JobFinished(id=job.id, attempt=job.attempt, at=now,
                                                  result=job.result, error=job.error))
            output.finished.append(job)
        if queue.name in output.watched:
            if state is COMPLETED:
                output.event(queue.name, "completed", job, now, value=job.result)
            else:
                output.event(queue.name, "failed", job, now, error=job.error)
        if state is COMPLETED:
            queue.completed += 1
            rate = queue.completed_rate
        else:
            queue.failed += 1
            rate = queue.failed_rate
        # A pass finishes its jobs at one time: counted without a call but for the first.
        if rate.at == now:
            rate.pending += 1
        else:
            rate.begin(now, now + self._timeline.offset)
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
            self._age_at(queue, now + self.keep_age)
        kept.append(job.id)
        jobs = store.jobs
        while len(kept) > limit:
            self.forget(jobs[kept.popleft()])

    def detach(self, job: Job) -> None:
        """Take a delayed or finished job out of its queue's delayed set or retention lists."""
        queue = self._store.queues[job.queue]
        if job.state is DELAYED:
            queue.delayed.pop(job.id, None)
            self._deadlines.cancel(Kind.DUE, job.id)
        elif job.state is WAITING_CHILDREN:
            queue.parents.pop(job.id, None)
        elif job.finished_at is not None and queue.kept_own.pop(job.id, None) is not None:
            self._deadlines.cancel(Kind.EXPIRE, job.id)
        elif job.finished_at is not None:
            kept = queue.kept_completed if job.state is COMPLETED else queue.kept_failed
            # Absent only when replaying a salvaged log that lost the record of its finish.
            with contextlib.suppress(ValueError):
                kept.remove(job.id)

    def renew(self, job: Job) -> None:
        """Make a failed job waiting again with its attempts renewed; the caller puts it in line."""
        self.detach(job)
        self._store.live_bytes -= len(job.result)  # counted while finished, as ``finish`` does
        job.state = WAITING
        job.attempt = 0
        job.error = None
        job.result = NIL
        job.finished_at = None

    def forget(self, job: Job) -> None:
        """Drop every trace of ``job`` (it is in no line and no retention list)."""
        store = self._store
        del store.jobs[job.id]
        options = job.options
        if options is not DEFAULT_OPTIONS:  # only options can give a job a deadline
            if job.state is DELAYED:
                self._deadlines.cancel(Kind.DUE, job.id)
            elif options.keep_result is not None:
                self._deadlines.cancel(Kind.EXPIRE, job.id)
        key = options.key
        if key is not None and store.keys.get(key) == job.id:
            store.unclaim(key)
        store.live_bytes -= len(job.data) + JOB_OVERHEAD + (
            len(job.result) if job.finished_at is not None else 0)
        if job.flow is not None:
            store.live_bytes -= job.flow.size()

    def remove(self, jobs: Sequence[Job], *, unlined: bool = False, now: float = 0.0) -> None:
        """Remove jobs that are not active (``unlined``: already out of their lines). The
        parent of a child of a flow removed before it finished takes note at ``now``."""
        if not jobs:
            return
        output = self._output
        queues = self._store.queues
        orphaned = []
        for job in jobs:
            if job.finished_at is None:
                output.removed.append(job.id)
                if job.options.parent is not None:
                    orphaned.append(job)
            if job.state is WAITING and not unlined:
                queues[job.queue].waiting.remove(job)
            else:
                self.detach(job)
            self.forget(job)
        if output.logged:
            output.records.append(JobsRemoved(ids=[job.id for job in jobs]))
        if orphaned and self.child_ended is not None:
            for job in orphaned:
                self.child_ended(job, now)

    def clean(self, queue: Queue, state: JobState, cutoff: float) -> int:
        """Remove the queue's retained jobs in ``state`` that finished by ``cutoff``; return how
        many."""
        jobs = [job for job in self._store.finished_jobs(queue, state)
                if job.finished_at is not None and job.finished_at <= cutoff]
        self.remove(jobs)
        return len(jobs)

    def expire_at(self, job: Job, when: float) -> None:
        """Forget finished ``job`` at wall time ``when`` (its own ``keep_result``)."""
        self._deadlines.set(Kind.EXPIRE, job.id, self._timeline.monotonic(when))

    def _age_at(self, queue: Queue, when: float) -> None:
        """Look at the queue's oldest retained jobs again at wall time ``when``."""
        self._deadlines.set(Kind.AGE, queue.name, self._timeline.monotonic(when))

    def age_retained(self, queue: Queue) -> None:
        """Start retention by age for jobs retained without ``finish`` (restored on start)."""
        if self.keep_age is None:
            return
        jobs = self._store.jobs
        oldest = [jobs[kept[0]].finished_at for kept in (queue.kept_completed,
                                                         queue.kept_failed) if kept]
        times = [when for when in oldest if when is not None]
        if times:
            self._age_at(queue, min(times) + self.keep_age)

    def age_out(self, queue: Queue, now: float) -> None:
        """Forget the queue's retained jobs that finished ``keep_age`` or more before ``now``."""
        keep_age = self.keep_age
        if keep_age is None:
            return
        cutoff = now - keep_age
        jobs = self._store.jobs
        gone: list[Job] = []
        oldest: float | None = None
        for kept in (queue.kept_completed, queue.kept_failed):
            while kept:
                job = jobs[kept[0]]
                assert job.finished_at is not None
                if job.finished_at > cutoff:
                    oldest = job.finished_at if oldest is None else min(oldest, job.finished_at)
                    break
                kept.popleft()
                gone.append(job)
        for job in gone:
            self.forget(job)
        if gone and self._output.logged:
            self._output.records.append(JobsRemoved(ids=[job.id for job in gone]))
        if oldest is not None:
            self._age_at(queue, oldest + keep_age)
