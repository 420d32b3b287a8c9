"""Queue limits in the state machine, on a manual clock: global concurrency, and a rate held as
evenly spaced starts that the timer serves at their slot."""

from __future__ import annotations

from typing import cast

import msgspec
from queue_state import raw

from conveyor.broker.testing import (
    Job,
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
        for owner, given in dispatch(queues).items():
            times += [clock.monotonic()] * len(given)
            ack_all(queues, owner, given)
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
    given = dispatch(queues)
    # Spread as always: one each, as each has the most free slots in turn.
    assert {owner: len(jobs) for owner, jobs in given.items()} == {"w1": 1, "w2": 1, "w3": 1}
    assert dispatch(queues) == {}  # nothing more while three run
    ack_all(queues, "w2", given["w2"])
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
    given = dispatch(queues)
    (job, *_) = given["w1"]
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
