"""The queue state machine, driven directly with a fake clock: dispatch, credit, leases, drops."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from state_checks import check_active_exactly_when_held

from conveyor.broker.testing import Consumer, Job, Queues
from conveyor.protocol import JobError, JobState

WAITING = JobState.WAITING
ACTIVE = JobState.ACTIVE
COMPLETED = JobState.COMPLETED
FAILED = JobState.FAILED


def payload(value: object) -> msgspec.Raw:
    return msgspec.Raw(msgspec.msgpack.encode(value))


def payloads(count: int, start: int = 0) -> list[msgspec.Raw]:
    return [payload(start + i) for i in range(count)]


def ids(jobs: Iterable[Job]) -> list[int]:
    return [job.id for job in jobs]


def by_owner(dispatched: list[tuple[Consumer, list[Job]]]) -> dict[Hashable, list[int]]:
    return {consumer.owner: ids(jobs) for consumer, jobs in dispatched}


def held(queues: Queues, owner: Hashable, queue: str = "q") -> list[int]:
    consumer = queues.consumer(owner, queue)
    assert consumer is not None
    return list(consumer.held)


def ack_all(queues: Queues, owner: Hashable, now: float = 0.0, queue: str = "q") -> None:
    consumer = queues.consumer(owner, queue)
    assert consumer is not None
    for job in list(consumer.held.values()):
        assert queues.ack(owner, job.id, job.lease, payload("done"), now) is job


def waiting_ids(queues: Queues, queue: str = "q") -> list[int]:
    return ids(queues.queue(queue).waiting)


def counts(queues: Queues, queue: str = "q") -> tuple[int, ...]:
    """(waiting, active, delayed, completed, failed, workers) as ``counts`` reports them."""
    c = queues.counts(queue)
    return (c["waiting"], c["active"], c["delayed"], c["completed"], c["failed"], c["workers"])


# Dispatch order.


def test_most_free_slots_first() -> None:
    queues = Queues()
    queues.subscribe("small", "q", 1)  # subscribed first: it would win a round-robin tie
    queues.subscribe("big", "q", 5)
    queues.add("q", payloads(1), 0.0)
    assert by_owner(queues.dispatch()) == {"big": [1]}
    # big now has 4 free against small's 1: more free slots beat round-robin order.
    queues.add("q", payloads(1), 0.0)
    assert by_owner(queues.dispatch()) == {"big": [2]}
    # 3 free against 1, then 2 against 1, then a 1-1 tie that small (served longer ago) wins.
    queues.add("q", payloads(3), 0.0)
    assert by_owner(queues.dispatch()) == {"big": [3, 4], "small": [5]}


def test_ties_go_round_robin_across_single_adds() -> None:
    queues = Queues()
    for owner in ("a", "b", "c"):
        queues.subscribe(owner, "q", 2)
    order = []
    for _ in range(9):
        queues.add("q", payloads(1), 0.0)
        ((consumer, jobs),) = queues.dispatch()
        order.append(consumer.owner)
        # Acking at once keeps every consumer equally free: only the tie-break decides.
        ack_all(queues, consumer.owner)
    assert order == ["a", "b", "c"] * 3


def test_single_adds_spread_before_stacking() -> None:
    queues = Queues()
    for owner in ("a", "b", "c"):
        queues.subscribe(owner, "q", 2)
    order = []
    for _ in range(6):
        queues.add("q", payloads(1), 0.0)
        ((consumer, _jobs),) = queues.dispatch()
        order.append(consumer.owner)
    assert order == ["a", "b", "c"] * 2
    queues.add("q", payloads(1), 0.0)
    assert queues.dispatch() == []  # every window is full: the job waits
    assert counts(queues) == (1, 6, 0, 0, 0, 3)


def test_jobs_leave_in_arrival_order() -> None:
    queues = Queues()
    queues.add("q", payloads(5), 0.0)
    queues.subscribe("a", "q", 10)
    ((_, jobs),) = queues.dispatch()
    assert ids(jobs) == [1, 2, 3, 4, 5]
    assert [msgspec.msgpack.decode(job.data) for job in jobs] == [0, 1, 2, 3, 4]
    assert all(job.attempt == 1 and job.state is ACTIVE for job in jobs)
    assert len({job.lease for job in jobs}) == 5


def test_window_zero_stops_deliveries_until_raised() -> None:
    queues = Queues()
    queues.subscribe("a", "q", 0)
    queues.add("q", payloads(3), 0.0)
    assert queues.dispatch() == []
    queues.subscribe("a", "q", 2)
    assert by_owner(queues.dispatch()) == {"a": [1, 2]}


def test_lowering_a_window_keeps_held_jobs_but_stops_deliveries() -> None:
    queues = Queues()
    queues.subscribe("a", "q", 3)
    queues.add("q", payloads(5), 0.0)
    assert by_owner(queues.dispatch()) == {"a": [1, 2, 3]}
    queues.subscribe("a", "q", 1)
    assert held(queues, "a") == [1, 2, 3]  # nothing is revoked
    consumer = queues.consumer("a", "q")
    assert consumer is not None
    for job_id in (1, 2):
        job = consumer.held[job_id]
        queues.ack("a", job_id, job.lease, payload(None), 1.0)
        assert queues.dispatch() == []  # still at or over the new window
    job = consumer.held[3]
    queues.ack("a", 3, job.lease, payload(None), 1.0)
    assert by_owner(queues.dispatch()) == {"a": [4]}


# Leases.


def test_ack_completes_and_records_result() -> None:
    queues = Queues()
    queues.subscribe("a", "q", 1)
    queues.add("q", [payload("x")], 1.0)
    ((_, (job,)),) = queues.dispatch()
    assert queues.ack("a", job.id, job.lease, payload({"ok": True}), 7.5) is job
    info = job.info()
    assert info.state is COMPLETED
    assert msgspec.msgpack.decode(info.result) == {"ok": True}
    assert info.finished_at == 7.5 and info.created_at == 1.0
    assert queues.take_outbox().finished == [job]
    assert counts(queues) == (0, 0, 0, 1, 0, 1)


def test_fail_records_error() -> None:
    queues = Queues()
    queues.subscribe("a", "q", 1)
    queues.add("q", payloads(1), 0.0)
    ((_, (job,)),) = queues.dispatch()
    error = JobError(type="ValueError", message="bad", traceback="tb")
    assert queues.fail("a", job.id, job.lease, error, 3.0) is job
    assert job.info().state is FAILED and job.info().error == error
    assert counts(queues) == (0, 0, 0, 0, 1, 1)


def test_stale_or_foreign_lease_is_rejected_and_changes_nothing() -> None:
    queues = Queues()
    queues.subscribe("a", "q", 1)
    queues.subscribe("b", "q", 1)
    queues.add("q", payloads(1), 0.0)
    ((first, (job,)),) = queues.dispatch()
    old_lease = job.lease
    assert queues.release(first.owner, job.id, old_lease) is job
    ((second, (again,)),) = queues.dispatch()
    assert again is job and job.lease != old_lease
    other = "a" if second.owner == "b" else "b"
    attempts = [
        (second.owner, old_lease),  # the lease given back by the release
        (other, job.lease),  # the right lease from the wrong connection
        (second.owner, 0),
        (second.owner, job.lease + 1),
    ]
    for owner, lease in attempts:
        assert queues.ack(owner, job.id, lease, payload(1), 1.0) is None
        assert queues.fail(owner, job.id, lease, JobError(type="E", message=""), 1.0) is None
        assert queues.release(owner, job.id, lease) is None
        assert queues.progress(owner, job.id, lease, payload(50)) is False
    assert queues.ack(second.owner, 999, job.lease, payload(1), 1.0) is None
    assert job.state is ACTIVE and job.holder is second and held(queues, second.owner) == [job.id]
    assert counts(queues) == (0, 1, 0, 0, 0, 2)
    assert queues.take_outbox().finished == []
    assert queues.progress(second.owner, job.id, job.lease, payload(50))
    assert msgspec.msgpack.decode(job.info().progress) == 50


def test_second_ack_of_the_same_lease_is_rejected() -> None:
    queues = Queues()
    queues.subscribe("a", "q", 1)
    queues.add("q", payloads(1), 0.0)
    ((_, (job,)),) = queues.dispatch()
    lease = job.lease
    assert queues.ack("a", job.id, lease, payload("first"), 1.0) is job
    assert queues.ack("a", job.id, lease, payload("second"), 2.0) is None
    assert msgspec.msgpack.decode(job.result) == "first" and job.finished_at == 1.0
    assert counts(queues) == (0, 0, 0, 1, 0, 1)


def test_release_puts_job_at_head_with_attempt_given_back() -> None:
    queues = Queues()
    queues.subscribe("a", "q", 1)
    queues.add("q", payloads(3), 0.0)
    ((_, (job,)),) = queues.dispatch()
    assert job.id == 1 and job.attempt == 1
    lease = job.lease
    assert queues.release("a", job.id, lease) is job
    assert waiting_ids(queues) == [1, 2, 3]
    assert job.state is WAITING and job.attempt == 0 and job.holder is None
    assert counts(queues) == (3, 0, 0, 0, 0, 1)
    ((_, (again,)),) = queues.dispatch()
    assert again is job and job.attempt == 1 and job.lease != lease


# Dropped connections.


def test_dropped_jobs_return_to_head_in_delivery_order() -> None:
    queues = Queues()
    queues.subscribe("a", "q", 2)
    queues.subscribe("b", "q", 2)
    queues.add("q", payloads(4), 0.0)
    assert by_owner(queues.dispatch()) == {"a": [1, 3], "b": [2, 4]}
    queues.add("q", payloads(2), 0.0)
    assert queues.dispatch() == []
    back = queues.drop("a", 5.0)
    assert ids(back) == [1, 3]
    assert waiting_ids(queues) == [1, 3, 5, 6]
    assert all(job.state is WAITING and job.attempt == 0 for job in back)
    assert queues.consumer("a", "q") is None
    assert counts(queues) == (4, 2, 0, 0, 0, 1)
    # The next free slot anywhere takes the oldest dropped job first.
    ack_all(queues, "b")
    assert by_owner(queues.dispatch()) == {"b": [1, 3]}


def test_dropped_jobs_go_at_once_to_an_idle_consumer() -> None:
    queues = Queues()
    queues.subscribe("a", "q", 3)
    queues.add("q", payloads(3), 0.0)
    ((_, jobs),) = queues.dispatch()
    old_leases = [job.lease for job in jobs]
    queues.subscribe("b", "q", 5)
    assert queues.dispatch() == []
    queues.drop("a", 1.0)
    ((consumer, again),) = queues.dispatch()
    assert consumer.owner == "b" and ids(again) == [1, 2, 3]
    assert [job.attempt for job in again] == [1, 1, 1]
    for job, old in zip(again, old_leases, strict=True):
        assert job.lease != old
        assert queues.ack("a", job.id, old, payload(None), 2.0) is None


def test_drop_forgets_every_subscription_of_the_owner() -> None:
    queues = Queues()
    queues.subscribe("a", "q", 1)
    queues.subscribe("a", "r", 1)
    queues.subscribe("b", "r", 1)
    queues.add("q", payloads(1), 0.0)
    queues.add("r", payloads(2), 0.0)
    queues.dispatch()
    back = queues.drop("a", 1.0)
    assert sorted(job.queue for job in back) == ["q", "r"]
    assert queues.consumer("a", "q") is None and queues.consumer("a", "r") is None
    assert counts(queues, "q") == (1, 0, 0, 0, 0, 0)
    assert counts(queues, "r") == (1, 1, 0, 0, 0, 1)
    assert queues.drop("a", 2.0) == []  # dropping twice is harmless


def test_job_dropped_too_often_fails_as_worker_lost() -> None:
    queues = Queues(max_redeliveries=2)
    queues.add("q", payloads(1), 0.0)
    job = queues.jobs[1]
    for attempt in range(3):
        owner = f"worker-{attempt}"
        queues.subscribe(owner, "q", 1)
        assert by_owner(queues.dispatch()) == {owner: [1]}
        back = queues.drop(owner, float(attempt))
        if attempt < 2:
            assert back == [job] and job.state is WAITING
    assert back == []
    assert job.state is FAILED and job.finished_at == 2.0
    assert job.error is not None and job.error.type == "WorkerLost"
    assert queues.take_outbox().finished == [job]
    assert counts(queues) == (0, 0, 0, 0, 1, 0)
    queues.subscribe("survivor", "q", 1)
    assert queues.dispatch() == []


# Retention and counters.


def test_keep_completed_retains_only_the_latest() -> None:
    queues = Queues(keep_completed=3)
    queues.subscribe("a", "q", 10)
    queues.add("q", payloads(5), 0.0)
    queues.dispatch()
    ack_all(queues, "a")
    assert sorted(queues.jobs) == [3, 4, 5]
    assert counts(queues) == (0, 0, 0, 5, 0, 1)
    queues.add("q", payloads(2), 1.0)  # ids 6 and 7
    queues.dispatch()
    consumer = queues.consumer("a", "q")
    assert consumer is not None
    job = consumer.held[6]
    queues.ack("a", 6, job.lease, payload(None), 2.0)
    # The evicted job is gone, the active one is never evicted.
    assert sorted(queues.jobs) == [4, 5, 6, 7]
    assert counts(queues) == (0, 1, 0, 6, 0, 1)


def test_keep_failed_is_separate_from_keep_completed() -> None:
    queues = Queues(keep_completed=1, keep_failed=2)
    queues.subscribe("a", "q", 10)
    queues.add("q", payloads(6), 0.0)
    ((_, jobs),) = queues.dispatch()
    error = JobError(type="E", message="m")
    for job in jobs[:3]:
        queues.fail("a", job.id, job.lease, error, 1.0)
    for job in jobs[3:]:
        queues.ack("a", job.id, job.lease, payload(None), 1.0)
    assert sorted(queues.jobs) == [2, 3, 6]
    assert counts(queues) == (0, 0, 0, 3, 3, 1)


def test_counts_of_unknown_queue_are_zero() -> None:
    assert Queues().counts("nothing") == {
        "waiting": 0, "active": 0, "delayed": 0, "completed": 0, "failed": 0, "workers": 0,
        "waiting_children": 0,
    }


# Fairness property.


def _drain(queues: Queues) -> None:
    """Dispatch and ack until nothing is waiting or leased."""
    while True:
        dispatched = queues.dispatch()
        if not dispatched:
            return
        for consumer, jobs in dispatched:
            for job in jobs:
                queues.ack(consumer.owner, job.id, job.lease, payload(None), 0.0)


@settings(max_examples=150, deadline=None)
@given(
    k=st.integers(1, 6),
    window=st.integers(0, 8),
    n=st.integers(0, 60),
    warmup=st.lists(st.integers(1, 7), max_size=6),
)
def test_bulk_add_spreads_evenly_over_idle_consumers(
    k: int, window: int, n: int, warmup: list[int]
) -> None:
    queues = Queues()
    owners = [f"w{i}" for i in range(k)]
    for owner in owners:
        queues.subscribe(owner, "q", 3)
    # Earlier traffic scrambles the round-robin order; it must not skew the split.
    for count in warmup:
        queues.add("q", payloads(count), 0.0)
        _drain(queues)
    for owner in owners:
        queues.subscribe(owner, "q", window)
    queues.add("q", payloads(n), 1.0)
    per_owner: dict[Hashable, int] = dict.fromkeys(owners, 0)
    for consumer, jobs in queues.dispatch():
        per_owner[consumer.owner] += len(jobs)
    assert sum(per_owner.values()) == min(n, k * window)
    assert max(per_owner.values()) - min(per_owner.values()) <= 1
    assert counts(queues)[:2] == (n - min(n, k * window), min(n, k * window))


# The state machine under random operations.

OWNERS = ("w1", "w2", "w3")
QUEUE_NAMES = ("a", "b")
MAX_REDELIVERIES = 1
KEEP_COMPLETED = 3
KEEP_FAILED = 2
windows = st.integers(0, 4)


class QueuesMachine(RuleBasedStateMachine):
    """Random subscribe/add/ack/fail/release/drop traffic with a dispatch after every step.

    The model keeps what the user can observe: every job created, where finished jobs ended, the
    leases handed out, and each job's attempt and drop counts.
    """

    def __init__(self) -> None:
        super().__init__()
        self.queues = Queues(
            max_redeliveries=MAX_REDELIVERIES,
            keep_completed=KEEP_COMPLETED,
            keep_failed=KEEP_FAILED,
        )
        self.now = 0.0
        self.data: dict[int, bytes] = {}
        self.queue_of: dict[int, str] = {}
        self.attempt: dict[int, int] = {}
        self.drops: dict[int, int] = {}
        self.finished: dict[str, dict[JobState, list[int]]] = {
            name: {COMPLETED: [], FAILED: []} for name in QUEUE_NAMES
        }
        self.finished_at: dict[int, float] = {}
        self.leases: dict[int, set[int]] = {}
        self.all_leases: set[int] = set()
        self.last_held: dict[Consumer, int] = {}

    # Helpers.

    def _step(self) -> float:
        self.now += 1.0
        self.queues.take_outbox()  # the flush takes it every pass
        return self.now

    def _consumers(self) -> list[Consumer]:
        return [c for q in self.queues.queues.values() for c in q.consumers.values()]

    def _held_jobs(self) -> list[tuple[int, Consumer]]:
        return sorted(
            ((job_id, c) for c in self._consumers() for job_id in c.held), key=lambda p: p[0]
        )

    def _record_finish(self, job: Job, state: JobState) -> None:
        self.finished[job.queue][state].append(job.id)
        self.finished_at[job.id] = self.now

    def _snapshot(self) -> Any:
        queues = {
            name: (ids(q.waiting), q.active, q.completed, q.failed)
            for name, q in self.queues.queues.items()
        }
        consumers = {
            (c.owner, c.queue.name): (c.window, {j: job.lease for j, job in c.held.items()})
            for c in self._consumers()
        }
        jobs = {
            job_id: (job.state, job.lease, job.attempt, job.holder, job.result, job.error,
                     job.progress, job.finished_at)
            for job_id, job in self.queues.jobs.items()
        }
        return queues, consumers, jobs

    def _dispatch(self) -> list[tuple[Consumer, list[Job]]]:
        before_waiting = {name: ids(q.waiting) for name, q in self.queues.queues.items()}
        before_held = {c: len(c.held) for c in self._consumers()}
        dispatched = self.queues.dispatch()
        taken: dict[str, set[int]] = {}
        seen: set[Consumer] = set()
        for consumer, jobs in dispatched:
            assert consumer not in seen and jobs
            seen.add(consumer)
            assert consumer.queue.consumers.get(consumer.owner) is consumer
            assert len(consumer.held) == before_held[consumer] + len(jobs)
            # Credit is never exceeded: a consumer is only ever filled up to its window.
            assert len(consumer.held) <= consumer.window
            for job in jobs:
                assert consumer.held[job.id] is job
                assert job.state is ACTIVE and job.holder is consumer
                assert job.lease not in self.all_leases  # every delivery is a fresh lease
                self.all_leases.add(job.lease)
                self.leases[job.id].add(job.lease)
                self.attempt[job.id] += 1
                assert job.attempt == self.attempt[job.id]
                assert bytes(job.data) == self.data[job.id]
                taken.setdefault(consumer.queue.name, set()).add(job.id)
        for consumer in self._consumers():
            if consumer not in seen:
                assert len(consumer.held) == before_held[consumer]
        for consumer in seen:
            # Most free slots first: a consumer only received jobs while none had more room, so
            # it ends at most one slot below the roomiest consumer of its queue.
            roomiest = max(c.free for c in consumer.queue.consumers.values())
            assert consumer.free >= roomiest - 1
        for name, before in before_waiting.items():
            count = len(taken.get(name, ()))
            # Jobs leave from the head of the waiting line, in order.
            assert taken.get(name, set()) == set(before[:count])
            assert ids(self.queues.queues[name].waiting) == before[count:]
        return dispatched

    def _add(self, name: str, count: int) -> list[int]:
        now = self._step()
        start = self.queues.last_id
        raws = payloads(count, start=start * 7)
        before = ids(self.queues.queue(name).waiting)
        new_ids = self.queues.add(name, raws, now)
        assert new_ids == list(range(start + 1, start + count + 1))
        assert ids(self.queues.queue(name).waiting) == before + new_ids
        for job_id, raw in zip(new_ids, raws, strict=True):
            self.data[job_id] = bytes(raw)
            self.queue_of[job_id] = name
            self.attempt[job_id] = 0
            self.drops[job_id] = 0
            self.leases[job_id] = set()
        return new_ids

    # Rules.

    @initialize(workers=st.integers(0, len(OWNERS)), window=st.integers(1, 4))
    def start_workers(self, workers: int, window: int) -> None:
        # Start from a pool of identical idle workers, as after a deploy, so the spreading check
        # in add_bulk has several subscribers to compare from the first step on.
        for owner in OWNERS[:workers]:
            self.queues.subscribe(owner, QUEUE_NAMES[0], window)
        assert self._dispatch() == []

    @rule(owner=st.sampled_from(OWNERS), name=st.sampled_from(QUEUE_NAMES), window=windows)
    def subscribe(self, owner: str, name: str, window: int) -> None:
        self._step()
        existing = self.queues.consumer(owner, name)
        consumer = self.queues.subscribe(owner, name, window)
        assert existing is None or consumer is existing
        assert consumer.window == window and self.queues.consumer(owner, name) is consumer
        self._dispatch()

    @precondition(lambda self: self._consumers())
    @rule(data=st.data(), window=windows)
    def set_window(self, data: st.DataObject, window: int) -> None:
        self._step()
        consumer = data.draw(st.sampled_from(self._consumers()), label="consumer")
        held_before = dict(consumer.held)
        assert self.queues.subscribe(consumer.owner, consumer.queue.name, window) is consumer
        assert consumer.window == window
        assert consumer.held == held_before  # a lower window revokes nothing
        self._dispatch()

    @rule(name=st.sampled_from(QUEUE_NAMES))
    def add(self, name: str) -> None:
        self._add(name, 1)
        self._dispatch()

    @rule(name=st.sampled_from(QUEUE_NAMES), count=st.integers(2, 25))
    def add_bulk(self, name: str, count: int) -> None:
        queue = self.queues.queue(name)
        subscribers = list(queue.consumers.values())
        window_sizes = {c.window for c in subscribers}
        idle_and_equal = (
            bool(subscribers) and len(window_sizes) == 1 and all(not c.held for c in subscribers)
        )
        backlog = len(queue.waiting)
        self._add(name, count)
        dispatched = self._dispatch()
        if idle_and_equal:
            # Spreading: K idle consumers of equal window W get the jobs to within one each.
            (window,) = window_sizes
            per_consumer = dict.fromkeys(subscribers, 0)
            for consumer, jobs in dispatched:
                per_consumer[consumer] += len(jobs)
            total = backlog + count
            assert sum(per_consumer.values()) == min(total, len(subscribers) * window)
            assert max(per_consumer.values()) - min(per_consumer.values()) <= 1

    @precondition(lambda self: self._held_jobs())
    @rule(data=st.data(), action=st.sampled_from(["ack", "fail", "release"]))
    def settle_held_job(self, data: st.DataObject, action: str) -> None:
        now = self._step()
        job_id, consumer = data.draw(st.sampled_from(self._held_jobs()), label="held job")
        job = consumer.held[job_id]
        owner, lease = consumer.owner, job.lease
        if action == "ack":
            result = payload(["result", job_id])
            assert self.queues.ack(owner, job_id, lease, result, now) is job
            assert job.state is COMPLETED and job.result == result
            self._record_finish(job, COMPLETED)
            assert self.queues.take_outbox().finished == [job]
        elif action == "fail":
            error = JobError(type="RuntimeError", message=f"try {job.attempt} of {job_id}")
            assert self.queues.fail(owner, job_id, lease, error, now) is job
            assert job.state is FAILED and job.error == error
            self._record_finish(job, FAILED)
            assert self.queues.take_outbox().finished == [job]
        else:
            assert self.queues.release(owner, job_id, lease) is job
            self.attempt[job_id] -= 1
            assert job.state is WAITING and job.attempt == self.attempt[job_id]
            assert next(iter(consumer.queue.waiting)) is job
            assert self.queues.take_outbox().finished == []
        assert job_id not in consumer.held and job.holder is None
        self._dispatch()

    @precondition(lambda self: self.data)
    @rule(
        data=st.data(),
        owner=st.sampled_from(OWNERS),
        kind=st.sampled_from(["old", "zero", "random", "wrong-owner"]),
        action=st.sampled_from(["ack", "fail", "release", "progress"]),
    )
    def stale_or_wrong_lease(
        self, data: st.DataObject, owner: str, kind: str, action: str
    ) -> None:
        now = self._step()
        job_id = data.draw(st.sampled_from(sorted(self.data)), label="job")
        job = self.queues.jobs.get(job_id)
        current = job.lease if job is not None else 0
        holder = job.holder.owner if job is not None and job.holder is not None else None
        old = sorted(self.leases[job_id] - {current})
        if kind == "old" and old:
            lease = data.draw(st.sampled_from(old), label="old lease")
        elif kind == "zero":
            lease = 0
        elif kind == "wrong-owner" and holder is not None:
            owner = data.draw(st.sampled_from([o for o in OWNERS if o != holder]), label="owner")
            lease = current
        else:
            lease = data.draw(st.integers(0, 1 << 40), label="lease")
        if owner == holder and lease == current and lease != 0:
            lease = current + (1 << 41)  # never issued: keep this a wrong lease
        before = self._snapshot()
        if action == "ack":
            assert self.queues.ack(owner, job_id, lease, payload("late"), now) is None
        elif action == "fail":
            error = JobError(type="Late", message="")
            assert self.queues.fail(owner, job_id, lease, error, now) is None
        elif action == "release":
            assert self.queues.release(owner, job_id, lease) is None
        else:
            assert self.queues.progress(owner, job_id, lease, payload(99)) is False
        assert self._snapshot() == before
        assert self.queues.take_outbox().finished == []
        assert self._dispatch() == []

    @rule(owner=st.sampled_from(OWNERS))
    def disconnect(self, owner: str) -> None:
        now = self._step()
        expected_back: dict[str, list[int]] = {}
        expected_failed: dict[str, list[int]] = {}
        old_waiting = {name: ids(q.waiting) for name, q in self.queues.queues.items()}
        for name, queue in self.queues.queues.items():
            consumer = queue.consumers.get(owner)
            if consumer is None:
                continue
            for job_id in consumer.held:  # delivery order
                self.drops[job_id] += 1
                if self.drops[job_id] > MAX_REDELIVERIES:
                    expected_failed.setdefault(name, []).append(job_id)
                else:
                    expected_back.setdefault(name, []).append(job_id)
                    self.attempt[job_id] -= 1
        back = self.queues.drop(owner, now)
        assert sorted(ids(back)) == sorted(i for group in expected_back.values() for i in group)
        for name, waiting in old_waiting.items():
            returned = expected_back.get(name, [])
            assert [j for j in ids(back) if self.queue_of[j] == name] == returned
            # Back at the head of the queue, in the order they were delivered.
            assert ids(self.queues.queues[name].waiting) == returned + waiting
            assert self.queues.consumer(owner, name) is None
        # The order between queues is the owner's business; within one it is delivery order.
        outbox = self.queues.take_outbox()
        finished = ids(outbox.finished)
        assert sorted(finished) == sorted(i for group in expected_failed.values() for i in group)
        for name, failed in expected_failed.items():
            assert [j for j in finished if self.queue_of[j] == name] == failed
        for job in outbox.finished:
            assert job.state is FAILED
            assert job.error is not None and job.error.type == "WorkerLost"
            self._record_finish(job, FAILED)
        self._dispatch()

    # Invariants.

    @invariant()
    def active_exactly_when_held(self) -> None:
        check_active_exactly_when_held(self.queues)

    @invariant()
    def every_job_is_in_exactly_one_place(self) -> None:
        places: list[int] = []
        for name, queue in self.queues.queues.items():
            for job in queue.waiting:
                assert job.queue == name and job.state is WAITING
                assert job.holder is None and job.lease == 0
                places.append(job.id)
            for consumer in queue.consumers.values():
                for job_id, job in consumer.held.items():
                    assert job.queue == name and job.state is ACTIVE
                    assert job.holder is consumer and job.lease in self.leases[job_id]
                    places.append(job_id)
        for states in self.finished.values():
            places += states[COMPLETED] + states[FAILED]
        assert sorted(places) == sorted(self.data)

    @invariant()
    def finished_jobs_are_retained_within_bounds(self) -> None:
        expected = set(self.data)
        for states in self.finished.values():
            completed, failed = states[COMPLETED], states[FAILED]
            expected -= set(completed) | set(failed)
            kept_completed = completed[-KEEP_COMPLETED:]
            kept_failed = failed[-KEEP_FAILED:]
            expected |= set(kept_completed) | set(kept_failed)
            for job_id, state in [(i, COMPLETED) for i in kept_completed] + [
                (i, FAILED) for i in kept_failed
            ]:
                job = self.queues.jobs[job_id]
                assert job.state is state and job.finished_at == self.finished_at[job_id]
                assert job.holder is None and job.lease == 0
        assert set(self.queues.jobs) == expected
        for job_id, job in self.queues.jobs.items():
            assert job.attempt == self.attempt[job_id]
            assert job.drops == self.drops[job_id]

    @invariant()
    def counts_match(self) -> None:
        for name in QUEUE_NAMES:
            queue = self.queues.queues.get(name)
            held_sum = 0 if queue is None else sum(len(c.held) for c in queue.consumers.values())
            waiting = 0 if queue is None else len(queue.waiting)
            if queue is not None:
                assert queue.active == held_sum
            finished = self.finished[name]
            workers = 0 if queue is None else len(queue.consumers)
            assert self.queues.counts(name) == {
                "waiting": waiting,
                "active": held_sum,
                "delayed": 0,
                "completed": len(finished[COMPLETED]),
                "failed": len(finished[FAILED]),
                "workers": workers,
                "waiting_children": 0,
            }

    @invariant()
    def work_conserving(self) -> None:
        for queue in self.queues.queues.values():
            assert not queue.waiting or all(c.free <= 0 for c in queue.consumers.values())

    @invariant()
    def credit_never_grows_past_the_window(self) -> None:
        for consumer in self._consumers():
            count = len(consumer.held)
            # Over the window only after the window was lowered, and then never growing.
            assert count <= consumer.window or count <= self.last_held.get(consumer, 0)
            self.last_held[consumer] = count


QueuesMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestQueuesMachine = QueuesMachine.TestCase


# Unused queues.


def test_only_queues_with_nothing_to_lose_are_forgotten() -> None:
    queues = Queues()
    queues.pause("resumed", False)  # created, never used
    queues.subscribe("w", "dropped", 1)
    queues.drop("w", 0.0)  # its only subscriber left
    queues.add("removed", payloads(1), 0.0)
    queues.remove(next(iter(queues.queue("removed").waiting)).id)
    queues.add("waiting", payloads(1), 0.0)
    queues.pause("paused", True)
    queues.subscribe("w", "subscribed", 1)
    queues.pause("watched", False)
    queues.watched.add("watched")
    pending = queues.create("pending", payloads(1), 0.0)  # its record is not durable yet
    queues.subscribe("x", "done", 1)
    queues.add("done", payloads(1), 0.0)
    queues.dispatch(0.0)
    ack_all(queues, "x", queue="done")
    queues.clean("done", COMPLETED, 0.0, 1.0)  # nothing retained, but it has a history
    queues.drop("x", 1.0)
    assert queues.forget_unused() == 3
    assert sorted(queues.queues) == ["done", "paused", "pending", "subscribed", "waiting",
                                     "watched"]
    assert counts(queues, "resumed") == (0, 0, 0, 0, 0, 0)
    assert queues.queue("done").completed == 1
    queues.enqueue(pending)
    assert ids(queues.queue("pending").waiting) == ids(pending)
    queues.discard(queues.create("discarded", payloads(1), 0.0))  # a full disk refused it
    assert queues.forget_unused() == 1 and "discarded" not in queues.queues


def test_unused_queues_are_swept_once_they_could_outnumber_the_others() -> None:
    queues = Queues()
    for n in range(1024):
        queues.pause(f"q{n}", False)
    queues.sweep()
    assert len(queues.queues) == 1024  # cheap: nothing to do yet
    queues.pause("one more", False)
    queues.sweep()
    assert len(queues.queues) == 0


def test_subscribing_again_changes_the_window_but_keeps_the_lease() -> None:
    """protocol.md: a repeated ``subscribe`` changes the window as ``window`` does; the lease
    stays the one the first ``subscribe`` set."""
    queues = Queues()
    queues.subscribe("w", "q", 1, lease=5.0)
    queues.add("q", payloads(2), 0.0)
    queues.dispatch(0.0)
    consumer = queues.subscribe("w", "q", 2, lease=60.0)
    assert (consumer.window, consumer.lease) == (2, 5.0)
    queues.dispatch(1.0)
    queues.tick(5.0)  # five seconds without a word: the jobs go back
    assert consumer.held == {} and counts(queues)[:2] == (2, 0)
