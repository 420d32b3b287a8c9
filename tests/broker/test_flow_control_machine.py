"""Flow control under random traffic: a queue's rate and concurrency limits, groups with caps and
rates of their own, several subscribers with credit windows, acks, failures, releases, drops,
lost leases, removes, drains, retries of failed jobs, promotions, the groups' limits changed at
run time and time passing on a manual clock (the timer served on time).

After every step: no limit was ever exceeded, dispatch was work-conserving within the limits (no
subscriber has a free slot while a waiting job could start, and a job that waits for a rate slot
has the timer armed for it), and no group was starved (a group that could start a job is passed
over by at most one start of each other lane before it gets one).
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from queue_state import raw

from conveyor.broker.testing import GroupedLine, Job, Kind, ManualClock, Queues
from conveyor.protocol import JobDef, JobError, QueueLimits

GROUPS = ("a", "b", "c", None)
"""The lanes: three groups and the jobs of no group."""
OWNERS = ("w1", "w2", "w3")
SLACK = 1e-5
"""Seconds by which times compared across the wall and monotonic clocks may differ."""

Lane = str | None


class FlowControlMachine(RuleBasedStateMachine):
    """One queue with limits, three subscribers and four lanes of jobs."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.queues = Queues(clock=self.clock)
        self.limits = QueueLimits()
        self.windows: dict[str, int] = {}
        self.starts: list[tuple[float, Lane]] = []
        self.passed_over: dict[Lane, int] = dict.fromkeys(GROUPS, 0)
        """Starts of other lanes since each lane last started while it could have."""
        self.relimited = 0
        """How many starts there were when the groups' limits last changed: their rate holds
        for the starts since."""
        self.over: dict[Lane, int] = {}
        """Jobs of a group still active above a cap lowered under them (nothing taken back)."""

    # Helpers.

    def _held(self) -> list[Job]:
        queue = self.queues.queues["q"]
        return [job for consumer in queue.consumers.values() for job in consumer.held.values()]

    def _active(self, lane: Lane) -> int:
        return sum(1 for job in self._held() if job.group == lane)

    def _waiting(self, lane: Lane) -> int:
        return sum(1 for job in self.queues.queues["q"].waiting if job.group == lane)

    def _may_start(self, lane: Lane) -> bool:
        """Whether a job of ``lane`` is waiting and its group's limits allow it to start."""
        if not self._waiting(lane):
            return False
        if lane is None:
            return True
        cap = self.limits.group_concurrency
        if cap is not None and self._active(lane) >= cap:
            return False
        line = self.queues.queues["q"].waiting
        assert isinstance(line, GroupedLine)
        rules = line.lanes[lane].limiter
        return rules is None or rules.due() <= self.clock.monotonic()

    def _job(self, owner: str) -> Job | None:
        consumer = self.queues.consumer(owner, "q")
        if consumer is None or not consumer.held:
            return None
        return next(iter(consumer.held.values()))

    def _dispatch(self) -> None:
        eligible = {lane for lane in GROUPS if self._may_start(lane)}
        left = {lane: self._waiting(lane) for lane in GROUPS}
        started = sorted((job for _, jobs in self.queues.dispatch(self.queues.now())
                          for job in jobs), key=lambda job: job.lease)  # the order taken
        at = self.clock.monotonic()
        for job in started:
            lane = job.group
            self.starts.append((at, lane))
            self.passed_over[lane] = 0
            left[lane] -= 1
            for other in eligible - {lane}:
                if left[other]:
                    self.passed_over[other] += 1
        for lane in GROUPS:
            if not self._may_start(lane):
                self.passed_over[lane] = 0

    # Rules.

    @initialize(rate=st.none() | st.integers(1, 5), per=st.sampled_from([0.5, 1.0, 2.0]),
                concurrency=st.none() | st.integers(1, 8),
                group_concurrency=st.none() | st.integers(1, 3),
                group_rate=st.none() | st.integers(1, 3),
                group_per=st.sampled_from([0.5, 1.0, 3.0]),
                windows=st.lists(st.integers(0, 4), min_size=3, max_size=3))
    def start(self, rate: int | None, per: float, concurrency: int | None,
              group_concurrency: int | None, group_rate: int | None, group_per: float,
              windows: list[int]) -> None:
        self.limits = QueueLimits(rate=rate, per=per, concurrency=concurrency,
                                  group_concurrency=group_concurrency, group_rate=group_rate,
                                  group_per=group_per)
        self.queues.set_limits("q", self.limits)
        for owner, window in zip(OWNERS, windows, strict=True):
            self.windows[owner] = window
            self.queues.subscribe(owner, "q", window)
        self._dispatch()

    @rule(lane=st.sampled_from(GROUPS), count=st.integers(1, 6), retries=st.booleans())
    def add(self, lane: Lane, count: int, retries: bool) -> None:
        jobs = self.queues.create("q", [JobDef(raw(n), group=lane, attempts=2 if retries else 1)
                                        for n in range(count)], self.queues.now())
        self.queues.enqueue(jobs)
        self._dispatch()

    @rule(owner=st.sampled_from(OWNERS))
    def ack(self, owner: str) -> None:
        job = self._job(owner)
        if job is not None:
            assert self.queues.ack(owner, job.id, job.lease, raw(None), self.queues.now())
        self._dispatch()

    @rule(owner=st.sampled_from(OWNERS))
    def fail(self, owner: str) -> None:
        job = self._job(owner)
        if job is not None:
            assert self.queues.fail(owner, job.id, job.lease, JobError(type="E", message="m"),
                                    self.queues.now())
        self._dispatch()

    @rule(owner=st.sampled_from(OWNERS))
    def release(self, owner: str) -> None:
        job = self._job(owner)
        if job is not None:
            assert self.queues.release(owner, job.id, job.lease, self.queues.now())
        self._dispatch()

    @rule(owner=st.sampled_from(OWNERS), seconds=st.floats(0.01, 1.0))
    def throttle(self, owner: str, seconds: float) -> None:
        job = self._job(owner)
        if job is not None:
            assert self.queues.throttle(owner, job.id, job.lease, seconds, self.queues.now())
        self._dispatch()

    @rule(paused=st.booleans())
    def pause(self, paused: bool) -> None:
        self.queues.pause("q", paused)
        self._dispatch()

    @rule(owner=st.sampled_from(OWNERS))
    def drop(self, owner: str) -> None:
        self.queues.drop(owner, self.queues.now())
        self.queues.subscribe(owner, "q", self.windows[owner])  # it reconnects
        self._dispatch()

    @rule(owner=st.sampled_from(OWNERS), window=st.integers(0, 4))
    def resize(self, owner: str, window: int) -> None:
        self.windows[owner] = window
        self.queues.subscribe(owner, "q", window)
        self._dispatch()

    @rule(group_concurrency=st.none() | st.integers(1, 3),
          group_rate=st.none() | st.integers(1, 3), group_per=st.sampled_from([0.5, 1.0, 3.0]))
    def relimit(self, group_concurrency: int | None, group_rate: int | None,
                group_per: float) -> None:
        self.limits = QueueLimits(rate=self.limits.rate, per=self.limits.per,
                                  concurrency=self.limits.concurrency,
                                  group_concurrency=group_concurrency, group_rate=group_rate,
                                  group_per=group_per)
        self.queues.set_limits("q", self.limits)
        self.relimited = len(self.starts)
        self.over = {lane: self._active(lane) for lane in GROUPS[:-1]}
        self._dispatch()

    @rule(index=st.integers(0, 30))
    def remove(self, index: int) -> None:
        waiting = list(self.queues.queues["q"].waiting)
        if waiting:
            self.queues.remove(waiting[index % len(waiting)].id, self.queues.now())
        self._dispatch()

    @rule()
    def drain(self) -> None:
        self.queues.drain("q", self.queues.now())
        self._dispatch()

    @rule()
    def retry_failed(self) -> None:
        self.queues.retry_failed("q", now=self.queues.now())
        self._dispatch()

    @rule(lane=st.sampled_from(GROUPS), lifo=st.booleans())
    def promote(self, lane: Lane, lifo: bool) -> None:
        (job,) = self.queues.create("q", [JobDef(raw(0), group=lane, delay=5.0, lifo=lifo)],
                                    self.queues.now())
        self.queues.enqueue([job])
        assert self.queues.promote(job.id, self.queues.now()) is job
        self._dispatch()

    @rule(owner=st.sampled_from(OWNERS))
    def lose_lease(self, owner: str) -> None:
        consumer = self.queues.consumer(owner, "q")
        if consumer is not None and consumer.held:
            # Silent for a whole lease: its jobs go back; then it is heard from again.
            consumer.deadline = float("-inf")
            self.queues.dispatcher.lease_due(consumer.id, self.queues.now())
            self.queues.extend(owner, "q", self.queues.now())
        self._dispatch()

    @rule(seconds=st.floats(0.001, 2.0))
    def wait(self, seconds: float) -> None:
        # Time passes, but the timer is served on time: never past a deadline.
        due = self.queues.next_deadline()
        if due is not None:
            seconds = min(seconds, max(due - self.clock.monotonic(), 0.0))
        self.clock.advance(seconds)
        self.queues.tick(self.queues.now())
        if due is not None and self.queues.next_deadline() == due <= self.clock.monotonic():
            # Wall times moved onto the monotonic clock round (by ~2e-7 s at today's wall).
            self.clock.advance(1e-6)
            self.queues.tick(self.queues.now())
        self._dispatch()

    # Invariants.

    @invariant()
    def concurrency_is_never_exceeded(self) -> None:
        queue = self.queues.queues["q"]
        assert queue.active == len(self._held())
        if self.limits.concurrency is not None:
            assert queue.active <= self.limits.concurrency
        cap = self.limits.group_concurrency
        line = queue.waiting
        for lane in GROUPS[:-1]:
            active = self._active(lane)
            if cap is not None:
                assert active <= max(cap, self.over.get(lane, 0))
            self.over[lane] = min(self.over.get(lane, 0), active)
            if active:
                assert isinstance(line, GroupedLine) and line.lanes[str(lane)].active == active

    @invariant()
    def rates_are_never_exceeded_in_any_window(self) -> None:
        if not self.starts:
            return
        at, lane = self.starts[-1]
        limits = self.limits
        if limits.rate is not None:
            within = [t for t, _ in self.starts if t > at - limits.per + SLACK]
            assert len(within) <= limits.rate
        if limits.group_rate is not None and lane is not None:
            within = [t for t, other in self.starts[self.relimited:]
                      if other == lane and t > at - limits.group_per + SLACK]
            assert len(within) <= limits.group_rate

    @invariant()
    def dispatch_is_work_conserving_within_the_limits(self) -> None:
        queue = self.queues.queues["q"]
        if queue.paused or not any(consumer.free > 0 for consumer in queue.consumers.values()):
            return
        if self.limits.concurrency is not None and queue.active >= self.limits.concurrency:
            return
        limiter = queue.limiter
        at = self.clock.monotonic()
        if limiter is not None and at < limiter.until:
            # Held back by a throttle: the timer is armed for the end of the hold.
            if queue.waiting:
                assert self.queues.deadlines.when(Kind.LIMIT, "q") == limiter.until
            return
        rated = limiter is not None and limiter.interval is not None and limiter.due() > at
        cap = self.limits.group_concurrency
        for lane in () if rated else GROUPS[:-1]:
            if self._waiting(lane) and not self._may_start(lane) and (
                    cap is None or self._active(lane) < cap):
                # Waiting for its group's next slot: the timer is armed for it.
                line = queue.waiting
                assert isinstance(line, GroupedLine)
                rules = line.lanes[str(lane)].limiter
                assert rules is not None
                when = self.queues.deadlines.when(Kind.GROUP, ("q", lane))
                assert when is not None and when <= rules.due() + SLACK
        startable = [lane for lane in GROUPS if self._may_start(lane)]
        if not startable:
            return
        if rated:
            # Waiting for the queue's next slot: the timer is armed for it.
            assert limiter is not None
            when = self.queues.deadlines.when(Kind.LIMIT, "q")
            assert when is not None and when <= limiter.due() + SLACK
            return
        raise AssertionError(f"jobs of {startable} could start on a free slot")

    @invariant()
    def no_group_is_starved(self) -> None:
        for lane in GROUPS:
            assert self.passed_over[lane] <= len(GROUPS) - 1, f"{lane!r} passed over"

    @invariant()
    def idle_groups_leave_nothing_behind(self) -> None:
        line = self.queues.queues["q"].waiting
        if isinstance(line, GroupedLine):
            for name, lane in line.lanes.items():
                assert lane.line or lane.active or self.queues.deadlines.when(
                    Kind.GROUP, ("q", name)) is not None
        else:
            assert not self._held() or all(job.group is None for job in self._held())


FlowControlMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40,
                                                deadline=None)
TestFlowControl = FlowControlMachine.TestCase
