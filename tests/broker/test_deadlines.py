"""Deadlines by kind and id: served in time order, each id at most once per kind, and never more
stale heap entries than a constant factor of the live ones."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from queue_state import raw

from conveyor.broker.testing import Deadlines, Kind, Queues
from conveyor.protocol import JobDef

KINDS = list(Kind)
KEYS = st.integers(0, 6)
TIMES = st.integers(0, 20).map(float)


class DeadlinesMachine(RuleBasedStateMachine):
    """Random set / cancel / pop against a model: a dict of (kind, id) -> (when, order set)."""

    def __init__(self) -> None:
        super().__init__()
        self.deadlines = Deadlines()
        self.model: dict[tuple[Kind, int], tuple[float, int]] = {}
        self.order = 0

    @rule(kind=st.sampled_from(KINDS), key=KEYS, when=TIMES)
    def set(self, kind: Kind, key: int, when: float) -> None:
        self.order += 1
        self.deadlines.set(kind, key, when)
        self.model[kind, key] = (when, self.order)

    @rule(kind=st.sampled_from(KINDS), key=KEYS)
    def cancel(self, kind: Kind, key: int) -> None:
        self.deadlines.cancel(kind, key)
        self.model.pop((kind, key), None)

    @rule(now=TIMES)
    def pop_due(self, now: float) -> None:
        due = sorted((when, kind, order, key) for (kind, key), (when, order) in self.model.items()
                     if when <= now)
        popped = []
        while (item := self.deadlines.pop(now)) is not None:
            popped.append(item)
        assert popped == [(kind, key) for _, kind, _, key in due]
        for _, kind, _, key in due:
            del self.model[kind, key]

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert len(self.deadlines) == len(self.model)
        earliest = min((when for when, _ in self.model.values()), default=None)
        assert self.deadlines.next() == earliest
        for (kind, key), (when, _) in self.model.items():
            assert self.deadlines.when(kind, key) == when
            assert key in self.deadlines.live(kind)

    @invariant()
    def stale_entries_stay_bounded(self) -> None:
        assert self.deadlines.entries <= 3 * len(self.deadlines) + 16


DeadlinesMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=60,
                                              deadline=None)
TestDeadlinesMachine = DeadlinesMachine.TestCase


def test_rescheduling_one_id_many_times_keeps_the_heap_small() -> None:
    deadlines = Deadlines()
    for n in range(10_000):
        deadlines.set(Kind.LEASE, 1, float(n))
        assert deadlines.entries <= 3 * len(deadlines) + 16
    assert len(deadlines) == 1 and deadlines.next() == 9999.0


def test_jobs_that_leave_drop_their_deadlines() -> None:
    """Promoted, removed and drained delayed jobs, and expired or removed finished jobs, leave no
    live deadline behind; neither does a dropped subscriber."""
    queues = Queues()
    delayed = queues.create("q", [JobDef(data=raw(n), delay=10.0 + n) for n in range(6)], 0.0)
    queues.enqueue(delayed)
    assert len(queues.deadlines) == 6
    queues.promote(delayed[0].id)
    queues.remove(delayed[1].id)
    assert len(queues.deadlines) == 4
    assert queues.drain("q") == 5  # the promoted one waits, four are delayed
    assert len(queues.deadlines) == 0 and queues.next_deadline() is None
    kept = queues.create("r", [JobDef(data=raw(n), keep_result=5.0) for n in range(2)], 0.0)
    queues.enqueue(kept)
    queues.subscribe("w", "r", 2)
    for consumer, jobs in queues.dispatch(0.0):
        for job in jobs:
            queues.ack(consumer.owner, job.id, job.lease, raw(None), 1.0)
    assert queues.deadlines.live(Kind.EXPIRE).keys() == {job.id for job in kept}
    queues.remove(kept[0].id)
    assert queues.deadlines.live(Kind.EXPIRE).keys() == {kept[1].id}
    queues.tick(6.0)
    assert kept[1].id not in queues.jobs
    queues.add("r", [raw("held")], 7.0)
    queues.dispatch(7.0)
    assert len(queues.deadlines.live(Kind.LEASE)) == 1
    queues.drop("w", 8.0)
    assert len(queues.deadlines) == 0
