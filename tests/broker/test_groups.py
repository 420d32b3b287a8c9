"""Job groups in the state machine, on a manual clock: dispatch takes turns across the groups
of a queue, and each group may have a cap on its active jobs and a rate of its own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import msgspec
import pytest
from queue_state import raw

from conveyor.broker.testing import (
    GroupedLine,
    Job,
    Kind,
    ManualClock,
    Queues,
    Replayer,
    snapshot,
)
from conveyor.protocol import JobDef, JobError, JobState, QueueLimits


def make(*, logged: bool = False) -> tuple[Queues, ManualClock]:
    clock = ManualClock()
    return Queues(clock=clock, logged=logged), clock


def add(queues: Queues, group: str | None, count: int = 1, queue: str = "q", *,
        priority: int = 0, delay: float = 0.0, attempts: int = 1) -> list[int]:
    jobs = queues.create(queue, [JobDef(raw(n), group=group, priority=priority, delay=delay,
                                        attempts=attempts) for n in range(count)], queues.now())
    queues.enqueue(jobs)
    return [job.id for job in jobs]


def dispatch(queues: Queues) -> list[Job]:
    """The jobs one pass starts, in the order it took them."""
    return [job for _, jobs in queues.dispatch(queues.now()) for job in jobs]


def ack(queues: Queues, job: Job) -> None:
    assert job.holder is not None
    assert queues.ack(job.holder.owner, job.id, job.lease, raw(None), queues.now()) is job


def serve_timer(queues: Queues, clock: ManualClock) -> float:
    """Move the clock to the next deadline and serve it; return the time it was due."""
    due = queues.next_deadline()
    assert due is not None, "nothing armed"
    clock.advance(max(due - clock.monotonic(), 0.0) + 1e-6)
    queues.tick(queues.now())
    return due


def test_a_group_with_many_jobs_does_not_starve_nine_with_one() -> None:
    queues, _ = make()
    add(queues, "big", 1000)
    for n in range(9):
        add(queues, f"small{n}")
    queues.subscribe("w", "q", 10)
    first = dispatch(queues)
    assert sorted(cast(str, job.group) for job in first) == sorted(
        ["big"] + [f"small{n}" for n in range(9)])


def test_groups_take_turns_and_ungrouped_jobs_are_one_more_lane() -> None:
    queues, _ = make()
    add(queues, None, 3)
    add(queues, "a", 3)
    add(queues, "b", 3)
    # Listed in the order of the turns, as they will start.
    assert [job.group for job in queues.queues["q"].waiting] == [None, "a", "b"] * 3
    queues.subscribe("w", "q", 6)
    first = [job.group for job in dispatch(queues)]
    assert first == [None, "a", "b", None, "a", "b"]


def test_priority_then_fifo_within_a_group() -> None:
    queues, _ = make()
    low = add(queues, "a", 2)
    high = add(queues, "a", 1, priority=5)
    queues.subscribe("w", "q", 3)
    assert [job.id for job in dispatch(queues)] == high + low


def test_group_cap_holds_across_workers_and_a_finished_job_unblocks_its_group() -> None:
    queues, _ = make()
    queues.set_limits("q", QueueLimits(group_concurrency=2))
    add(queues, "a", 5)
    add(queues, "b", 1)
    queues.subscribe("w1", "q", 10)
    queues.subscribe("w2", "q", 10)
    first = dispatch(queues)
    assert sorted(cast(str, job.group) for job in first) == ["a", "a", "b"]
    assert {job.holder.owner for job in first if job.holder is not None} == {"w1", "w2"}
    assert dispatch(queues) == []  # free slots, but "a" is at its cap
    ack(queues, next(job for job in first if job.group == "a"))
    again = dispatch(queues)
    assert [job.group for job in again] == ["a"]
    assert dispatch(queues) == []


def test_group_rate_spaces_its_starts_and_the_timer_brings_it_back() -> None:
    queues, clock = make()
    queues.set_limits("q", QueueLimits(group_rate=2, group_per=1.0))
    add(queues, "a", 4)
    add(queues, "b", 1)
    queues.subscribe("w", "q", 10)
    assert sorted(cast(str, job.group) for job in dispatch(queues)) == ["a", "b"]
    start = clock.monotonic()
    # "a" waits for its next slot, half a second on: the timer is armed for it, no polling.
    assert queues.deadlines.when(Kind.GROUP, ("q", "a")) == queues.next_deadline()
    assert abs(cast(float, queues.next_deadline()) - (start + 0.5)) < 1e-6
    assert dispatch(queues) == []
    due = serve_timer(queues, clock)
    assert abs(due - (start + 0.5)) < 1e-6
    assert [job.group for job in dispatch(queues)] == ["a"]
    due = serve_timer(queues, clock)
    assert abs(due - (start + 1.0)) < 1e-6
    assert [job.group for job in dispatch(queues)] == ["a"]


def test_idle_groups_are_forgotten_and_the_line_is_plain_again() -> None:
    queues, clock = make()
    queues.subscribe("w", "q", 100)
    for n in range(50):
        add(queues, f"g{n}")
    add(queues, None, 2)
    line = queues.queues["q"].waiting
    assert isinstance(line, GroupedLine)
    assert len(line.lanes) == 50
    started = dispatch(queues)
    assert len(started) == 52
    assert line.groups == 50
    for job in started:
        ack(queues, job)
    assert not line.lanes
    assert not isinstance(queues.queues["q"].waiting, GroupedLine)
    # With a rate, an idle group is kept until its last slot passed, then forgotten.
    queues.set_limits("q", QueueLimits(group_rate=1, group_per=10.0))
    add(queues, "r")
    (job,) = dispatch(queues)
    ack(queues, job)
    line = queues.queues["q"].waiting
    assert isinstance(line, GroupedLine) and set(line.lanes) == {"r"}
    serve_timer(queues, clock)
    assert not isinstance(queues.queues["q"].waiting, GroupedLine)
    assert queues.deadlines.when(Kind.GROUP, ("q", "r")) is None


def test_remove_drain_retry_and_promote_keep_the_group() -> None:
    queues, _ = make()
    queues.set_limits("q", QueueLimits(group_concurrency=1))
    (removed, kept) = add(queues, "a", 2)
    queues.remove(removed)
    (delayed,) = add(queues, "b", delay=5.0)
    assert queues.promote(delayed, queues.now()) is not None
    queues.subscribe("w", "q", 10)
    started = dispatch(queues)
    assert sorted((job.id, job.group) for job in started) == [(kept, "a"), (delayed, "b")]
    for job in started:
        assert job.holder is not None
        queues.fail(job.holder.owner, job.id, job.lease, JobError(type="E", message="m"),
                    queues.now())
    assert queues.retry_failed("q", now=queues.now()) == 2
    again = dispatch(queues)
    assert sorted((job.id, job.group) for job in again) == [(kept, "a"), (delayed, "b")]
    for job in again:
        ack(queues, job)
    add(queues, "c", 3)
    add(queues, None, 1)
    assert queues.drain("q") == 4
    assert not isinstance(queues.queues["q"].waiting, GroupedLine)
    assert queues.counts("q")["waiting"] == 0


def test_lease_loss_drop_and_release_give_the_cap_back() -> None:
    queues, clock = make()
    queues.set_limits("q", QueueLimits(group_concurrency=1))
    add(queues, "a", 3)
    queues.subscribe("w1", "q", 5, lease=10.0)
    (job,) = dispatch(queues)
    assert queues.release("w1", job.id, job.lease, queues.now()) is job
    (job,) = dispatch(queues)
    assert job.group == "a"
    queues.drop("w1", queues.now())
    queues.subscribe("w2", "q", 5, lease=10.0)
    (job,) = dispatch(queues)
    clock.advance(11.0)
    queues.tick(queues.now())  # w2 was silent: its lease ran out
    queues.subscribe("w3", "q", 5, lease=10.0)
    (again,) = dispatch(queues)
    assert again is job and again.holder is not None and again.holder.owner == "w3"
    line = queues.queues["q"].waiting
    assert isinstance(line, GroupedLine) and line.lanes["a"].active == 1


def test_changing_group_limits_at_run_time_takes_effect_for_the_next_starts() -> None:
    queues, _ = make()
    queues.set_limits("q", QueueLimits(group_concurrency=1))
    add(queues, "a", 5)
    queues.subscribe("w", "q", 10)
    assert len(dispatch(queues)) == 1
    queues.set_limits("q", QueueLimits(group_concurrency=3))
    assert len(dispatch(queues)) == 2  # the raised cap unblocks the group at once
    queues.set_limits("q", QueueLimits(group_concurrency=1))
    assert dispatch(queues) == []  # lowered: nothing taken back, nothing more starts
    queues.set_limits("q", QueueLimits())
    assert len(dispatch(queues)) == 2  # cleared: the rest start


def test_queue_limits_still_cap_a_grouped_queue() -> None:
    queues, clock = make()
    queues.set_limits("q", QueueLimits(concurrency=3, rate=10, per=1.0))
    for group in "abcdef":
        add(queues, group, 2)
    queues.subscribe("w", "q", 10)
    assert len(dispatch(queues)) == 1  # the queue's rate: one now, the next 0.1 s on
    serve_timer(queues, clock)
    assert len(dispatch(queues)) == 1
    serve_timer(queues, clock)
    assert len(dispatch(queues)) == 1
    serve_timer(queues, clock)
    assert dispatch(queues) == []  # three active: the queue's cap
    assert queues.counts("q")["active"] == 3


def test_replay_and_snapshot_keep_groups_and_group_limits() -> None:
    queues, _ = make(logged=True)
    limits = QueueLimits(group_concurrency=2, group_rate=5, group_per=2.0)
    queues.set_limits("q", limits)
    add(queues, "a", 3)
    add(queues, "b", 2)
    add(queues, None, 1)
    queues.subscribe("w", "q", 1)
    (active,) = dispatch(queues)
    records = queues.take_outbox().records
    for source in (records, list(snapshot(queues))):
        fresh, _ = make()
        replayer = Replayer(fresh)
        for record in source:
            replayer.apply(msgspec.msgpack.decode(msgspec.msgpack.encode(record),
                                                  type=type(record)))
        replayer.finish()
        queue = fresh.queues["q"]
        assert queue.limits == limits
        assert isinstance(queue.waiting, GroupedLine)
        groups = {job.id: job.group for job in queue.waiting}
        assert groups == {job_id: job.group for job_id, job in queues.jobs.items()}
        assert groups[active.id] == active.group
        assert fresh.jobs[active.id].info().group == active.group
        fresh.subscribe("w", "q", 10)
        restarted = dispatch(fresh)
        # One of each lane: the groups' rate allows one start each now.
        assert sorted(str(job.group) for job in restarted) == ["None", "a", "b"]


def test_lifo_jobs_and_a_throttle_keep_their_group_and_give_the_cap_back() -> None:
    queues, clock = make()
    queues.set_limits("q", QueueLimits(group_concurrency=1))
    add(queues, "a", 2)
    jobs = queues.create("q", [JobDef(raw("last"), group="a", lifo=True)], queues.now())
    queues.enqueue(jobs)
    queues.subscribe("w", "q", 5)
    (first,) = dispatch(queues)
    assert first is jobs[0]  # LIFO: the head of its group's line
    assert queues.throttle("w", first.id, first.lease, 1.0, queues.now()) is first
    assert dispatch(queues) == []  # the queue is held
    serve_timer(queues, clock)
    (again,) = dispatch(queues)  # the hold is over, and the cap was given back
    assert again is first and again.group == "a"


def test_adding_and_removing_jobs_of_ever_new_groups_leaves_nothing_behind() -> None:
    queues, _ = make()
    add(queues, None, 1)
    add(queues, "kept", 1)
    for n in range(1000):
        (job_id,) = add(queues, f"g{n}")
        queues.remove(job_id)
    line = queues.queues["q"].waiting
    assert isinstance(line, GroupedLine)
    assert set(line.lanes) == {"kept"} and len(line.ring) == 2 and len(line) == 2
    queues.subscribe("w", "q", 5)
    assert [job.group for job in dispatch(queues)] == [None, "kept"]


def test_a_page_of_waiting_jobs_looks_only_at_the_groups_it_lists(
        monkeypatch: pytest.MonkeyPatch) -> None:
    queues, _ = make()
    for n in range(2000):
        add(queues, f"g{n}", 2)
    line = queues.queues["q"].waiting
    assert isinstance(line, GroupedLine)
    lines = type(line.plain.line)
    looked = 0
    whole = lines.__iter__

    def counted(self: object) -> Iterator[Job]:
        nonlocal looked
        looked += 1
        return whole(self)  # type: ignore[arg-type]

    monkeypatch.setattr(lines, "__iter__", counted)
    page, total = queues.list_jobs("q", JobState.WAITING, 0, 5)
    assert total == 4000
    assert [job.group for job in page] == [f"g{n}" for n in range(5)]
    # A first page costs the lanes it lists, not one look at each of the 2,000 groups (a
    # dashboard's page of a million groups held the broker's loop for seconds).
    assert looked <= 5
    monkeypatch.undo()
    second = [job.group for job in line][2000:2003]
    assert second == ["g0", "g1", "g2"]  # every lane's first job, then their second ones


class _Looked(dict[str, object]):
    """A group table that counts the looks at every group."""

    looks = 0

    def values(self):  # type: ignore[no-untyped-def]
        _Looked.looks += 1
        return super().values()

    def items(self):  # type: ignore[no-untyped-def]
        _Looked.looks += 1
        return super().items()

    def __iter__(self):  # type: ignore[no-untyped-def]
        _Looked.looks += 1
        return super().__iter__()


def test_the_count_of_groups_in_stats_does_not_look_at_every_group() -> None:
    queues, clock = make()
    queues.set_limits("q", QueueLimits(group_rate=1, group_per=10.0))
    add(queues, "busy", 2)
    for n in range(3):
        add(queues, f"g{n}")
    line = queues.queues["q"].waiting
    assert isinstance(line, GroupedLine)
    line.lanes = _Looked(line.lanes)  # type: ignore[assignment]
    assert line.groups == 4
    queues.subscribe("w", "q", 10)
    started = dispatch(queues)
    assert len(started) == 4 and line.groups == 4
    for job in started:
        ack(queues, job)
    # "busy" still waits (for its next slot); the others rest until theirs passes.
    assert line.groups == 1 and len(line.lanes) == 4
    add(queues, "g0")
    assert line.groups == 2
    # A stats call with a million groups counted them one by one, holding the broker's loop.
    assert _Looked.looks == 0
    serve_timer(queues, clock)
    assert line.groups == 2 and set(line.lanes) == {"busy", "g0"}


def test_a_busy_group_keeps_its_rate_in_a_state_that_does_not_grow_with_its_starts() -> None:
    queues, clock = make()
    queues.set_limits("q", QueueLimits(group_rate=1000, group_per=1.0))
    add(queues, "busy", 300)
    queues.subscribe("w", "q", 10)
    line = queues.queues["q"].waiting
    assert isinstance(line, GroupedLine)
    starts: list[float] = []
    while len(starts) < 300:
        for job in dispatch(queues):
            starts.append(clock.monotonic())
            ack(queues, job)
        if len(starts) < 300:
            serve_timer(queues, clock)
    # Every start one interval after the last: the rate holds in any window.
    assert min(b - a for a, b in zip(starts, starts[1:], strict=False)) >= 0.001 - 1e-6
    rules = line.lanes["busy"].limiter
    assert rules is not None
    # What a group keeps of its rate is one slot, not a log of its last starts (up to
    # group_rate of them, for every busy group: gigabytes for a thousand tenants at 100,000/s).
    assert not rules.starts
