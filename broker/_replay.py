"""Between log records and the queue state: replaying records, and snapshotting the live state.

Replay does not keep waiting lines up to date record by record (taking a finished job out of the
middle of a line would cost a scan each time). It notes, for every job, whether it last went to
the head of its queue (released, its worker lost, or a LIFO job added, due or retried) or to the
tail (any other job added, due or retried), and
builds every line once at the end: head jobs first, latest first, then tail jobs in the order
they got there. That is exactly the order the live broker keeps. Jobs that were active when the
log ended are waiting again, in their place.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from conveyor.protocol import ChildResult, JobError, JobState, QueueLimits

from ._census import Census
from ._groups import GroupedLine, apply_limits, grouped, normalized
from ._jobs import (
    DEFAULT_OPTIONS,
    DELAYED,
    JOB_OVERHEAD,
    NO_LIMITS,
    WAITING_CHILDREN,
    Flow,
    Job,
    JobOptions,
)
from ._queues import Queues
from ._records import (
    ChildDone,
    FlowAdded,
    JobFinished,
    JobPromoted,
    JobRequeued,
    JobRetrying,
    JobsAdded,
    JobsAddedWithOptions,
    JobSnapshot,
    JobsRemoved,
    JobsRetried,
    LastId,
    QueueLimited,
    QueuePaused,
    QueueSnapshot,
    Record,
    ScheduleRemoved,
    ScheduleSet,
)
from ._schedules import ScheduleState
from ._waiting import WaitingLine

__all__ = ["Replayer", "snapshot"]

_STATES = {state.value: state for state in JobState}


class Replayer:
    """Applies records, in log order, to a fresh ``Queues``; ``finish()`` completes the state.

    Given the ``Census`` of the same records, it builds only the jobs that outlive them, and
    takes the queues' counters from it.
    """

    def __init__(self, queues: Queues, census: Census | None = None) -> None:
        self.queues = queues
        self.census = census
        self.skipped = 0
        """Records that referred to jobs the log does not hold (possible only after salvage)."""
        self._moves = 0
        self._heads: dict[int, int] = {}
        """Jobs that last went to the head of their queue, and when (a move number)."""
        self._tails: dict[int, Job] = {}
        """Jobs that last went to the tail of their queue, in the order they got there."""
        self._claims: dict[str, int] = {}
        """The latest job (by id) that took each idempotency key, built or not: a key whose
        ``dedup`` TTL ran out passes to a newer job, and goes with that job when it is gone."""
        self._restored_kept: set[str] = set()
        """Queues with finished jobs restored from a snapshot: their age limit starts at the end."""

    def apply(self, record: Record) -> None:
        """Apply one record."""
        queues = self.queues
        jobs = queues.jobs
        match record:
            case JobsAdded(queue=name, first_id=first_id, created_at=created_at, jobs=payloads):
                self._add(name, first_id, created_at, payloads, [DEFAULT_OPTIONS] * len(payloads))
            case JobsAddedWithOptions(queue=name, first_id=first_id, created_at=created_at,
                                      jobs=payloads, options=options):
                self._add(name, first_id, created_at, payloads, options)
            case FlowAdded(first_id=first_id, created_at=created_at, jobs=flow):
                for offset, node in enumerate(flow):
                    self._add(node.queue, first_id + offset, created_at, [node.data],
                              [node.options])
            case ChildDone(parent=parent_id, child=child_id, at=at, result=result, error=error,
                           release=release):
                self._child_done(parent_id, child_id, at, result, error, release)
            case JobFinished(id=job_id, attempt=attempt, at=at, result=result, error=error):
                finished = jobs.get(job_id)
                if finished is None or finished.finished_at is not None:
                    self._skip(job_id)
                    return
                self._unline(finished)
                finished.attempt = attempt
                finished.result = result.copy()  # not a view of the whole chunk read
                finished.error = error
                state = JobState.FAILED if error is not None else JobState.COMPLETED
                queues.retention.finish(finished, state, at, record=False)
            case JobRetrying(id=job_id, attempt=attempt, error=error, run_at=run_at):
                retried = jobs.get(job_id)
                if retried is None:
                    self._skip(job_id)
                    return
                self._unline(retried)
                retried.attempt = attempt
                retried.error = error
                if run_at is None:
                    retried.state = JobState.WAITING
                    self._join(retried)
                else:
                    retried.options = msgspec.structs.replace(retried.options, run_at=run_at)
                    retried.state = JobState.DELAYED
                    queues.queues[retried.queue].delayed[job_id] = retried
            case JobRequeued(id=job_id, drops=drops):
                requeued = jobs.get(job_id)
                if requeued is None:
                    self._skip(job_id)
                    return
                requeued.drops = drops
                self._unline(requeued)
                requeued.state = JobState.WAITING
                self._head(requeued)
            case JobPromoted(id=job_id):
                promoted = jobs.get(job_id)
                if promoted is None or promoted.state is not JobState.DELAYED:
                    self._skip(job_id)
                    return
                del queues.queues[promoted.queue].delayed[job_id]
                promoted.options = msgspec.structs.replace(promoted.options, run_at=None)
                promoted.state = JobState.WAITING
                self._join(promoted)
            case JobsRemoved(ids=ids):
                for job_id in ids:
                    removed = jobs.get(job_id)
                    if removed is None:
                        self._skip(job_id)
                        continue
                    self._unline(removed)
                    queues.retention.detach(removed)
                    queues.retention.forget(removed)
            case JobsRetried(ids=ids):
                for job_id in ids:
                    failed = jobs.get(job_id)
                    if failed is None or failed.state is not JobState.FAILED:
                        self._skip(job_id)
                        continue
                    queues.retention.renew(failed)
                    self._join(failed)
            case QueuePaused(queue=name, paused=paused):
                queues.queue(name).paused = paused
            case QueueSnapshot(name=name, completed=completed, failed=failed, paused=paused,
                               limits=limits):
                queue = queues.queue(name)
                queue.completed = completed
                queue.failed = failed
                queue.paused = paused
                queue.limiter = None
                apply_limits(queue, QueueLimits() if limits is None else limits)
            case JobSnapshot():
                self._restore(record)
            case LastId(id=last_id):
                queues.last_id = max(queues.last_id, last_id)
            case QueueLimited(queue=name, limits=limits):
                apply_limits(queues.queue(name), normalized(limits))
            case ScheduleSet(schedule=schedule, anchor=anchor, last=last):
                queues.schedules[schedule.id] = ScheduleState(schedule, anchor=anchor, last=last)
            case ScheduleRemoved(id=schedule_id):
                queues.schedules.pop(schedule_id, None)

    def _child_done(self, parent_id: int, child_id: int, at: float, result: msgspec.Raw,
                    error: JobError | None, release: bool) -> None:
        """A parent took note of a child that finished; ``release``: it was its last, and the
        parent became waiting (or delayed)."""
        queues = self.queues
        parent = queues.jobs.get(parent_id)
        flow = None if parent is None else parent.flow
        if parent is None or flow is None:
            self._skip(parent_id)
            return
        if child_id not in flow.done:
            outcome = ChildResult(id=child_id, result=result.copy(), error=error)
            flow.done[child_id] = outcome
            queues.live_bytes += len(outcome.result)
        if release and parent.state is WAITING_CHILDREN:
            queue = queues.queues[parent.queue]
            del queue.parents[parent_id]
            run_at = parent.options.run_at
            if run_at is not None and run_at > at:
                parent.state = JobState.DELAYED
                queue.delayed[parent_id] = parent
            else:
                parent.options = msgspec.structs.replace(parent.options, run_at=None)
                parent.state = JobState.WAITING
                self._join(parent)

    def finish(self) -> None:
        """Build every queue's waiting line from what was applied; arm the delayed jobs."""
        queues = self.queues
        jobs = queues.jobs
        heads = sorted(self._heads.items(), key=lambda item: -item[1])
        # Waiting jobs wait from now, as far as the statistics know (when a try became
        # waiting is not logged).
        timeline = queues.timeline
        ready = 0.0 if timeline.clock is None else timeline.monotonic(timeline.now())
        for job_id, _ in heads:
            job = jobs.get(job_id)
            if job is not None and job.state is JobState.WAITING:
                job.ready = ready
                self._line(job).append(job)
        for job in self._tails.values():
            if job.state is JobState.WAITING and jobs.get(job.id) is job:
                job.ready = ready
                self._line(job).append(job)
        for queue in queues.queues.values():
            for job in queue.delayed.values():
                queues.delay_job(queue, job)
        for name in self._restored_kept:
            queues.retention.age_retained(queues.queues[name])
        self._restored_kept.clear()
        if self.census is not None:
            # It counted the jobs not built too.
            for name, (completed, failed) in self.census.counters.items():
                queue = queues.queue(name)
                queue.completed = completed
                queue.failed = failed
        self._heads.clear()
        self._tails.clear()
        self._claims.clear()
        queues.flows.reconcile()
        if timeline.clock is not None:
            queues.arm_schedules(timeline.now())

    def _add(self, name: str, first_id: int, created_at: float, payloads: list[msgspec.Raw],
             options: list[JobOptions]) -> None:
        queues = self.queues
        queue = queues.queue(name)
        jobs, delayed, tails = queues.jobs, queue.delayed, self._tails
        census = self.census
        # Only the jobs that outlive the log are built.
        gone = census.dead if census is not None and census.any_dead(
            first_id, len(payloads)) else None
        job_id = first_id - 1
        size = 0
        for data, option in zip(payloads, options, strict=True):
            job_id += 1
            if gone is not None and gone(job_id):
                if option.key is not None:
                    self._claim(option.key, job_id, option.dedup_until, alive=False)
                continue
            job = Job(job_id, name, data, created_at, option)
            jobs[job_id] = job
            if option.key is not None:
                self._claim(option.key, job_id, option.dedup_until)
            if option.children:
                job.state = WAITING_CHILDREN
                job.flow = Flow(option.children)
                queue.parents[job_id] = job
            elif job.state is DELAYED:
                delayed[job_id] = job
            elif option.lifo:
                self._head(job)
            else:
                tails[job_id] = job
            size += len(data) + JOB_OVERHEAD
        queues.live_bytes += size
        queues.last_id = max(queues.last_id, job_id)

    def _claim(self, key: str, job_id: int, until: float | None, *, alive: bool = True) -> None:
        """Job ``job_id`` took ``key`` when it was added, its ``dedup`` TTL ending at wall time
        ``until`` (unless a later job has the key now)."""
        if self._claims.get(key, 0) > job_id:
            return
        self._claims[key] = job_id
        if alive:
            self.queues.claim(key, job_id, until)
        else:
            self.queues.unclaim(key)

    def _line(self, job: Job) -> WaitingLine[Job] | GroupedLine:
        queue = self.queues.queues[job.queue]
        return queue.waiting if job.group is None else grouped(queue, self.queues.deadlines)

    def _join(self, job: Job) -> None:
        """The job became waiting (added, due, retried): at the head of its line if LIFO."""
        if job.options.lifo:
            self._head(job)
        else:
            self._tail(job)

    def _head(self, job: Job) -> None:
        self._tails.pop(job.id, None)
        self._moves += 1
        self._heads[job.id] = self._moves

    def _tail(self, job: Job) -> None:
        self._heads.pop(job.id, None)
        self._tails.pop(job.id, None)
        self._tails[job.id] = job

    def _unline(self, job: Job) -> None:
        self._heads.pop(job.id, None)
        self._tails.pop(job.id, None)
        if job.state is WAITING_CHILDREN:
            self.queues.queues[job.queue].parents.pop(job.id, None)

    def _skip(self, job_id: int) -> None:
        """A record about a job that is not there: gone by the end (the census knew), or lost
        to salvage."""
        if self.census is None or not self.census.dead(job_id):
            self.skipped += 1

    def _restore(self, record: JobSnapshot) -> None:
        queues = self.queues
        if self.census is not None and self.census.dead(record.id):
            queues.queue(record.queue)
            queues.last_id = max(queues.last_id, record.id)
            if record.options.key is not None:
                self._claim(record.options.key, record.id, record.options.dedup_until,
                            alive=False)
            return
        job = Job(record.id, record.queue, record.data, record.created_at, record.options)
        job.attempt = record.attempt
        job.drops = record.drops
        queues.jobs[job.id] = job
        if record.options.key is not None:
            self._claim(record.options.key, job.id, record.options.dedup_until)
        queues.last_id = max(queues.last_id, job.id)
        queues.live_bytes += len(record.data) + JOB_OVERHEAD
        queue = queues.queue(record.queue)
        state = _STATES[record.state]
        job.state = state
        if record.options.children:
            job.flow = Flow(record.options.children, record.children_done)
            queues.live_bytes += job.flow.size()
        if state in (JobState.COMPLETED, JobState.FAILED):
            queues.live_bytes += len(record.result)  # as ``Retention.finish`` counts it
            job.finished_at = record.finished_at
            job.result = record.result.copy()  # not a view of the whole chunk read
            job.error = record.error
            if record.options.keep_result is not None:
                queue.kept_own[job.id] = job
                assert job.finished_at is not None
                queues.retention.expire_at(job, job.finished_at + record.options.keep_result)
            else:
                kept = queue.kept_completed if state is JobState.COMPLETED else queue.kept_failed
                kept.append(job.id)
                self._restored_kept.add(queue.name)
        elif state is JobState.DELAYED:
            job.error = record.error
            queue.delayed[job.id] = job
        elif state is WAITING_CHILDREN:
            job.error = record.error
            queue.parents[job.id] = job
        else:
            job.error = record.error
            self._tails[job.id] = job


def snapshot(queues: Queues) -> Iterator[Record]:
    """Records that rebuild the live state of ``queues`` on a fresh broker, in replay order."""
    for queue in queues.queues.values():
        yield QueueSnapshot(name=queue.name, completed=queue.completed, failed=queue.failed,
                            paused=queue.paused,
                            limits=None if queue.limits == NO_LIMITS else queue.limits)
        # Leases are not kept: an active job is waiting again, ahead of the line it left.
        for consumer in queue.consumers.values():
            for job in consumer.held.values():
                yield from _job_snapshot(job, JobState.WAITING)
        for job in queue.waiting:
            yield from _job_snapshot(job, JobState.WAITING)
        for job in queue.delayed.values():
            yield from _job_snapshot(job, JobState.DELAYED)
        for job in queue.parents.values():
            yield from _job_snapshot(job, WAITING_CHILDREN)
        for state in (JobState.COMPLETED, JobState.FAILED):
            for job in queues.finished_jobs(queue, state):
                yield from _job_snapshot(job, state)
    for kept in queues.schedules.values():
        yield ScheduleSet(schedule=kept.schedule, anchor=kept.anchor, last=kept.last)
    yield LastId(id=queues.last_id)


def _job_snapshot(job: Job, state: JobState) -> Iterator[Record]:
    """The job's snapshot; for the parent of a flow, then one ``ChildDone`` per outcome it took
    note of (in that order), so that no record grows with the number of children."""
    attempt = job.attempt - (1 if job.state is JobState.ACTIVE else 0)
    flow = job.flow
    if flow is None:
        yield JobSnapshot(
            id=job.id, queue=job.queue, data=job.data, created_at=job.created_at,
            state=state.value, attempt=attempt, drops=job.drops, finished_at=job.finished_at,
            result=job.result, error=job.error, options=job.options,
        )
        return
    yield JobSnapshot(
        id=job.id, queue=job.queue, data=job.data, created_at=job.created_at, state=state.value,
        attempt=attempt, drops=job.drops, finished_at=job.finished_at, result=job.result,
        error=job.error, options=job.options, children_left=flow.children,
    )
    for outcome in flow.done.values():
        yield ChildDone(parent=job.id, child=outcome.id, at=job.created_at,
                        result=outcome.result, error=outcome.error)
