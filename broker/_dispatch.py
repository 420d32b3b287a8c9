"""Credit and dispatch: subscriptions, who gets which waiting job, and the leases they hold.

A subscription (``Consumer``) has a credit window: the most jobs it may hold unacknowledged.
Dispatch is work-conserving and spreading: no job waits while a subscriber of its queue has a
free slot, and each job goes to the subscriber with the most free slots, ties broken round-robin
(the one served least recently first). Within a queue, higher priority first, then first in
first out. Only queues that may have work to hand out (``wake``) are looked at.

A queue with limits (``_limits``) hands out no more than they allow: the jobs it may start go to
the subscribers by the same rule, and when jobs wait only for the next slot of its rate, a
``LIMIT`` deadline wakes the queue at that slot.

Every delivery is a lease. A subscriber holding jobs must be heard from (an ack, a progress
report, an ``extend``) at least once a lease period; one that stays silent longer loses its
jobs and gets no more until it is heard from again. Jobs taken back from a silent or dropped
worker go back to the head of their queue, in delivery order, unless they were lost with their
worker more than ``max_redeliveries`` times: then they fail, so that a job that kills its
workers cannot loop forever.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable

from conveyor.protocol import JobError, QueueLimits

from ._clock import Timeline
from ._deadlines import Deadlines, Kind
from ._groups import GroupedLine, grouped
from ._jobs import (
    ACTIVE,
    DEFAULT_LEASE,
    DEFAULT_MAX_REDELIVERIES,
    FAILED,
    WAITING,
    Consumer,
    Job,
    Queue,
)
from ._limits import Limiter
from ._outbox import Output
from ._records import JobRequeued
from ._retention import Retention
from ._store import Store

__all__ = ["Dispatcher"]


class Dispatcher:
    """The subscriptions of one broker and the dispatch of waiting jobs to them."""

    __slots__ = ("_by_id", "_deadlines", "_last_consumer", "_last_lease", "_leases", "_output",
                 "_owners", "_ready", "_retention", "_served", "_store", "_timeline",
                 "max_redeliveries", "stats")

    def __init__(self, store: Store, deadlines: Deadlines, output: Output, retention: Retention,
                 timeline: Timeline, *,
                 max_redeliveries: int = DEFAULT_MAX_REDELIVERIES, stats: bool = True) -> None:
        self.max_redeliveries = max_redeliveries
        self.stats = stats
        """Whether tries are counted and timed (``Queue.started``, ``wait_time``, ``run_time``)."""
        self._store = store
        self._timeline = timeline
        self._retention = retention
        self._deadlines = deadlines
        self._leases = deadlines.live(Kind.LEASE)
        self._output = output
        self._owners: dict[Hashable, list[Consumer]] = {}
        self._by_id: dict[int, Consumer] = {}
        self._ready: set[Queue] = set()
        """Queues that may have jobs to hand out: waiting jobs and subscribers."""
        self._served = 0
        """Sequence of deliveries (and new subscriptions): the round-robin order."""
        self._last_lease = 0
        self._last_consumer = 0

    def subscribe(self, owner: Hashable, queue: Queue, window: int,
                  lease: float = DEFAULT_LEASE) -> Consumer:
        """Subscribe ``owner`` to ``queue`` with a credit window and a lease, or change the
        window of its subscription (whose lease stays the one it was made with)."""
        consumer = queue.consumers.get(owner)
        if consumer is None:
            self._served += 1
            self._last_consumer += 1
            consumer = Consumer(self._last_consumer, owner, queue, window, self._served, lease)
            queue.consumers[owner] = consumer
            self._owners.setdefault(owner, []).append(consumer)
            self._by_id[consumer.id] = consumer
        consumer.window = window
        if consumer.free > 0:
            self.wake(queue)
        return consumer

    def drop(self, owner: Hashable, now: float) -> list[Job]:
        """Forget every subscription of ``owner`` (its connection is gone); its jobs are taken
        back. Returns the jobs that went back to their queues."""
        requeued: list[Job] = []
        for consumer in self._owners.pop(owner, ()):
            del consumer.queue.consumers[owner]
            del self._by_id[consumer.id]
            self._deadlines.cancel(Kind.LEASE, consumer.id)
            requeued += self._take_back(consumer, now, "the worker's connection dropped")
        return requeued

    def subscriptions(self, owner: Hashable) -> list[Consumer]:
        """``owner``'s subscriptions, in the order it made them."""
        return self._owners.get(owner, [])

    def forget(self, queue: Queue) -> None:
        """``queue`` is forgotten (it has no subscriber)."""
        self._ready.discard(queue)

    def wake(self, queue: Queue) -> None:
        """``queue`` may have work to hand out: look at it in the next ``dispatch``."""
        if queue.waiting and queue.consumers:
            self._ready.add(queue)

    def heard(self, consumer: Consumer, now: float) -> None:
        """The consumer's owner is alive: its lease runs for another lease period from ``now``
        (on the monotonic clock: a step of the wall clock neither shortens nor stretches it)."""
        consumer.deadline = now + self._timeline.offset + consumer.lease
        if consumer.silent:
            consumer.silent = False
            self.wake(consumer.queue)
        if consumer.held and consumer.id not in self._leases:
            self._deadlines.set(Kind.LEASE, consumer.id, consumer.deadline)

    def holding(self, owner: Hashable, job_id: int, lease: int) -> Job | None:
        """The job ``owner`` holds under ``lease``; None if it holds no such lease."""
        job = self._store.jobs.get(job_id)
        if job is None or job.lease != lease or lease == 0:
            return None
        consumer = job.holder
        if consumer is None or consumer.owner != owner:
            return None
        return job

    def take_held(self, owner: Hashable, job_id: int, lease: int, now: float, *,
                  ran: bool = True) -> Job | None:
        """Take the job ``owner`` holds under ``lease`` from it (None, and no change, if it holds
        no such lease): its slot is free again, and hearing from the holder extends its lease.
        ``ran``: the try ended (acknowledged or failed, not handed back): its run time counts.
        One call, not ``holding`` then a take: an ack runs it for every job."""
        job = self._store.jobs.get(job_id)
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
        if job.group is not None:
            self._done(queue, job)
        if ran and self.stats:
            # The acks of one pass share its time, and mostly their delivery's: runs of one
            # length at one time, counted without a call but for the first.
            at = now + self._timeline.offset
            took = at - job.started
            durations = queue.run_time
            if took == durations.last and at == durations.at:
                durations.pending += 1
            else:
                durations.begin(took, at)
        self.heard(consumer, now)
        self.wake(queue)
        return job

    def lease_due(self, consumer_id: int, now: float) -> None:
        """The lease of a consumer came due: unless it was heard from since, it loses its jobs."""
        consumer = self._by_id.get(consumer_id)
        if consumer is None or not consumer.held:
            return
        if consumer.deadline > self._timeline.monotonic(now):
            self._deadlines.set(Kind.LEASE, consumer.id, consumer.deadline)
            return
        # Silent for a whole lease (a blocked loop, a stopped process): its jobs go elsewhere,
        # and it gets no more until it is heard from.
        consumer.silent = True
        self._take_back(consumer, now, f"the worker's lease of {consumer.lease:g} s ran out "
                                       f"(it was not heard from for that long)")

    def requeue(self, queue: Queue, jobs: list[Job], now: float) -> None:
        """Put jobs taken from their holder back at the head of ``queue``, in order, waiting
        from ``now``."""
        if not jobs:
            return
        output = self._output
        ready = now + self._timeline.offset
        for job in reversed(jobs):
            job.state = WAITING
            job.ready = ready
            if job.group is None:
                queue.waiting.appendleft(job)
            else:
                grouped(queue, self._deadlines).appendleft(job)
            if output.logged:
                output.records.append(JobRequeued(id=job.id, drops=job.drops))
        self.wake(queue)

    def _done(self, queue: Queue, job: Job) -> None:
        """A job of a group stopped being active: its group may start another."""
        line = queue.waiting
        if isinstance(line, GroupedLine):
            line.done(job)

    def _take_back(self, consumer: Consumer, now: float, why: str) -> list[Job]:
        """The consumer's worker is lost (``why`` says how): its jobs go back, or fail after
        too many losses, with ``why`` in their error. Returns the jobs that went back."""
        jobs = list(consumer.held.values())
        consumer.held.clear()
        consumer.queue.active -= len(jobs)
        back = []
        for job in jobs:
            job.holder = None
            job.lease = 0
            job.drops += 1
            if job.group is not None:
                self._done(consumer.queue, job)
            if job.drops > self.max_redeliveries:
                job.error = JobError(
                    type="WorkerLost",
                    message=f"lost with its worker {job.drops} times, more than the "
                            f"{self.max_redeliveries} redeliveries allowed; the last time, {why}",
                )
                self._retention.finish(job, FAILED, now)
            else:
                job.attempt -= 1
                back.append(job)
        self.requeue(consumer.queue, back, now)
        return back

    def dispatch(self, now: float = 0.0) -> list[tuple[Consumer, list[Job]]]:
        """Lease waiting jobs to subscribers with free slots; return who gets what.

        ``now`` starts the lease of a subscriber that held nothing.
        """
        out: list[tuple[Consumer, list[Job]]] = []
        ready = self._ready
        output = self._output
        while ready:
            queue = ready.pop()
            waiting = queue.waiting
            if not waiting or queue.paused:
                continue
            heap = [(-c.free, c.served, c) for c in queue.consumers.values() if c.free > 0]
            if not heap:
                continue
            heapq.heapify(heap)
            if isinstance(waiting, GroupedLine):
                jobs = self._grouped(queue, waiting, heap, now)
            else:
                limiter = queue.limiter
                if limiter is not None:
                    heap = self._limited(queue, limiter, heap, now)
                jobs = waiting.take(-sum(entry[0] for entry in heap))
            if not jobs:
                continue
            given = self._lease(jobs, heap)
            queue.active += len(jobs)
            if self.stats:
                self._started(queue, given.values(), len(jobs), now)
            watched = queue.name in output.watched
            for consumer, batch in given.items():
                if len(consumer.held) == len(batch):
                    # It held nothing: its lease starts now.
                    self.heard(consumer, now)
                if watched:
                    for job in batch:
                        output.event(queue.name, "active", job, now)
            out += given.items()
        return out

    def _grouped(self, queue: Queue, line: GroupedLine, heap: list[tuple[int, int, Consumer]],
                 now: float) -> list[Job]:
        """The jobs of a grouped line that may start now: one per group in turn (see
        ``_groups``), as many as the subscribers' free slots and the queue's limits allow."""
        at = now + self._timeline.offset
        free = -sum(entry[0] for entry in heap)
        count = free
        limiter = queue.limiter
        if limiter is not None:
            if at < limiter.until:
                limiter.timed = False
                if self._deadlines.when(Kind.LIMIT, queue.name) != limiter.until:
                    self._deadlines.set(Kind.LIMIT, queue.name, limiter.until)
                return []
            if not limiter.limited:
                queue.limiter = limiter = None
            else:
                count = min(limiter.room(queue.active, at), free)
        jobs = line.take(count, at) if count > 0 else []
        if limiter is not None:
            limiter.took(len(jobs), at)
            due = limiter.due()
            # Lanes left in the ring may wait for the queue's next slot.
            if line.ring and limiter.interval is not None and due > at:
                limiter.timed = True
                if self._deadlines.when(Kind.LIMIT, queue.name) != due:
                    self._deadlines.set(Kind.LIMIT, queue.name, due)
            else:
                limiter.timed = False
        return jobs

    def _lease(self, jobs: list[Job], heap: list[tuple[int, int, Consumer]]
               ) -> dict[Consumer, list[Job]]:
        """Lease ``jobs``, in order, each to the subscriber of ``heap`` with the most free slots
        (ties to the one served least recently); return who gets which."""
        given: dict[Consumer, list[Job]] = {}
        served = self._served
        lease = self._last_lease
        for job in jobs:
            negative_free, _, consumer = heap[0]
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
        return given

    def group_due(self, queue: Queue, group: str) -> None:
        """The ``GROUP`` deadline of a group of ``queue`` came due: its next rate slot, or the
        end of its last one (then it is forgotten, if idle)."""
        line = queue.waiting
        if isinstance(line, GroupedLine) and line.due(group):
            self.wake(queue)

    def _limited(self, queue: Queue, limiter: Limiter, heap: list[tuple[int, int, Consumer]],
                 now: float) -> list[tuple[int, int, Consumer]]:
        """The subscribers of a queue with limits, each with the slots it fills in this pass
        (so that the pass starts no more jobs than the limits allow); notes the slots taken,
        and arms the timer for the next one if jobs still wait for it."""
        at = now + self._timeline.offset
        if at < limiter.until:
            # Held back (``throttle``): the timer looks at it again when the hold ends.
            limiter.timed = False
            if self._deadlines.when(Kind.LIMIT, queue.name) != limiter.until:
                self._deadlines.set(Kind.LIMIT, queue.name, limiter.until)
            return []
        if not limiter.limited:
            queue.limiter = None  # the hold is over, and it has no limits of its own
            return heap
        free = -sum(entry[0] for entry in heap)
        waiting = len(queue.waiting)
        count = min(limiter.room(queue.active, at), waiting, free)
        limiter.took(count, at)
        due = limiter.due()
        if count < waiting and limiter.interval is not None and due > at:
            limiter.timed = True
            if self._deadlines.when(Kind.LIMIT, queue.name) != due:
                self._deadlines.set(Kind.LIMIT, queue.name, due)
        else:
            limiter.timed = False
        if count <= 0:
            return []
        if count == free:
            return heap
        # Who would get the first ``count`` jobs under the spreading rule: each to the one with
        # the most free slots, ties to the one served least recently.
        taken: dict[Consumer, int] = {}
        served = self._served
        for _ in range(count):
            negative_free, _, consumer = heap[0]
            taken[consumer] = taken.get(consumer, 0) + 1
            served += 1
            if negative_free < -1:
                heapq.heapreplace(heap, (negative_free + 1, served, consumer))
            else:
                heapq.heappop(heap)
        capped = [(-slots, consumer.served, consumer) for consumer, slots in taken.items()]
        heapq.heapify(capped)
        return capped

    def hold(self, queue: Queue, until: float) -> None:
        """Start no job of ``queue`` before ``until`` (monotonic seconds); a hold ending later
        already stays as it is."""
        limiter = queue.limiter
        if limiter is None:
            limiter = queue.limiter = Limiter(QueueLimits())
        if until > limiter.until:
            limiter.until = until
            limiter.timed = False
            self._deadlines.set(Kind.LIMIT, queue.name, until)

    def limit_due(self, queue: Queue, at: float) -> None:
        """The timer set for ``queue``'s limits came due at ``at`` (monotonic seconds): its
        next slot, or the end of its hold."""
        limiter = queue.limiter
        if limiter is not None and not limiter.limited and at >= limiter.until:
            queue.limiter = None  # the hold is over: an unused queue may be forgotten again
        self.wake(queue)

    def _started(self, queue: Queue, batches: Iterable[list[Job]], delivered: int,
                 now: float) -> None:
        """Count the tries of ``queue`` delivered at ``now``, and time their wait."""
        at = now + self._timeline.offset
        queue.started += delivered
        rate = queue.started_rate
        if rate.at != now:
            rate.begin(now, at)
            delivered -= 1
        rate.pending += delivered
        durations = queue.wait_time
        # Jobs added (or come due) together waited as long: runs of one wait, counted without
        # a call but for the first.
        for jobs in batches:
            for job in jobs:
                job.started = at
                waited = at - job.ready
                if waited == durations.last and at == durations.at:
                    durations.pending += 1
                else:
                    durations.begin(waited, at)
