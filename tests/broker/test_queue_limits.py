"""Queue limits in the state machine, on a manual clock: global concurrency, and a rate held as
evenly spaced starts that the timer serves at their slot."""

from __future__ import annotations

import random
from typing import cast

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from queue_state import raw

from conveyor.broker.testing import (
    Job,
    Kind,
    ManualClock,
    Queues,
    Replayer,
    snapshot,
)
from conveyor.protocol import QueueLimits

EPSILON = 1e-9


def make(*, logged: bool = False) -> tuple[Queues, ManualClock]:
    clock = ManualClock()
    return Queues(clock=clock, logged=logged), clock


def add(queues: Queues, count: int, queue: str = "q") -> list[int]:
    return queues.add(queue, [raw(n) for n in range(count)], queues.now())


def dispatch(queues: Queues) -> dict[str, list[Job]]:
    """Who got which jobs in one pass, by owner."""
    given: dict[str, list[Job]] = {}
    for consumer, jobs in queues.dispatch(queues.now()):
        given.setdefault(str(consumer.owner), []).extend(jobs)
    return given


def started(given: dict[str, list[Job]]) -> int:
    return sum(len(jobs) for jobs in given.values())


def ack_all(queues: Queues, owner: str, jobs: list[Job]) -> None:
    for job in jobs:
        assert queues.ack(owner, job.id, job.lease, raw(None), queues.now()) is not None


def run_rated(queues: Queues, clock: ManualClock, jobs: int) -> list[float]:
    """Serve the timer until ``jobs`` jobs started (acking each at once); their start times."""
    times: list[float] = []
    while len(times) < jobs:
        for owner, jobs_given in dispatch(queues).items():
            times += [clock.monotonic()] * len(jobs_given)
            ack_all(queues, owner, jobs_given)
        if len(times) >= jobs:
            break
        due = queues.next_deadline()
        assert due is not None, "jobs wait for their slot, yet no timer is armed"
        clock.advance(max(due - clock.monotonic(), 0.0))
        queues.tick(queues.now())
        if queues.next_deadline() == due:
            # Wall times moved onto the monotonic clock round (by ~2e-7 s at today's wall).
            clock.advance(1e-6)
            queues.tick(queues.now())
    return times


def test_concurrency_caps_active_jobs_across_workers_whose_windows_add_up_to_more() -> None:
    queues, _ = make()
    for owner in ("w1", "w2", "w3"):
        queues.subscribe(owner, "q", 5)
    queues.set_limits("q", QueueLimits(concurrency=3))
    add(queues, 20)
    pushed = dispatch(queues)
    # Spread as always: one each, as each has the most free slots in turn.
    assert {owner: len(jobs) for owner, jobs in pushed.items()} == {"w1": 1, "w2": 1, "w3": 1}
    assert dispatch(queues) == {}  # nothing more while three run
    ack_all(queues, "w2", pushed["w2"])
    assert started(dispatch(queues)) == 1
    assert queues.counts("q")["active"] == 3


def test_lowering_takes_nothing_back_raising_and_clearing_start_more() -> None:
    queues, _ = make()
    queues.subscribe("w", "q", 10)
    add(queues, 20)
    queues.set_limits("q", QueueLimits(concurrency=6))
    running = dispatch(queues)["w"]
    assert len(running) == 6
    queues.set_limits("q", QueueLimits(concurrency=2))
    assert dispatch(queues) == {}
    assert queues.counts("q")["active"] == 6  # nothing taken back
    ack_all(queues, "w", running[:4])  # 2 active: still at the limit
    assert dispatch(queues) == {}
    ack_all(queues, "w", running[4:5])  # 1 active: one may start
    assert started(dispatch(queues)) == 1
    queues.set_limits("q", QueueLimits(concurrency=5))
    assert started(dispatch(queues)) == 3
    queues.set_limits("q", QueueLimits())
    assert started(dispatch(queues)) == 5  # the worker's window of 10 is the only limit now
    assert queues.counts("q")["active"] == 10


def test_rate_spaces_starts_evenly_and_never_exceeds_it_in_any_window() -> None:
    queues, clock = make()
    queues.subscribe("w", "q", 100)
    queues.set_limits("q", QueueLimits(rate=5, per=2.0))
    add(queues, 23)
    times = run_rated(queues, clock, 23)
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert all(abs(gap - 0.4) < 1e-5 for gap in gaps), gaps
    for index, first in enumerate(times):
        in_window = [t for t in times[index:] if t < first + 2.0 - EPSILON]
        assert len(in_window) <= 5


@pytest.mark.parametrize("seed", range(4))
def test_a_late_timer_makes_up_the_rate_without_ever_exceeding_it_in_a_window(
        seed: int) -> None:
    # 100 starts per 0.1 s, a slot every millisecond; the timer fires up to 1.8 ms after each
    # slot, by a different amount each time, as an event loop's timer does.
    lateness = random.Random(seed)
    queues, clock = make()
    queues.subscribe("w", "q", 1000)
    queues.set_limits("q", QueueLimits(rate=100, per=0.1))
    add(queues, 300)
    times: list[float] = []
    while len(times) < 300:
        for owner, jobs in dispatch(queues).items():
            times += [clock.monotonic()] * len(jobs)
            ack_all(queues, owner, jobs)
        due = queues.next_deadline()
        if due is None:
            break
        clock.advance(max(due - clock.monotonic(), 0.0) + lateness.uniform(0.0, 0.0018))
        queues.tick(queues.now())
    assert len(times) == 300
    for index, first in enumerate(times):
        in_window = [t for t in times[index:] if t < first + 0.1 - EPSILON]
        assert len(in_window) <= 100, (index, len(in_window))
    # The lateness is made up: 300 starts take about 0.3 s, not 300 late slots longer.
    assert times[-1] - times[0] < 0.3 * 1.05


def test_the_timer_wakes_dispatch_at_the_slot_not_before() -> None:
    queues, clock = make()
    queues.subscribe("w", "q", 10)
    queues.set_limits("q", QueueLimits(rate=4))
    add(queues, 3)
    first = dispatch(queues)["w"]
    assert len(first) == 1
    start = clock.monotonic()
    assert abs(cast(float, queues.next_deadline()) - (start + 0.25)) < 1e-6
    clock.advance(0.25 - 0.001)
    queues.tick(queues.now())
    assert dispatch(queues) == {}  # a free slot in the worker, but not the rate's yet
    clock.advance(0.001)
    queues.tick(queues.now())
    assert started(dispatch(queues)) == 1
    assert abs(cast(float, queues.next_deadline()) - (start + 0.5)) < 1e-6


def test_an_idle_queue_builds_up_no_burst() -> None:
    queues, clock = make()
    queues.subscribe("w", "q", 50)
    queues.set_limits("q", QueueLimits(rate=10))
    add(queues, 2)
    run_rated(queues, clock, 2)
    clock.advance(60.0)  # a minute of unused slots
    add(queues, 30)
    times = run_rated(queues, clock, 30)
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert all(abs(gap - 0.1) < 1e-5 for gap in gaps), gaps  # the first two 0.1 s apart too


def test_rate_and_concurrency_together() -> None:
    queues, clock = make()
    queues.subscribe("w", "q", 10)
    queues.set_limits("q", QueueLimits(rate=100, concurrency=2))
    add(queues, 5)
    running = dispatch(queues)["w"]
    clock.advance(1.0)
    queues.tick(queues.now())
    running += dispatch(queues)["w"]
    assert len(running) == 2
    clock.advance(1.0)
    assert dispatch(queues) == {}  # the rate has room, the concurrency has none
    ack_all(queues, "w", running)
    assert started(dispatch(queues)) == 1  # one slot now, the next 10 ms on
    assert queues.counts("q")["active"] == 1


def test_limits_survive_replay_and_snapshot_and_keep_a_queue_from_being_forgotten() -> None:
    queues, _ = make(logged=True)
    queues.set_limits("limited", QueueLimits(rate=7, per=3.0, concurrency=2))
    queues.set_limits("cleared", QueueLimits(concurrency=1))
    queues.set_limits("cleared", QueueLimits())
    assert queues.forget_unused() == 1  # "cleared" only
    assert set(queues.queues) == {"limited"}
    records = queues.take_outbox().records
    for source in (records, list(snapshot(queues))):
        fresh, _ = make()
        replayer = Replayer(fresh)
        for record in source:
            replayer.apply(msgspec.msgpack.decode(msgspec.msgpack.encode(record),
                                                  type=type(record)))
        replayer.finish()
        limiter = fresh.queues["limited"].limiter
        assert limiter is not None
        assert limiter.limits == QueueLimits(rate=7, per=3.0, concurrency=2)
        cleared = fresh.queues.get("cleared")
        assert cleared is None or cleared.limiter is None


def test_a_throttle_hands_the_job_back_and_holds_its_queue_until_the_timer_frees_it() -> None:
    queues, clock = make()
    queues.subscribe("w1", "q", 5)
    queues.subscribe("w2", "q", 5)
    add(queues, 3)
    pushed = dispatch(queues)
    (job, *_) = pushed["w1"]
    assert job.attempt == 1
    assert queues.throttle("w1", job.id, job.lease, 2.0, queues.now()) is job
    assert job.attempt == 0 and job.state.value == "waiting"  # its try given back
    assert queues.counts("q")["waiting"] == 1
    assert dispatch(queues) == {}  # free slots on both workers, but the queue is held
    assert queues.throttle("w1", job.id, job.lease, 2.0, queues.now()) is None  # stale lease
    assert abs(cast(float, queues.next_deadline()) - (clock.monotonic() + 2.0)) < 1e-6
    clock.advance(2.0 - 0.001)
    queues.tick(queues.now())
    assert dispatch(queues) == {}
    clock.advance(0.001)
    queues.tick(queues.now())
    again = dispatch(queues)
    assert [j.id for jobs in again.values() for j in jobs] == [job.id]  # first in line
    assert queues.queues["q"].limiter is None  # no limits of its own: the hold is gone
    assert job.attempt == 1


def test_a_throttle_keeps_the_queues_own_limits() -> None:
    queues, clock = make()
    queues.subscribe("w", "q", 5)
    queues.set_limits("q", QueueLimits(concurrency=2))
    add(queues, 3)
    first, _ = dispatch(queues)["w"]
    queues.throttle("w", first.id, first.lease, 1.0, queues.now())
    clock.advance(1.0)
    queues.tick(queues.now())
    assert started(dispatch(queues)) == 1  # two active again: the concurrency still holds
    limiter = queues.queues["q"].limiter
    assert limiter is not None and limiter.limits == QueueLimits(concurrency=2)


_steps = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(1, 8)),
    st.tuples(st.just("ack"), st.sampled_from(["w1", "w2", "w3"])),
    st.tuples(st.just("wait"), st.floats(0.001, 1.5)),
), max_size=40)


@settings(max_examples=150, deadline=None)
@given(rate=st.none() | st.integers(1, 6), per=st.sampled_from([0.5, 1.0, 3.0]),
       concurrency=st.none() | st.integers(1, 7), windows=st.lists(st.integers(0, 4),
                                                                   min_size=3, max_size=3),
       steps=_steps)
def test_limits_hold_and_dispatch_is_work_conserving_within_them(
        rate: int | None, per: float, concurrency: int | None, windows: list[int],
        steps: list[tuple[str, object]]) -> None:
    queues, clock = make()
    owners = ["w1", "w2", "w3"]
    for owner, window in zip(owners, windows, strict=True):
        queues.subscribe(owner, "q", window)
    queues.set_limits("q", QueueLimits(rate=rate, per=per, concurrency=concurrency))
    held: dict[str, list[Job]] = {owner: [] for owner in owners}
    starts: list[float] = []
    queue = queues.queues["q"]
    for kind, value in steps:
        if kind == "add":
            add(queues, int(cast(int, value)))
        elif kind == "ack":
            jobs = held[str(value)]
            if jobs:
                ack_all(queues, str(value), [jobs.pop(0)])
        else:
            # Time passes, but the timer is served on time: never past a deadline.
            due = queues.next_deadline()
            step = float(cast(float, value))
            if due is not None:
                step = min(step, max(due - clock.monotonic(), 0.0))
            clock.advance(step)
            queues.tick(queues.now())
            if due is not None and queues.next_deadline() == due <= clock.monotonic():
                # Wall times moved onto the monotonic clock round (by ~2e-7 s at today's wall).
                clock.advance(1e-6)
                queues.tick(queues.now())
        for owner, jobs in dispatch(queues).items():
            held[owner] += jobs
            starts += [clock.monotonic()] * len(jobs)
        active = queues.counts("q")["active"]
        if concurrency is not None:
            assert active <= concurrency
        # Work-conserving within the limits: a job waits only for a slot of a worker, of the
        # concurrency, or of the rate (and then the timer is armed for that slot).
        if queue.waiting:
            free = sum(c.free for c in queue.consumers.values())
            capped = concurrency is not None and active >= concurrency
            limiter = queue.limiter
            assert limiter is not None or free == 0
            # Ahead by as little as 1e-6 s: the slot at a window's edge is due just after it.
            slot_ahead = (limiter is not None and limiter.interval is not None
                          and limiter.due() > clock.monotonic()
                          and queues.deadlines.when(Kind.LIMIT, "q") == limiter.due())
            assert free == 0 or capped or slot_ahead
    if rate is not None:
        spacing = per / rate
        for earlier, later in zip(starts, starts[1:], strict=False):
            assert later - earlier > spacing - 1e-5
        for index, first in enumerate(starts):
            assert len([t for t in starts[index:] if t < first + per - 1e-5]) <= rate


@pytest.mark.parametrize("cleared_during_hold", [True, False])
def test_limits_cleared_around_a_hold_leave_no_limiter_once_it_ends(
        cleared_during_hold: bool) -> None:
    # Clearing limits during a hold once dropped the timer that ends it, and clearing them
    # after a hold the timer saw end kept an empty limiter: either way the queue, though
    # unused, was never forgotten.
    queues, clock = make()
    queues.subscribe("w", "q", 1)
    queues.set_limits("q", QueueLimits(concurrency=3))
    add(queues, 1)
    (job,) = dispatch(queues)["w"]
    queues.throttle("w", job.id, job.lease, 1.0, queues.now())
    if not cleared_during_hold:
        clock.advance(1.0)
        queues.tick(queues.now())
    queues.set_limits("q", QueueLimits())
    queues.remove(job.id)
    queues.drop("w", queues.now())
    clock.advance(1.0)
    queues.tick(queues.now())
    assert queues.queues["q"].limiter is None
    assert queues.forget_unused() == 1
