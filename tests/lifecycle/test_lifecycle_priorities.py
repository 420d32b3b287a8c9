"""Priorities on the queue state machine (fake clock): higher priority first, first in first out
within a priority; a job handed back goes to the head of its priority. Then the core properties
of dispatch (credit never exceeded, work-conserving, every job in exactly one place, the active
counter equal to the jobs held) under random traffic that mixes priorities, delays, retries with
backoff, releases, lost workers, promotion, pause, removal and retries of failed jobs; the
waiting line is checked against a model after every step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from queue_state import raw

from conveyor.broker.testing import Consumer, Job, Queues, StateError
from conveyor.protocol import Backoff, JobDef, JobError, JobState

WAITING = JobState.WAITING
DELAYED = JobState.DELAYED
ACTIVE = JobState.ACTIVE
COMPLETED = JobState.COMPLETED
FAILED = JobState.FAILED

LONG_LEASE = 1e9
"""Seconds: leases never run out here (they have tests of their own)."""


def ids(jobs: Iterable[Job]) -> list[int]:
    return [job.id for job in jobs]


def add(queues: Queues, priorities: list[int], now: float = 0.0, queue: str = "q") -> list[int]:
    jobs = queues.create(queue, [JobDef(data=raw(p), priority=p) for p in priorities], now)
    queues.enqueue(jobs)
    return ids(jobs)


def dispatched_ids(dispatched: list[tuple[Consumer, list[Job]]]) -> list[int]:
    return [job.id for _, jobs in dispatched for job in jobs]


def by_priority(queues: Queues, job_ids: Iterable[int]) -> list[int]:
    """``job_ids`` in dispatch order when all were added fresh: priority, then arrival."""
    return sorted(job_ids, key=lambda job_id: (-queues.jobs[job_id].priority, job_id))


@settings(max_examples=200, deadline=None)
@given(batches=st.lists(st.lists(st.integers(-3, 3), max_size=20), max_size=6))
def test_a_backlog_is_dispatched_by_priority_then_arrival(batches: list[list[int]]) -> None:
    queues = Queues()
    added = [job_id for batch in batches for job_id in add(queues, batch)]
    assert ids(queues.queue("q").waiting) == by_priority(queues, added)
    queues.subscribe("w", "q", len(added) + 1, lease=LONG_LEASE)
    assert dispatched_ids(queues.dispatch()) == by_priority(queues, added)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.one_of(
    st.tuples(st.just("add"), st.lists(st.sampled_from([-1, 0, 0, 2, 5]), min_size=1,
                                       max_size=8)),
    st.tuples(st.just("take"), st.integers(1, 6)),
), max_size=30))
def test_each_take_gets_the_highest_priority_oldest_jobs(steps: list[tuple[str, Any]]) -> None:
    queues = Queues()
    waiting: list[int] = []
    for kind, arg in steps:
        if kind == "add":
            waiting += add(queues, arg)
            continue
        # A worker with ``arg`` free slots takes jobs, then finishes them all.
        queues.subscribe("w", "q", arg, lease=LONG_LEASE)
        taken = dispatched_ids(queues.dispatch())
        expected = by_priority(queues, waiting)[:arg]
        assert taken == expected
        waiting = [job_id for job_id in waiting if job_id not in taken]
        for job_id in taken:
            job = queues.jobs[job_id]
            queues.ack("w", job_id, job.lease, raw(None), 0.0)
        queues.subscribe("w", "q", 0)
    assert ids(queues.queue("q").waiting) == by_priority(queues, waiting)


def test_a_released_job_goes_to_the_head_of_its_priority() -> None:
    queues = Queues()
    low1, mid1, high, mid2, mid3, low2 = add(queues, [0, 5, 9, 5, 5, 0])
    queues.subscribe("w", "q", 2, lease=LONG_LEASE)
    assert dispatched_ids(queues.dispatch()) == [high, mid1]
    job = queues.jobs[mid1]
    queues.release("w", mid1, job.lease)
    # Behind nothing of its priority, and still behind a higher one when there is one.
    assert ids(queues.queue("q").waiting) == [mid1, mid2, mid3, low1, low2]
    (top,) = add(queues, [9])
    assert ids(queues.queue("q").waiting) == [top, mid1, mid2, mid3, low1, low2]
    assert job.attempt == 0 and job.state is WAITING


def test_jobs_of_a_lost_worker_go_to_the_heads_of_their_priorities_in_delivery_order() -> None:
    queues = Queues()
    added = add(queues, [1, 7, 1, 7, 4])
    queues.subscribe("w", "q", 3, lease=LONG_LEASE)
    taken = dispatched_ids(queues.dispatch())
    assert taken == by_priority(queues, added)[:3]  # 7, 7, 4
    later = add(queues, [7, 4, 1])
    queues.drop("w", 1.0)
    line = ids(queues.queue("q").waiting)
    assert line == [taken[0], taken[1], later[0], taken[2], later[1], added[0], added[2],
                    later[2]]


def test_a_retry_without_backoff_and_a_due_job_join_the_tail_of_their_priority() -> None:
    queues = Queues()
    queues.subscribe("w", "q", 1, lease=LONG_LEASE)
    (first,) = queues.create("q", [JobDef(data=raw(0), priority=3, attempts=2)], 0.0)
    queues.enqueue([first])
    assert dispatched_ids(queues.dispatch()) == [first.id]
    (late,) = queues.create("q", [JobDef(data=raw(1), priority=3, delay=1.0)], 0.0)
    queues.enqueue([late])
    others = add(queues, [3, 0, 3])
    queues.fail("w", first.id, first.lease, JobError(type="E", message=""), 0.5)
    queues.tick(1.0)
    assert ids(queues.queue("q").waiting) == [others[0], others[2], first.id, late.id,
                                              others[1]]


# The state machine with the lifecycle in the mix.

OWNERS = ("w1", "w2", "w3")
QUEUE_NAMES = ("a", "b")
MAX_REDELIVERIES = 1
BACKOFFS = [None, Backoff(type="fixed", delay=1.0),
            Backoff(type="exponential", delay=0.5, cap=2.0)]


class Spec(msgspec.Struct, frozen=True):
    priority: int
    delay: float
    attempts: int
    backoff: Backoff | None


specs = st.builds(
    Spec,
    priority=st.sampled_from([0, 0, 1, 3]),
    delay=st.sampled_from([0.0, 0.0, 0.5, 1.5, 4.0]),
    attempts=st.integers(1, 3),
    backoff=st.sampled_from(BACKOFFS),
)


def expected_wait(backoff: Backoff | None, attempt: int) -> float:
    """The backoff a failed try waits (no jitter here), computed apart from the broker's code."""
    if backoff is None:
        return 0.0
    if backoff.type == "fixed":
        return backoff.delay
    wait = backoff.delay * 2.0 ** (attempt - 1)
    return wait if backoff.cap is None else min(wait, backoff.cap)


class LifecycleMachine(RuleBasedStateMachine):
    """Random lifecycle traffic on two queues, a dispatch after every step, as the server does.

    The model keeps each queue's expected waiting line (priority, then: added, retried, due or
    promoted jobs at the tail of their priority; released or lost ones at the head), the
    delayed jobs with their due times, the held jobs, and every finished job.
    """

    def __init__(self) -> None:
        super().__init__()
        self.queues = Queues(max_redeliveries=MAX_REDELIVERIES, keep_completed=1 << 30,
                             keep_failed=1 << 30)
        self.now = 1000.0
        self.steps = 0
        self.line: dict[str, list[int]] = {name: [] for name in QUEUE_NAMES}
        self.delayed: dict[int, tuple[float, int]] = {}
        """Delayed job -> (due time, order it was scheduled in)."""
        self.scheduled = 0
        self.finished: dict[int, JobState] = {}
        self.failed_order: dict[str, list[int]] = {name: [] for name in QUEUE_NAMES}
        self.spec: dict[int, Spec] = {}
        self.queue_of: dict[int, str] = {}
        self.attempt: dict[int, int] = {}
        self.drops: dict[int, int] = {}
        self.last_held: dict[Consumer, int] = {}

    # Helpers.

    def step(self) -> float:
        # A slightly different stride each step keeps due times from tying by accident.
        self.steps += 1
        self.now += 0.25 + self.steps * 1e-7
        return self.now

    def consumers(self) -> list[Consumer]:
        return [c for q in self.queues.queues.values() for c in q.consumers.values()]

    def held(self) -> list[tuple[Consumer, Job]]:
        return [(c, job) for c in self.consumers() for job in c.held.values()]

    def in_state(self, *states: JobState) -> list[Job]:
        return [job for _, job in sorted(self.queues.jobs.items()) if job.state in states]

    def to_head(self, job_id: int) -> None:
        """Model: ``job_id`` goes ahead of every waiting job of its priority."""
        line = self.line[self.queue_of[job_id]]
        priority = self.spec[job_id].priority
        at = next((i for i, other in enumerate(line) if self.spec[other].priority <= priority),
                  len(line))
        line.insert(at, job_id)

    def to_tail(self, job_id: int) -> None:
        """Model: ``job_id`` goes behind every waiting job of its priority."""
        line = self.line[self.queue_of[job_id]]
        priority = self.spec[job_id].priority
        at = next((i for i, other in enumerate(line) if self.spec[other].priority < priority),
                  len(line))
        line.insert(at, job_id)

    def delay(self, job_id: int, run_at: float) -> None:
        self.scheduled += 1
        self.delayed[job_id] = (run_at, self.scheduled)

    def finish(self, job_id: int, state: JobState) -> None:
        self.finished[job_id] = state
        if state is FAILED:
            self.failed_order[self.queue_of[job_id]].append(job_id)

    def dispatch(self) -> None:
        before_held = {c: len(c.held) for c in self.consumers()}
        dispatched = self.queues.dispatch(self.now)
        taken: dict[str, list[int]] = {name: [] for name in QUEUE_NAMES}
        for consumer, jobs in dispatched:
            assert len(consumer.held) == before_held[consumer] + len(jobs)
            assert len(consumer.held) <= consumer.window
            for job in jobs:
                assert job.state is ACTIVE and job.holder is consumer
                self.attempt[job.id] += 1
                assert job.attempt == self.attempt[job.id]
                taken[consumer.queue.name].append(job.id)
        for name, job_ids in taken.items():
            # Jobs leave from the head of the line, in line order.
            line = self.line[name]
            assert sorted(job_ids) == sorted(line[:len(job_ids)]), name
            del line[:len(job_ids)]
            if job_ids:
                assert not self.queues.queues[name].paused

    # Rules.

    @rule(name=st.sampled_from(QUEUE_NAMES), jobs=st.lists(specs, min_size=1, max_size=5))
    def add(self, name: str, jobs: list[Spec]) -> None:
        now = self.step()
        created = self.queues.create(name, [
            JobDef(data=raw(i), priority=s.priority, delay=s.delay, attempts=s.attempts,
                   backoff=s.backoff) for i, s in enumerate(jobs)], now)
        self.queues.enqueue(created)
        for job, spec in zip(created, jobs, strict=True):
            self.spec[job.id] = spec
            self.queue_of[job.id] = name
            self.attempt[job.id] = 0
            self.drops[job.id] = 0
            if spec.delay > 0:
                assert job.state is DELAYED
                self.delay(job.id, now + spec.delay)
            else:
                self.to_tail(job.id)
        self.dispatch()

    @rule(owner=st.sampled_from(OWNERS), name=st.sampled_from(QUEUE_NAMES),
          window=st.integers(0, 4))
    def subscribe(self, owner: str, name: str, window: int) -> None:
        self.step()
        self.queues.subscribe(owner, name, window, lease=LONG_LEASE)
        self.dispatch()

    @precondition(lambda self: self.held())
    @rule(data=st.data(), action=st.sampled_from(["ack", "fail", "release"]),
          retry=st.booleans(), delay=st.sampled_from([None, None, 0.0, 0.75]))
    def settle(self, data: st.DataObject, action: str, retry: bool,
               delay: float | None) -> None:
        now = self.step()
        consumer, job = data.draw(st.sampled_from(self.held()), label="held job")
        owner, job_id = consumer.owner, job.id
        if action == "ack":
            assert self.queues.ack(owner, job_id, job.lease, raw("ok"), now) is job
            self.finish(job_id, COMPLETED)
        elif action == "release":
            assert self.queues.release(owner, job_id, job.lease, now) is job
            self.attempt[job_id] -= 1
            self.to_head(job_id)
        else:
            error = JobError(type="E", message=f"try {job.attempt}")
            assert self.queues.fail(owner, job_id, job.lease, error, now, retry=retry,
                                    delay=delay) is job
            spec = self.spec[job_id]
            if retry and self.attempt[job_id] < spec.attempts:
                wait = delay if delay is not None else expected_wait(spec.backoff,
                                                                     self.attempt[job_id])
                if wait > 0:
                    self.delay(job_id, now + wait)
                else:
                    self.to_tail(job_id)
            else:
                self.finish(job_id, FAILED)
        self.dispatch()

    @rule(owner=st.sampled_from(OWNERS))
    def lose_worker(self, owner: str) -> None:
        now = self.step()
        lost = {name: list(q.consumers[owner].held) for name, q in self.queues.queues.items()
                if owner in q.consumers}
        self.queues.drop(owner, now)
        for held in lost.values():
            back = []
            for job_id in held:
                self.drops[job_id] += 1
                if self.drops[job_id] > MAX_REDELIVERIES:
                    self.finish(job_id, FAILED)
                else:
                    self.attempt[job_id] -= 1
                    back.append(job_id)
            for job_id in reversed(back):
                self.to_head(job_id)
        self.dispatch()

    @rule(seconds=st.sampled_from([0.3, 1.0, 2.5, 10.0]))
    def advance(self, seconds: float) -> None:
        self.now = self.step() + seconds
        self.queues.tick(self.now)
        due = sorted((entry, job_id) for job_id, entry in self.delayed.items()
                     if entry[0] <= self.now)
        for _, job_id in due:
            del self.delayed[job_id]
            self.to_tail(job_id)
        self.dispatch()

    @precondition(lambda self: self.delayed)
    @rule(data=st.data())
    def promote(self, data: st.DataObject) -> None:
        self.step()
        job_id = data.draw(st.sampled_from(sorted(self.delayed)), label="delayed job")
        assert self.queues.promote(job_id) is self.queues.jobs[job_id]
        del self.delayed[job_id]
        self.to_tail(job_id)
        self.dispatch()

    @rule(name=st.sampled_from(QUEUE_NAMES), paused=st.booleans())
    def pause(self, name: str, paused: bool) -> None:
        self.step()
        self.queues.pause(name, paused)
        self.dispatch()

    @precondition(lambda self: self.in_state(WAITING, DELAYED, COMPLETED, FAILED))
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        self.step()
        job = data.draw(st.sampled_from(self.in_state(WAITING, DELAYED, COMPLETED, FAILED)),
                        label="job")
        assert self.queues.remove(job.id) is job
        self.forget(job.id)
        self.dispatch()

    @precondition(lambda self: self.held())
    @rule(data=st.data())
    def remove_active_is_refused(self, data: st.DataObject) -> None:
        _, job = data.draw(st.sampled_from(self.held()), label="held job")
        with pytest.raises(StateError):
            self.queues.remove(job.id)
        assert job.state is ACTIVE

    @rule(name=st.sampled_from(QUEUE_NAMES))
    def retry_failed(self, name: str) -> None:
        self.step()
        count = self.queues.retry_failed(name)
        again = self.failed_order[name]
        assert count == len(again)
        for job_id in again:
            del self.finished[job_id]
            self.attempt[job_id] = 0
            self.to_tail(job_id)
        self.failed_order[name] = []
        self.dispatch()

    @rule(name=st.sampled_from(QUEUE_NAMES))
    def drain(self, name: str) -> None:
        self.step()
        gone = self.line[name] + [j for j in self.delayed if self.queue_of[j] == name]
        assert self.queues.drain(name) == len(gone)
        for job_id in gone:
            self.forget(job_id)
        self.dispatch()

    def forget(self, job_id: int) -> None:
        name = self.queue_of[job_id]
        if job_id in self.line[name]:
            self.line[name].remove(job_id)
        self.delayed.pop(job_id, None)
        if self.finished.pop(job_id, None) is FAILED:
            self.failed_order[name].remove(job_id)
        del self.spec[job_id]

    # Invariants.

    @invariant()
    def waiting_lines_match_the_model(self) -> None:
        for name in QUEUE_NAMES:
            queue = self.queues.queues.get(name)
            line = [] if queue is None else ids(queue.waiting)
            assert line == self.line[name], name

    @invariant()
    def delayed_jobs_match_the_model(self) -> None:
        delayed = {job_id: job.run_at for q in self.queues.queues.values()
                   for job_id, job in q.delayed.items()}
        assert delayed == {job_id: run_at for job_id, (run_at, _) in self.delayed.items()}

    @invariant()
    def every_job_is_in_exactly_one_place(self) -> None:
        places: list[int] = []
        for name, queue in self.queues.queues.items():
            for job in queue.waiting:
                assert job.state is WAITING and job.queue == name and job.holder is None
                places.append(job.id)
            for job in queue.delayed.values():
                assert job.state is DELAYED and job.queue == name and job.holder is None
                places.append(job.id)
            for consumer in queue.consumers.values():
                for job in consumer.held.values():
                    assert job.state is ACTIVE and job.holder is consumer and job.queue == name
                    places.append(job.id)
            for state in (COMPLETED, FAILED):
                for job in self.queues.finished_jobs(queue, state):
                    assert job.state is state and self.finished[job.id] is state
                    places.append(job.id)
        assert sorted(places) == sorted(self.spec) == sorted(self.queues.jobs)
        for job_id, job in self.queues.jobs.items():
            assert job.attempt == self.attempt[job_id] and job.drops == self.drops[job_id]
            assert job.priority == self.spec[job_id].priority

    @invariant()
    def active_counter_equals_the_jobs_held(self) -> None:
        for name, queue in self.queues.queues.items():
            held = sum(len(c.held) for c in queue.consumers.values())
            counts = self.queues.counts(name)
            assert queue.active == held == counts["active"]
            assert counts["waiting"] == len(self.line[name])
            assert counts["delayed"] == sum(self.queue_of[j] == name for j in self.delayed)

    @invariant()
    def work_conserving(self) -> None:
        for queue in self.queues.queues.values():
            if queue.waiting and not queue.paused:
                assert all(c.free <= 0 for c in queue.consumers.values()), queue.name

    @invariant()
    def credit_never_grows_past_the_window(self) -> None:
        for consumer in self.consumers():
            count = len(consumer.held)
            # Over the window only after the window was lowered, and then never growing.
            assert count <= consumer.window or count <= self.last_held.get(consumer, 0)
            self.last_held[consumer] = count


LifecycleMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=50, deadline=None
)
TestLifecycleMachine = LifecycleMachine.TestCase
