"""The queue state machine's facade: every request and timer event that changes the queues.

Plain synchronous code with no I/O; the current wall time is passed in (``now``, read with
``Queues.now()`` from the clock the state was given). ``Queues`` holds the state (it is the
``Store``) and moves jobs between their states; its parts do the rest: ``Dispatcher`` (credit,
dispatch, leases), ``Retention`` (finished jobs), ``Deadlines`` (what falls due when, on the
monotonic clock: see ``_clock``). What the changes produce beyond the state (log records,
events, finished and removed jobs) is handed over by ``take_outbox``, once per pass; ``tick``
serves the deadlines that came due.

Every change works out what it will do before it changes anything, so a request that cannot be
applied leaves the state as it was.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from typing import Final, cast

import msgspec

from conveyor.protocol import (
    FlowJob,
    JobDef,
    JobError,
    JobState,
    QueueLimits,
    QueueSummary,
    Schedule,
)

from ._clock import Clock, Timeline
from ._deadlines import Deadlines, Kind
from ._dispatch import Dispatcher
from ._errors import StateError
from ._flows import Flows
from ._groups import GroupedLine, apply_limits, grouped, normalized
from ._jobs import (
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
    WAITING_CHILDREN,
    Consumer,
    Job,
    JobOptions,
    Queue,
    backoff_delay,
    clamp_delay,
    job_options,
    join,
    with_run_at,
)
from ._outbox import Outbox, Output
from ._records import (
    JobPromoted,
    JobRetrying,
    JobsAdded,
    JobsAddedWithOptions,
    JobsRetried,
    QueueLimited,
    QueuePaused,
    ScheduleRemoved,
    ScheduleSet,
)
from ._retention import Retention
from ._schedules import ScheduleState, due_after, due_by, job_key
from ._store import Store
from ._waiting import WaitingLine

__all__ = [
    # Queues' option defaults come with it.
    "DEFAULT_KEEP",
    "DEFAULT_MAX_REDELIVERIES",
    "Queues",
]

_EARLY: Final = 1e-3
"""Seconds by which a schedule's due time may seem ahead of the timer that woke for it (a wall
time turned into monotonic time and back is not always exactly the same)."""

_UNUSED_QUEUES: Final = 1024
"""Unused queues tolerated beyond the queues in use before ``sweep`` forgets them."""


class Queues(Store):
    """Every queue, job and subscription of one broker, and the moves between job states."""

    def __init__(
        self,
        *,
        max_redeliveries: int = DEFAULT_MAX_REDELIVERIES,
        keep_completed: int = DEFAULT_KEEP,
        keep_failed: int = DEFAULT_KEEP,
        keep_age: float | None = None,
        logged: bool = False,
        rng: random.Random | None = None,
        clock: Clock | None = None,
        stats: bool = True,
    ) -> None:
        """``stats=False`` leaves out the statistics counted per try (``started``,
        ``retried``, the wait and run times): only the counts and the rates of jobs added,
        completed and failed are kept."""
        super().__init__(Timeline(clock))
        self.stats = stats
        self.rng = rng or random.Random()
        """Jitters retry backoffs."""
        self.output = Output(logged=logged)
        self.watched = self.output.watched
        """Queues whose events are collected (the watchers keep it up to date)."""
        self.deadlines = Deadlines()
        self._due = self.deadlines.live(Kind.DUE)
        self.retention = Retention(self, self.output, self.deadlines, self.timeline,
                                   keep_completed=keep_completed, keep_failed=keep_failed,
                                   keep_age=keep_age)
        self.dispatcher = Dispatcher(self, self.deadlines, self.output, self.retention,
                                     self.timeline, max_redeliveries=max_redeliveries,
                                     stats=stats)
        self._kept_queues = 0
        """Queues left by the last ``forget_unused``."""
        self.schedules: dict[str, ScheduleState] = {}
        """Every schedule, by id."""
        self._fired: list[Job] = []
        """Jobs schedules made since the last ``take_fired``, waiting for their records."""
        self.flows = Flows(self)
        self.retention.child_ended = self.flows.finished

    def now(self) -> float:
        """The wall time now, from the state's clock: what ``now`` arguments take."""
        return self.timeline.now()

    def summaries(self, now: float) -> list[QueueSummary]:
        """Every queue, by name: its counts and its rates over the last minute (the rates
        count on the monotonic clock, so a step of the wall clock does not reset them)."""
        return super().summaries(self.timeline.monotonic(now))

    def take_outbox(self) -> Outbox:
        """What the changes since the last take produced: records, events, finished jobs."""
        return self.output.take()

    # Producers.

    def add(self, queue_name: str, payloads: Sequence[msgspec.Raw], now: float) -> list[int]:
        """Append plain jobs to a queue at once; return their new ids in order."""
        jobs = self.create(queue_name, payloads, now)
        self.enqueue(jobs)
        return [job.id for job in jobs]

    def create(self, queue_name: str, payloads: Sequence[msgspec.Raw | JobDef],
               now: float) -> list[Job]:
        """Create jobs without putting them in line yet; return one job per payload.

        A payload whose idempotency key a retained job already has gets that job (nothing is
        created for it), unless that job's ``dedup`` TTL ran out: then a new job takes the key.
        The flush calls ``enqueue`` once the record is durable, so nothing is dispatched before
        it would survive a crash.
        """
        # Every job's options first: nothing is changed until all of them are known.
        given = [job_options(payload, now) if isinstance(payload, JobDef) else DEFAULT_OPTIONS
                 for payload in payloads]
        queue = self.queue(queue_name)
        jobs = self.jobs
        ready = now + self.timeline.offset
        out: list[Job] = []
        created: list[Job] = []
        options: list[JobOptions] = []
        plain = True
        job_id = self.last_id
        for payload, option in zip(payloads, given, strict=True):
            data = payload.data if isinstance(payload, JobDef) else payload
            if option is not DEFAULT_OPTIONS:
                if option.key is not None:
                    existing = self.keyed(option.key, now)
                    if existing is not None:
                        out.append(existing)
                        continue
                plain = False
            job_id += 1
            job = Job(job_id, queue_name, data, now, option)
            job.pending = True
            job.ready = ready
            jobs[job_id] = job
            if option.run_at is not None:
                # Its delay counts from now, whatever the wall clock does while its record waits
                # for the disk (``enqueue`` finds out if it came due meanwhile).
                self.deadlines.set(Kind.DUE, job_id, self.timeline.monotonic(option.run_at))
            if option.key is not None:
                self.claim(option.key, job_id, option.dedup_until)
            out.append(job)
            created.append(job)
            options.append(option)
            self.live_bytes += len(data) + JOB_OVERHEAD
        if not created:
            return out
        queue.pending += len(created)
        queue.added += len(created)
        queue.added_rate.mark(len(created), ready)
        self.last_id = job_id
        if self.output.logged:
            first_id = created[0].id
            datas = [job.data for job in created]
            self.output.records.append(
                JobsAdded(queue=queue_name, first_id=first_id, created_at=now, jobs=datas)
                if plain else
                JobsAddedWithOptions(queue=queue_name, first_id=first_id, created_at=now,
                                     jobs=datas, options=options))
        return out

    def create_flow(self, entries: Sequence[FlowJob], now: float) -> list[Job]:
        """Create the jobs of a flow (checked by ``flow_error``), as ``create`` does: the flush
        puts them in line once their record is durable (``enqueue``)."""
        return self.flows.create(entries, now)

    def enqueue(self, jobs: Sequence[Job]) -> None:
        """Put jobs made by ``create`` (or ``create_flow``) in line (the delayed ones with the
        delayed jobs, or in line when they came due while their record waited for the disk)."""
        if len(jobs) > 1 and jobs[0].options.children:
            # A flow: its jobs may be on several queues.
            by_queue: dict[str, list[Job]] = {}
            for job in jobs:
                by_queue.setdefault(job.queue, []).append(job)
            for part in by_queue.values():
                self._enqueue(part)
            return
        self._enqueue(jobs)

    def _enqueue(self, jobs: Sequence[Job]) -> None:
        fresh = []
        for job in jobs:
            # A job appears more than once when one bulk add repeats its idempotency key.
            if job.pending:
                job.pending = False
                fresh.append(job)
        if not fresh:
            return
        queue = self.queues[fresh[0].queue]
        queue.pending -= len(fresh)
        watched = queue.name in self.watched
        event = self.output.event
        waiting = []
        heads = []
        due = []
        groups = False
        for job in fresh:
            options = job.options
            if options is DEFAULT_OPTIONS:
                # Most adds: due now, at the tail; no more checks than before LIFO existed.
                waiting.append(job)
            elif job.state is WAITING_CHILDREN:
                queue.parents[job.id] = job
            elif job.state is DELAYED:
                queue.delayed[job.id] = job
                if job.id not in self._due:
                    due.append(job)
            elif options.lifo:
                heads.append(job)
                groups = groups or job.group is not None
            else:
                waiting.append(job)
                groups = groups or job.group is not None
            if watched:
                event(queue.name, "added", job, job.created_at)
                if job.state is DELAYED:
                    event(queue.name, "delayed", job, job.created_at, run_at=job.run_at)
        if waiting or heads:
            line = grouped(queue, self.deadlines) if groups else queue.waiting
            line.extend(waiting)
            for job in heads:
                line.appendleft(job)  # the last added goes first
            self.dispatcher.wake(queue)
        for job in due:
            # It came due while its record waited for the disk: it waits from its due time.
            self._promote(job, self.timeline.monotonic(cast(float, job.options.run_at)))

    def discard(self, jobs: Sequence[Job]) -> None:
        """Forget jobs made by ``create`` whose record could not be written (ids stay used)."""
        for job in jobs:
            if job.pending:
                job.pending = False
                self.queues[job.queue].pending -= 1
                self.retention.forget(job)

    # Unused queues.

    def sweep(self) -> None:
        """Forget unused queues once they could outnumber the others by ``_UNUSED_QUEUES``:
        cheap on every pass, and a sweep's cost is repaid by the queues created since the last.
        """
        if len(self.queues) > 2 * self._kept_queues + _UNUSED_QUEUES:
            self.forget_unused()

    def forget_unused(self) -> int:
        """Forget every queue that is unused and unwatched (it reads as one that never existed);
        return how many."""
        watched = self.watched
        unused = [queue for queue in self.queues.values()
                  if queue.unused() and queue.name not in watched]
        for queue in unused:
            del self.queues[queue.name]
            self.dispatcher.forget(queue)
        self._kept_queues = len(self.queues)
        return len(unused)

    # Subscribers and their reports.

    def subscribe(self, owner: Hashable, queue_name: str, window: int,
                  lease: float = DEFAULT_LEASE) -> Consumer:
        """Subscribe ``owner`` to a queue with a credit window (or change the window)."""
        return self.dispatcher.subscribe(owner, self.queue(queue_name), window, lease)

    def extend(self, owner: Hashable, queue_name: str, now: float) -> None:
        """``owner`` is alive: its subscription's leases run for another lease period."""
        consumer = self.consumer(owner, queue_name)
        if consumer is not None:
            self.dispatcher.heard(consumer, now)

    def dispatch(self, now: float = 0.0) -> list[tuple[Consumer, list[Job]]]:
        """Lease waiting jobs to subscribers with free slots; return who gets what."""
        return self.dispatcher.dispatch(now)

    def ack(self, owner: Hashable, job_id: int, lease: int, result: msgspec.Raw,
            now: float) -> Job | None:
        """Complete the job under ``lease``; None (and no change) if the lease is not held."""
        job = self.dispatcher.take_held(owner, job_id, lease, now)
        if job is None:
            return None
        job.result = result
        job.error = None
        self.retention.finish(job, COMPLETED, now)
        return job

    def fail(self, owner: Hashable, job_id: int, lease: int, error: JobError, now: float, *,
             retry: bool = True, delay: float | None = None) -> Job | None:
        """Fail the try under ``lease``: retry while attempts are left (and ``retry``), after
        ``delay`` or the job's backoff; else the job fails. None if the lease is not held."""
        job = self.dispatcher.holding(owner, job_id, lease)
        if job is None:
            return None
        retrying = retry and job.attempt < job.options.attempts
        if retrying:
            wait = clamp_delay(delay) if delay is not None else backoff_delay(
                job.options.backoff, job.attempt, self.rng)
            run_at = now + wait if wait > 0 else None
        # Taken only now: a backoff that failed left the job with its holder.
        self.dispatcher.take_held(owner, job_id, lease, now)
        job.error = error
        if retrying:
            self._retry(job, error, now, run_at)
        else:
            self.retention.finish(job, FAILED, now)
        return job

    def release(self, owner: Hashable, job_id: int, lease: int, now: float = 0.0) -> Job | None:
        """Put the job under ``lease`` back at the head of its queue, its try given back."""
        job = self.dispatcher.take_held(owner, job_id, lease, now, ran=False)
        if job is None:
            return None
        job.attempt -= 1
        self.dispatcher.requeue(self.queues[job.queue], [job], now)
        return job

    def throttle(self, owner: Hashable, job_id: int, lease: int, seconds: float,
                 now: float) -> Job | None:
        """Put the job under ``lease`` back at the head of its queue, its try given back (as
        ``release``), and start no job of its queue for ``seconds``; None (and no change) if
        the lease is not held."""
        job = self.release(owner, job_id, lease, now)
        if job is None:
            return None
        self.dispatcher.hold(self.queues[job.queue],
                             self.timeline.monotonic(now) + clamp_delay(seconds))
        return job

    def progress(self, owner: Hashable, job_id: int, lease: int, value: msgspec.Raw,
                 now: float = 0.0) -> bool:
        """Record progress for the job under ``lease``; False if the lease is not held."""
        job = self.dispatcher.holding(owner, job_id, lease)
        if job is None:
            return False
        job.progress = value
        self.dispatcher.heard(cast(Consumer, job.holder), now)  # held: ``holding`` said so
        if job.queue in self.watched:
            self.output.event(job.queue, "progress", job, now, value=value)
        return True

    def drop(self, owner: Hashable, now: float) -> list[Job]:
        """Forget every subscription of ``owner`` (its connection is gone).

        Its jobs go back to the head of their queues, in delivery order. A job lost with its
        worker more than ``max_redeliveries`` times fails instead, so a job that kills its
        workers cannot loop forever. Returns the jobs that went back.
        """
        return self.dispatcher.drop(owner, now)

    # Deadlines.

    def next_deadline(self) -> float | None:
        """When ``tick`` next has something to do (on the monotonic clock), or None."""
        return self.deadlines.next()

    def tick(self, now: float) -> None:
        """Do what is due by ``now``: delayed jobs join their queues, silent subscribers lose
        their jobs, finished jobs past their retention are forgotten, and queues whose jobs
        waited for the next slot of their rate are looked at again."""
        deadlines = self.deadlines
        jobs = self.jobs
        monotonic = self.timeline.monotonic(now)
        while (due := deadlines.pop(monotonic)) is not None:
            kind, key = due
            if kind is Kind.DUE:
                job = jobs.get(cast(int, key))
                if job is not None and job.state is DELAYED and not job.pending:
                    # It waits from its due time (the timer may run late), not before.
                    due_at = self.timeline.monotonic(cast(float, job.options.run_at))
                    self._promote(job, min(due_at, monotonic))
            elif kind is Kind.LEASE:
                self.dispatcher.lease_due(cast(int, key), now)
            elif kind is Kind.EXPIRE:
                job = jobs.get(cast(int, key))
                if job is not None and job.finished_at is not None:
                    self.retention.remove([job])
            elif kind is Kind.AGE:
                queue = self.queues.get(cast(str, key))
                if queue is not None:
                    self.retention.age_out(queue, now)
            elif kind is Kind.LIMIT:
                queue = self.queues.get(cast(str, key))
                if queue is not None:
                    self.dispatcher.limit_due(queue, monotonic)
            elif kind is Kind.GROUP:
                name, group = cast(tuple[str, str], key)
                queue = self.queues.get(name)
                if queue is not None:
                    self.dispatcher.group_due(queue, group)
            else:
                state = self.schedules.get(cast(str, key))
                if state is not None:
                    self._fire(state, now)

    # Schedules.

    def set_schedule(self, schedule: Schedule, now: float) -> None:
        """Create or replace the schedule of ``schedule.id`` (checked by ``check``): its due
        times count from ``now``; a due time that already had its job gets no other."""
        old = self.schedules.get(schedule.id)
        state = ScheduleState(schedule, anchor=now, last=None if old is None else old.last)
        self.schedules[schedule.id] = state
        if self.output.logged:
            self.output.records.append(ScheduleSet(schedule=schedule, anchor=now,
                                                   last=state.last))
        self._arm(state, due_after(state, now if state.last is None else max(now, state.last)))

    def remove_schedule(self, schedule_id: str) -> bool:
        """Remove a schedule; False when there is none of that id."""
        if self.schedules.pop(schedule_id, None) is None:
            return False
        self.deadlines.cancel(Kind.SCHEDULE, schedule_id)
        if self.output.logged:
            self.output.records.append(ScheduleRemoved(id=schedule_id))
        return True

    def arm_schedules(self, now: float) -> None:
        """Arm the schedules restored at start: a due time missed while the broker was down
        gets one job at once (``missed="once"``) or none (``"skip"``)."""
        for state in self.schedules.values():
            first = due_after(state, state.anchor if state.last is None else state.last)
            if first <= now and state.schedule.missed == "skip":
                first = due_after(state, now)
            self._arm(state, first)

    def take_fired(self) -> list[Job]:
        """The jobs schedules made since the last take (the flush puts them in line once
        their records are durable, as an add's)."""
        fired, self._fired = self._fired, []
        return fired

    def _fire(self, state: ScheduleState, now: float) -> None:
        """Make the job of the latest due time by ``now``, unless it had one already."""
        due = due_by(state, now)
        if state.next <= now + _EARLY and (due is None or due < state.next):
            # The timer woke for ``next``: rounding between the clocks must not make it miss.
            due = state.next
        if due is not None and (state.last is None or due > state.last):
            schedule = state.schedule
            job = JobDef(data=schedule.data, id=job_key(schedule.id, due),
                         priority=schedule.priority, attempts=schedule.attempts,
                         backoff=schedule.backoff, timeout=schedule.timeout, name=schedule.name)
            # Its record goes before the schedule's: the key covers a crash between the two.
            self._fired += [made for made in self.create(schedule.queue, [job], now)
                            if made.pending]
            state.last = due
            if self.output.logged:
                self.output.records.append(ScheduleSet(schedule=schedule, anchor=state.anchor,
                                                       last=due))
        self._arm(state, due_after(state, now if state.last is None else max(now, state.last)))

    def _arm(self, state: ScheduleState, due: float) -> None:
        state.next = due
        self.deadlines.set(Kind.SCHEDULE, state.schedule.id, self.timeline.monotonic(due))

    # Queue control.

    def promote(self, job_id: int, now: float = 0.0) -> Job | None:
        """Make a delayed job waiting now; None when there is no such job."""
        job = self.jobs.get(job_id)
        if job is None:
            return None
        if job.state is not DELAYED or job.pending:
            raise StateError(f"job {job_id} is {job.state.value}, not delayed")
        self._promote(job, self.timeline.monotonic(now))
        return job

    def remove(self, job_id: int, now: float = 0.0) -> Job | None:
        """Remove a job that is not active; None when there is no such job."""
        job = self.jobs.get(job_id)
        if job is None:
            return None
        if job.state is ACTIVE or job.pending:
            raise StateError(f"job {job_id} is active and cannot be removed")
        self.retention.remove([job], now=now)
        return job

    def pause(self, queue_name: str, paused: bool) -> None:
        """Stop (or restart) deliveries from a queue; it accepts jobs either way."""
        queue = self.queue(queue_name)
        if queue.paused != paused:
            queue.paused = paused
            if self.output.logged:
                self.output.records.append(QueuePaused(queue=queue_name, paused=paused))
            self.dispatcher.wake(queue)

    def set_limits(self, queue_name: str, limits: QueueLimits) -> None:
        """Replace a queue's limits (``QueueLimits()`` clears them), its groups' included.
        Lowering them takes back nothing that runs; they hold for the starts from now on."""
        limits = normalized(limits)
        queue = self.queue(queue_name)
        if queue.limits == limits:
            return
        apply_limits(queue, limits)
        new = queue.limiter
        if new is None:
            self.deadlines.cancel(Kind.LIMIT, queue_name)
        elif not new.limited:
            # Only a hold is left: the timer drops it at its end (at once if it ended already),
            # so that the queue may be forgotten again.
            self.deadlines.set(Kind.LIMIT, queue_name, new.until)
        if self.output.logged:
            self.output.records.append(QueueLimited(queue=queue_name, limits=limits))
        self.dispatcher.wake(queue)

    def retry_failed(self, queue_name: str | None = None, job_id: int | None = None,
                     now: float = 0.0) -> int:
        """Put failed jobs (one, or every retained one of a queue) back at the tail of their
        queues (the head for LIFO jobs) with their attempts renewed, waiting from ``now``;
        return how many."""
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
        if jobs:
            ready = self.timeline.monotonic(now)
            for job in jobs:
                queue = self.queues[job.queue]
                self.retention.renew(job)
                job.ready = ready
                join(self.line(queue, job), job)
                self.dispatcher.wake(queue)
            if self.output.logged:
                self.output.records.append(JobsRetried(ids=[job.id for job in jobs]))
        return len(jobs)

    def drain(self, queue_name: str, now: float = 0.0) -> int:
        """Remove every waiting and delayed job of a queue; return how many (parents waiting
        for their children stay)."""
        queue = self.queues.get(queue_name)
        if queue is None:
            return 0
        jobs = queue.waiting.clear()
        jobs += queue.delayed.values()
        queue.delayed.clear()
        self.retention.remove(jobs, unlined=True, now=now)
        return len(jobs)

    def clean(self, queue_name: str, state: JobState, older_than: float, now: float) -> int:
        """Remove a queue's completed or failed jobs finished at least ``older_than`` seconds
        ago; return how many."""
        if state not in (COMPLETED, FAILED):
            raise StateError(f"clean removes completed or failed jobs, not {state.value} ones")
        queue = self.queues.get(queue_name)
        return 0 if queue is None else self.retention.clean(queue, state, now - older_than)

    # Moving jobs.

    def delay_job(self, queue: Queue, job: Job) -> None:
        """Hold a delayed job until its ``run_at`` (the wall time turned into a monotonic one
        now, once: a later step of the wall clock does not move it)."""
        run_at = job.options.run_at
        assert run_at is not None
        queue.delayed[job.id] = job
        self.deadlines.set(Kind.DUE, job.id, self.timeline.monotonic(run_at))

    def line(self, queue: Queue, job: Job) -> WaitingLine[Job] | GroupedLine:
        """The line ``job`` joins in ``queue`` (a grouped one when it has a group)."""
        return queue.waiting if job.group is None else grouped(queue, self.deadlines)

    def _retry(self, job: Job, error: JobError, now: float, run_at: float | None) -> None:
        queue = self.queues[job.queue]
        output = self.output
        watched = queue.name in output.watched
        if output.logged:
            output.records.append(JobRetrying(id=job.id, attempt=job.attempt, at=now,
                                              error=error, run_at=run_at))
        if self.stats:
            queue.retried += 1
            rate = queue.retried_rate
            if rate.at == now:
                rate.pending += 1
            else:
                rate.begin(now, self.timeline.monotonic(now))
        if watched:
            output.event(queue.name, "retrying", job, now, error=error, run_at=run_at)
        if run_at is None:
            job.state = WAITING
            job.ready = self.timeline.monotonic(now)
            join(self.line(queue, job), job)
            self.dispatcher.wake(queue)
        else:
            job.options = with_run_at(job.options, run_at=run_at)
            job.state = DELAYED
            self.delay_job(queue, job)
            if watched:
                output.event(queue.name, "delayed", job, now, run_at=run_at)

    def _promote(self, job: Job, ready: float) -> None:
        """Make a delayed job waiting, from ``ready`` (monotonic seconds)."""
        queue = self.queues[job.queue]
        job.ready = ready
        del queue.delayed[job.id]
        self.deadlines.cancel(Kind.DUE, job.id)
        job.options = with_run_at(job.options, run_at=None)
        job.state = WAITING
        join(self.line(queue, job), job)
        if self.output.logged:
            self.output.records.append(JobPromoted(id=job.id))
        self.dispatcher.wake(queue)
