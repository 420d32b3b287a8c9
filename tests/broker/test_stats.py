"""``get_stats`` as the state machine answers it, driven with a fake clock: per-queue counts since
the start, rates over 1, 5 and 15 minutes, the wait and run time histograms, the switch that
turns the per-try statistics off, and what a user who may read only some queues sees."""

from __future__ import annotations

import msgspec
import pytest
from queue_state import raw

from conveyor.broker import Permission, User
from conveyor.broker.testing import (
    STATS_PAGE,
    Core,
    ManualClock,
    Queues,
    RecordingPeer,
    handle,
)
from conveyor.protocol import (
    DEFAULT_MAX_FRAME,
    HISTOGRAM_BOUNDS,
    Backoff,
    GetStats,
    Histogram,
    JobDef,
    JobError,
    QueueStats,
    Stats,
)

ERROR = JobError(type="Boom", message="it broke")


class Broker:
    """A core on a manual clock, with one peer asking for statistics and workers by name."""

    def __init__(self, *, stats: bool = True, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.clock = ManualClock()
        self.queues = Queues(clock=self.clock, stats=stats)
        self.core = Core(self.queues, max_frame=max_frame)
        self.asker = RecordingPeer("asker")

    def now(self) -> float:
        return self.queues.now()

    def add(self, queue: str, count: int = 1, *, delay: float = 0.0, attempts: int = 1,
            backoff: Backoff | None = None) -> list[int]:
        jobs = [JobDef(data=raw(n), delay=delay, attempts=attempts, backoff=backoff)
                for n in range(count)]
        created = self.queues.create(queue, jobs, self.now())
        self.queues.enqueue(created)
        return [job.id for job in created]

    def deliver(self) -> list[tuple[str, int, int]]:
        """Dispatch now: (owner, job id, lease) of every delivery."""
        self.queues.tick(self.now())
        return [(str(consumer.owner), job.id, job.lease)
                for consumer, jobs in self.queues.dispatch(self.now()) for job in jobs]

    def stats(self, queue: str | None = None, user: User | None = None, *,
              after: str = "") -> Stats:
        self.asker.user = user
        handle(self.core, self.asker, GetStats(req=7, queue=queue, after=after), self.now())
        (reply,) = self.asker.take()
        assert isinstance(reply, Stats), reply
        return reply

    def queue(self, name: str = "q") -> QueueStats:
        (found,) = [q for q in self.stats().queues if q.name == name]
        return found


def bucket(seconds: float) -> int:
    """The index of the bucket a duration of ``seconds`` falls in."""
    for index, bound in enumerate(HISTOGRAM_BOUNDS):
        if seconds <= bound:
            return index
    return len(HISTOGRAM_BOUNDS)


def only(histogram: Histogram | None, *, recent: bool = False) -> dict[int, int]:
    """The buckets of ``histogram`` that counted something."""
    assert histogram is not None
    counts = histogram.recent if recent else histogram.counts
    return {index: count for index, count in enumerate(counts) if count}


# Counts since the start, and rates.


def test_added_started_and_retried_are_counted_with_their_rates() -> None:
    broker = Broker()
    broker.queues.subscribe("w", "q", 10)
    broker.add("q", 4, attempts=2)
    delivered = broker.deliver()
    assert len(delivered) == 4
    for _, job_id, lease in delivered[:3]:
        assert broker.queues.fail("w", job_id, lease, ERROR, broker.now()) is not None
    q = broker.queue()
    assert (q.added, q.started, q.retried) == (4, 4, 3)
    assert q.added_rate.m1 == pytest.approx(4 / 60)
    assert q.started_rate.m1 == pytest.approx(4 / 60)
    assert q.retried_rate.m1 == pytest.approx(3 / 60)
    # The retries are delivered again: four more tries started, one job completed.
    again = broker.deliver()
    assert len(again) == 3
    _, job_id, lease = delivered[3]
    assert broker.queues.ack("w", job_id, lease, raw("ok"), broker.now()) is not None
    q = broker.queue()
    assert (q.started, q.completed, q.failed) == (7, 1, 0)
    assert q.completed_rate == pytest.approx(type(q.completed_rate)(1 / 60, 1 / 300, 1 / 900))


def test_rates_look_back_1_5_and_15_minutes() -> None:
    broker = Broker()
    broker.clock.advance(-broker.clock.monotonic() % 60)  # at the start of a minute
    broker.add("q", 60)
    rate = broker.queue().added_rate
    assert (rate.m1, rate.m5, rate.m15) == pytest.approx((1.0, 60 / 300, 60 / 900))
    broker.clock.advance(120)
    rate = broker.queue().added_rate
    assert (rate.m1, rate.m5, rate.m15) == pytest.approx((0.0, 60 / 300, 60 / 900))
    broker.clock.advance(6 * 60)  # 8 minutes on
    rate = broker.queue().added_rate
    assert (rate.m1, rate.m5, rate.m15) == pytest.approx((0.0, 0.0, 60 / 900))
    broker.clock.advance(8 * 60)  # 16 minutes on
    rate = broker.queue().added_rate
    assert (rate.m1, rate.m5, rate.m15) == (0.0, 0.0, 0.0)


def test_the_oldest_minute_counts_for_its_share_of_the_span() -> None:
    broker = Broker()
    broker.clock.advance(-broker.clock.monotonic() % 60)
    broker.add("q", 60)
    # 5 minutes and a half later, half of that minute lies within the last 5 minutes.
    broker.clock.advance(5 * 60 + 30)
    assert broker.queue().added_rate.m5 == pytest.approx(30 / 300)


def test_a_long_silence_forgets_the_old_events() -> None:
    broker = Broker()
    broker.add("q", 30)
    broker.clock.advance(3600)
    broker.add("q", 6)
    rate = broker.queue().added_rate
    assert (rate.m1, rate.m5, rate.m15) == pytest.approx((6 / 60, 6 / 300, 6 / 900))
    assert broker.queue().added == 36


def test_a_step_of_the_wall_clock_does_not_move_the_rates() -> None:
    broker = Broker()
    broker.queues.subscribe("w", "q", 5)
    broker.add("q", 5)
    for _, job_id, lease in broker.deliver():
        broker.queues.ack("w", job_id, lease, raw("ok"), broker.now())
    broker.clock.step(7200)  # set two hours forward: no time passed
    rate = broker.queue().completed_rate
    assert (rate.m1, rate.m5, rate.m15) == pytest.approx((5 / 60, 5 / 300, 5 / 900))
    broker.clock.step(-14400)  # and back
    assert broker.queue().started_rate.m1 == pytest.approx(5 / 60)


# Wait and run times.


def test_wait_counts_from_the_add_to_the_delivery() -> None:
    broker = Broker()
    broker.add("q", 3)
    broker.clock.advance(0.3)
    broker.queues.subscribe("w", "q", 3)
    assert len(broker.deliver()) == 3
    wait = broker.queue().wait_time
    assert only(wait) == {bucket(0.3): 3}
    assert wait is not None and wait.sum == pytest.approx(0.9)
    assert wait.count == 3
    assert wait.quantile(0.5) == HISTOGRAM_BOUNDS[bucket(0.3)]


def test_a_delayed_job_waits_from_its_due_time() -> None:
    broker = Broker()
    broker.queues.subscribe("w", "q", 1)
    broker.add("q", delay=10.0)
    # The timer runs 13 s later (a busy loop): the job waited 3 s, not 13.
    broker.clock.advance(13)
    assert len(broker.deliver()) == 1
    assert only(broker.queue().wait_time) == {bucket(3.0): 1}


def test_a_retry_waits_from_the_end_of_its_backoff() -> None:
    broker = Broker()
    broker.queues.subscribe("w", "q", 1)
    broker.add("q", attempts=2, backoff=Backoff(type="fixed", delay=20.0))
    ((_, job_id, lease),) = broker.deliver()
    broker.clock.advance(0.004)
    broker.queues.fail("w", job_id, lease, ERROR, broker.now())
    broker.clock.advance(20 + 7)  # due after 20 s, delivered 7 s after that
    assert len(broker.deliver()) == 1
    q = broker.queue()
    # The first try waited 0 s, the retry 7 s (not 27); the first try ran 4 ms.
    assert only(q.wait_time) == {0: 1, bucket(7.0): 1}
    assert only(q.run_time) == {bucket(0.004): 1}
    assert q.retried == 1


def test_run_time_counts_from_the_delivery_to_the_ack_or_the_failure() -> None:
    broker = Broker()
    broker.queues.subscribe("w", "q", 3)
    broker.add("q", 3)
    first, second, third = broker.deliver()
    broker.clock.advance(0.3)
    broker.queues.ack("w", first[1], first[2], raw("ok"), broker.now())
    broker.clock.advance(40)
    broker.queues.fail("w", second[1], second[2], ERROR, broker.now())
    # A job handed back unrun is not timed.
    broker.queues.release("w", third[1], third[2], broker.now())
    run = broker.queue().run_time
    assert only(run) == {bucket(0.3): 1, bucket(40.3): 1}
    assert run is not None and run.sum == pytest.approx(40.6)


def test_recent_counts_forget_what_is_over_five_minutes_old() -> None:
    broker = Broker()
    broker.queues.subscribe("w", "q", 2)
    broker.add("q")
    ((_, job_id, lease),) = broker.deliver()
    broker.clock.advance(2.0)
    broker.queues.ack("w", job_id, lease, raw("ok"), broker.now())
    run = broker.queue().run_time
    assert only(run, recent=True) == only(run) == {bucket(2.0): 1}
    broker.clock.advance(7 * 60)
    broker.add("q")
    ((_, job_id, lease),) = broker.deliver()
    broker.clock.advance(2.0)  # as long as the first: one more in the same bucket
    broker.queues.ack("w", job_id, lease, raw("ok"), broker.now())
    run = broker.queue().run_time
    assert only(run) == {bucket(2.0): 2}
    assert only(run, recent=True) == {bucket(2.0): 1}
    assert run is not None and run.quantile(0.99, recent=True) == HISTOGRAM_BOUNDS[bucket(2.0)]
    broker.clock.advance(7 * 60)
    run = broker.queue().run_time
    assert only(run, recent=True) == {}
    assert run is not None and run.quantile(0.5) is None  # recent: nothing
    assert run.quantile(0.5, recent=False) == HISTOGRAM_BOUNDS[bucket(2.0)]


def test_stats_off_counts_no_tries() -> None:
    broker = Broker(stats=False)
    broker.queues.subscribe("w", "q", 2)
    broker.add("q", 2, attempts=2)
    (first, second) = broker.deliver()
    broker.queues.ack("w", first[1], first[2], raw("ok"), broker.now())
    broker.queues.fail("w", second[1], second[2], ERROR, broker.now())
    q = broker.queue()
    assert (q.added, q.completed, q.started, q.retried) == (2, 1, 0, 0)
    assert q.wait_time is None and q.run_time is None
    assert q.started_rate.m1 == q.retried_rate.m1 == 0.0
    # What stays: the counts and the rates of added and completed jobs.
    assert q.added_rate.m1 == pytest.approx(2 / 60)
    assert q.completed_rate.m1 == pytest.approx(1 / 60)


# Who sees what.


def reader(*globs: str) -> User:
    return User(name="reader", secret=None, certificate=True,
                rules={Permission.READ: globs})


def test_a_user_sees_only_the_queues_it_may_read() -> None:
    broker = Broker()
    for name in ("a1", "a2", "b1"):
        broker.add(name)
    names = [q.name for q in broker.stats(user=reader("a*")).queues]
    assert names == ["a1", "a2"]
    assert [q.name for q in broker.stats().queues] == ["a1", "a2", "b1"]
    assert [q.name for q in broker.stats("a2").queues] == ["a2"]


def test_a_user_who_may_read_some_queues_learns_nothing_of_the_others_work() -> None:
    broker = Broker()
    broker.add("a1")
    broker.add("b1", 50)
    figures = broker.stats(user=reader("a*")).broker
    assert (figures.queues, figures.jobs, figures.memory, figures.live_bytes) == (0, 0, 0, 0)
    assert figures.uptime >= 0 and figures.version
    assert broker.stats(user=reader("*")).broker.jobs == 51


def test_broker_figures_without_a_server() -> None:
    broker = Broker()
    broker.add("q", 3)
    figures = broker.stats().broker
    assert (figures.queues, figures.jobs) == (1, 3)
    assert figures.memory > 0
    assert figures.live_bytes > 0
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(figures), type=type(figures)) == figures


# Pages: a broker of many queues answers in frames within its limit.


def pages(broker: Broker, user: User | None = None) -> list[Stats]:
    """Every page of ``get_stats``, as a client asks for them."""
    found = [broker.stats(user=user)]
    while found[-1].more:
        found.append(broker.stats(user=user, after=found[-1].queues[-1].name))
    return found


@pytest.mark.parametrize("max_frame", [DEFAULT_MAX_FRAME, 16_384])
def test_many_queues_come_in_pages_within_the_frame_limit(max_frame: int) -> None:
    broker = Broker(max_frame=max_frame)
    names = [f"queue-{n:05d}" for n in range(2 * STATS_PAGE + 10)]
    for name in names:
        broker.add(name)
    found = pages(broker)
    assert len(found) > 2
    assert [q.name for page in found for q in page.queues] == names
    for page in found:
        assert len(page.queues) <= STATS_PAGE
        assert len(msgspec.msgpack.encode(page)) <= max_frame


def test_pages_skip_the_queues_a_user_may_not_read() -> None:
    broker = Broker(max_frame=8_192)
    for n in range(40):
        broker.add(f"a{n:02d}")
        broker.add(f"b{n:02d}")
    found = pages(broker, reader("a*"))
    assert len(found) > 1
    assert [q.name for page in found for q in page.queues] == [f"a{n:02d}" for n in range(40)]
