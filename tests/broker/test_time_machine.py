"""The broker's core under random traffic and a moving clock, through the real ``handle`` and the
real ``flush``, as the server drives them.

Time moves (``advance``: leases run out, delays and retries come due) and the wall clock steps an
hour forward or back; producers use idempotency keys; adds wait for an fsync (``--fsync always``,
with a log whose fsyncs complete when the machine says). After every step: a job is active
exactly when a subscription holds it, no job is lost or in two places, the counts agree with the
log, nothing is answered or dispatched before its record is fsynced, a step of the wall clock
alone changes nothing, and leases and delays run out on the monotonic clock, to the second.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, cast

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from queue_state import raw
from state_checks import check_state

from conveyor.broker import FsyncPolicy
from conveyor.broker.testing import (
    Core,
    Job,
    Kind,
    Log,
    ManualClock,
    Queues,
    Record,
    RecordingPeer,
    flush,
    handle,
)
from conveyor.protocol import (
    Ack,
    Add,
    Added,
    Backoff,
    Deliver,
    Extend,
    Fail,
    JobDef,
    JobError,
    JobState,
    Progress,
    Promote,
    Release,
    Remove,
    Subscribe,
)

OWNERS = ("w1", "w2")
QUEUES = ("a", "b")
KEYS = ("k1", "k2", "k3")
HOUR = 3600.0
MAX_JOBS = 40
EPSILON = 1e-6
"""Seconds: wall and monotonic times are added in a different order here than in the broker."""
BACKOFFS = (None, Backoff(type="fixed", delay=3.0),
            Backoff(type="exponential", delay=0.5, cap=2.0))


def backoff_wait(backoff: Backoff | None, attempt: int) -> float:
    """The wait before the try after ``attempt`` (no jitter here)."""
    if backoff is None:
        return 0.0
    if backoff.type == "fixed":
        return backoff.delay
    wait = backoff.delay * 2.0 ** (attempt - 1)
    return wait if backoff.cap is None else min(wait, backoff.cap)


class SyncedLater:
    """A log under ``--fsync always`` whose fsyncs complete when ``sync`` is called."""

    policy = FsyncPolicy.ALWAYS
    full = False
    """Its disk never fills (tests/log/test_log_disk_full.py covers a full one)."""

    def __init__(self) -> None:
        self.records: list[tuple[int, Record]] = []
        """Every record written, with the log position after it."""
        self.written = 0
        self.synced = 0
        self._waiters: list[tuple[int, Callable[[], None]]] = []

    def append(self, records: Sequence[Record]) -> int:
        for record in records:
            self.written += 1
            self.records.append((self.written, record))
        return self.written

    def when_synced(self, position: int, callback: Callable[[], None]) -> None:
        if self.synced >= position:
            callback()
        else:
            self._waiters.append((position, callback))

    def sync(self) -> None:
        self.synced = self.written
        waiters, self._waiters = self._waiters, []
        for _, callback in waiters:
            callback()


def kind(record: Record) -> str:
    return type(record).__name__


def added_ids(record: Any) -> range:
    return range(record.first_id, record.first_id + len(record.jobs))


class TimeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.log = SyncedLater()
        self.queues = Queues(clock=self.clock, logged=True, max_redeliveries=1,
                             keep_completed=4, keep_failed=4, rng=random.Random(0))
        self.core = Core(self.queues, cast(Log, self.log))
        self.producer = RecordingPeer("producer")
        self.workers = {owner: RecordingPeer(owner) for owner in OWNERS}
        self.req = 0
        self.acknowledged: set[int] = set()
        """Jobs whose add was answered."""
        self.held: dict[int, tuple[str, int]] = {}
        """Jobs the workers were given and have not settled: (owner, lease)."""
        self.heard: dict[tuple[str, str], float] = {}
        """When the broker last heard from each subscription (monotonic)."""
        self.lease: dict[tuple[str, str], float] = {}
        """Each subscription's lease: the one its first ``subscribe`` asked for."""
        self.due: dict[int, float] = {}
        """Delayed jobs and when they must come due (monotonic), where the machine knows it."""
        self.created_mono: dict[int, float] = {}
        """When each job was added (monotonic)."""
        self.stepped_while_pending: set[int] = set()

    # Helpers.

    def mono(self) -> float:
        return self.clock.monotonic()

    def now(self) -> float:
        return self.queues.now()

    def next_req(self) -> int:
        self.req += 1
        return self.req

    def consumer_key(self, job: Job) -> tuple[str, str]:
        assert job.holder is not None
        return cast(RecordingPeer, job.holder.owner).name, job.queue

    def states(self) -> dict[int, tuple[JobState, object, int]]:
        return {job_id: (job.state, job.holder, job.lease)
                for job_id, job in self.queues.jobs.items()}

    def forget_settled(self) -> None:
        """Drop from ``held`` what the broker no longer leases to that worker."""
        for job_id, (owner, lease) in list(self.held.items()):
            job = self.queues.jobs.get(job_id)
            if (job is None or job.lease != lease or job.holder is None
                    or cast(RecordingPeer, job.holder.owner).name != owner):
                del self.held[job_id]

    def run_flush(self) -> None:
        self.forget_settled()
        idle = {(owner, name) for owner in OWNERS for name in QUEUES
                if (c := self.queues.consumer(self.workers[owner], name)) is not None
                and not c.held}
        pending = {job_id for job_id, job in self.queues.jobs.items() if job.pending}
        flush(self.core, self.now())
        for message in self.producer.take():
            if isinstance(message, Added):
                self.acknowledged.update(message.ids)
        for owner, peer in self.workers.items():
            for message in peer.take():
                if not isinstance(message, Deliver):
                    continue
                if (owner, message.queue) in idle:
                    self.heard[owner, message.queue] = self.mono()  # its lease starts now
                for delivery in message.jobs:
                    assert delivery.job not in self.held, f"job {delivery.job} given twice"
                    self.held[delivery.job] = (owner, delivery.lease)
        # Jobs that joined their lines delayed: due after their delay, on the monotonic clock.
        for job_id in pending:
            job = self.queues.jobs.get(job_id)
            if (job is not None and not job.pending and job.state is JobState.DELAYED
                    and job_id not in self.stepped_while_pending):
                assert job.run_at is not None
                self.due[job_id] = self.created_mono[job_id] + (job.run_at - job.created_at)
        self.stepped_while_pending -= pending

    def tick(self) -> None:
        """The server's timer: serve what is due, then a flush."""
        before = self.states()
        mono = self.mono()
        self.queues.tick(self.now())
        for job_id, (state, holder, _) in before.items():
            job = self.queues.jobs.get(job_id)
            if state is JobState.ACTIVE and (job is None or job.holder is not holder):
                # Taken back: its subscription was silent for a whole lease.
                consumer = cast(Any, holder)
                key = (consumer.owner.name, consumer.queue.name)
                assert mono > self.heard[key] + self.lease[key] - EPSILON, "a lease ran out early"
            if state is JobState.DELAYED and job_id in self.due:
                came_due = job is None or job.state is not JobState.DELAYED
                due = self.due[job_id]
                assert not came_due or mono > due - EPSILON, f"job {job_id} came due early"
                assert came_due or mono < due + EPSILON, f"job {job_id} is late"
                if came_due:
                    del self.due[job_id]
        for job in self.queues.jobs.values():
            if job.state is JobState.ACTIVE:
                key = self.consumer_key(job)
                assert mono < self.heard[key] + self.lease[key] + EPSILON, \
                    "a lease outlived its period"
            if job.state is JobState.DELAYED and not job.pending:
                deadline = self.queues.deadlines.when(Kind.DUE, job.id)
                assert deadline is not None and deadline > mono, "a due job is still delayed"
        self.run_flush()

    @initialize(window=st.integers(1, 3), lease=st.sampled_from([5.0, 20.0]))
    def start_workers(self, window: int, lease: float) -> None:
        for owner in OWNERS:
            for queue in QUEUES:
                self.subscribe(owner, queue, window, lease)

    # Producers.

    @rule(queue=st.sampled_from(QUEUES),
          specs=st.lists(st.tuples(st.sampled_from((None, None, *KEYS)),
                                   st.sampled_from((0.0, 0.0, 2.0, 30.0)),
                                   st.integers(1, 3), st.sampled_from(BACKOFFS)),
                         min_size=1, max_size=4))
    def add(self, queue: str, specs: list[tuple[str | None, float, int, Backoff | None]]) -> None:
        if len(self.queues.jobs) >= MAX_JOBS:
            return
        jobs = []
        for key, delay, attempts, backoff in specs:
            jobs.append(JobDef(data=raw(self.req), id=key, delay=delay, attempts=attempts,
                               backoff=backoff))
        before = set(self.queues.jobs)
        handle(self.core, self.producer, Add(req=self.next_req(), queue=queue, jobs=jobs),
               self.now())
        for job_id in set(self.queues.jobs) - before:
            self.created_mono[job_id] = self.mono()

    @rule(fsync=st.sampled_from([False, True, True]))
    def flush(self, fsync: bool) -> None:
        """A loop pass ends (after an fsync completed, which makes the server run a flush)."""
        if fsync:
            self.log.sync()
        self.run_flush()

    # Workers.

    @rule(owner=st.sampled_from(OWNERS), queue=st.sampled_from(QUEUES), window=st.integers(0, 3),
          lease=st.sampled_from([5.0, 20.0]))
    def subscribe(self, owner: str, queue: str, window: int, lease: float) -> None:
        peer = self.workers[owner]
        if self.queues.consumer(peer, queue) is None:
            self.heard[owner, queue] = self.mono()
            self.lease[owner, queue] = lease
        handle(self.core, peer, Subscribe(req=self.next_req(), queue=queue, window=window,
                                          lease=lease), self.now())
        self.run_flush()

    @precondition(lambda self: self.held)
    @rule(data=st.data(), action=st.sampled_from(["ack", "fail", "fail", "release", "progress"]),
          delay=st.sampled_from([None, None, 0.0, 4.0]))
    def settle(self, data: st.DataObject, action: str, delay: float | None) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.held)), label="job")
        owner, lease = self.held[job_id]
        peer = self.workers[owner]
        job = self.queues.jobs.get(job_id)
        live = (job is not None and job.lease == lease and job.holder is not None
                and job.holder.owner is peer)
        message: Any
        if action == "ack":
            message = Ack(job=job_id, lease=lease, result=raw("done"))
        elif action == "fail":
            message = Fail(job=job_id, lease=lease, error=JobError(type="E", message="m"),
                           delay=delay)
        elif action == "release":
            message = Release(job=job_id, lease=lease)
        else:
            message = Progress(job=job_id, lease=lease, progress=raw(50))
        attempt = job.attempt if job is not None else 0
        handle(self.core, peer, message, self.now())
        if live:
            assert job is not None
            self.heard[owner, job.queue] = self.mono()
            if action == "fail" and job.state is JobState.DELAYED:
                wait = delay if delay is not None else backoff_wait(job.options.backoff, attempt)
                self.due[job_id] = self.mono() + wait
        if action != "progress":
            self.held.pop(job_id, None)
        self.run_flush()

    @rule(owner=st.sampled_from(OWNERS), queue=st.sampled_from(QUEUES))
    def extend(self, owner: str, queue: str) -> None:
        if self.queues.consumer(self.workers[owner], queue) is not None:
            self.heard[owner, queue] = self.mono()
        handle(self.core, self.workers[owner], Extend(queue=queue), self.now())

    @rule(owner=st.sampled_from(OWNERS))
    def disconnect(self, owner: str) -> None:
        # What the server does when a connection closes.
        peer = self.workers[owner]
        self.core.waiters.drop(peer)
        self.core.watchers.drop(peer)
        self.queues.drop(peer, self.now())
        for key in [key for key in self.heard if key[0] == owner]:
            del self.heard[key], self.lease[key]
        self.run_flush()

    # Steering.

    @precondition(lambda self: self.queues.jobs)
    @rule(data=st.data(), action=st.sampled_from(["promote", "remove"]))
    def steer(self, data: st.DataObject, action: str) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.queues.jobs)), label="job")
        build = Promote if action == "promote" else Remove
        handle(self.core, self.producer, build(req=self.next_req(), job=job_id), self.now())
        job = self.queues.jobs.get(job_id)
        if job is None or job.state is not JobState.DELAYED:
            self.due.pop(job_id, None)
        self.run_flush()

    # Time.

    @rule(seconds=st.sampled_from([0.5, 2.0, 4.9, 6.0, 21.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.tick()

    @rule(step=st.sampled_from([HOUR, -HOUR]))
    def step(self, step: float) -> None:
        before = self.states()
        self.stepped_while_pending |= {job_id for job_id, job in self.queues.jobs.items()
                                       if job.pending}
        self.clock.step(step)
        self.queues.tick(self.now())
        assert self.states() == before, "a step of the wall clock changed jobs"
        self.run_flush()

    # Invariants.

    @invariant()
    def state_is_consistent(self) -> None:
        check_state(self.queues)

    @invariant()
    def nothing_before_its_fsync(self) -> None:
        synced = {job_id for position, record in self.log.records
                  if position <= self.log.synced and kind(record).startswith("JobsAdded")
                  for job_id in added_ids(record)}
        assert self.acknowledged <= synced, "an add was answered before its fsync"
        for job_id, job in self.queues.jobs.items():
            assert job.pending or job_id in synced, f"job {job_id} in line before its fsync"

    @invariant()
    def no_job_lost(self) -> None:
        gone: set[int] = set()
        for _, record in self.log.records:
            if kind(record) == "JobFinished":
                gone.add(cast(Any, record).id)
            elif kind(record) == "JobsRemoved":
                gone.update(cast(Any, record).ids)
        for job_id in self.acknowledged:
            assert job_id in self.queues.jobs or job_id in gone, f"job {job_id} was lost"

    @invariant()
    def totals_match_the_log(self) -> None:
        queue_of: dict[int, str] = {}
        totals: dict[str, list[int]] = {name: [0, 0] for name in QUEUES}
        for _, record in self.log.records:
            if kind(record).startswith("JobsAdded"):
                for job_id in added_ids(record):
                    queue_of[job_id] = cast(Any, record).queue
            elif kind(record) == "JobFinished":
                finished = cast(Any, record)
                totals[queue_of[finished.id]][finished.error is not None] += 1
        for name, (completed, failed) in totals.items():
            counts = self.queues.counts(name)
            assert (counts["completed"], counts["failed"]) == (completed, failed)


TimeMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=40,
                                         deadline=None)
TestTimeMachine = TimeMachine.TestCase
