"""Repeatable jobs on the queue state machine with a manual clock: every due time of a schedule
(``every`` seconds, or a cron expression in a time zone, across a DST change) makes exactly one
job, an upsert moves the next due time, a removed schedule makes no more, and a replay of the
log restores the schedules, giving missed due times one job (``once``) or none (``skip``)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from queue_state import raw
from state_checks import check_state

from conveyor.broker.testing import Kind, ManualClock, Queues, Replayer
from conveyor.protocol import Schedule


def make_queues(clock: ManualClock) -> Queues:
    return Queues(clock=clock, logged=True)


def schedule(id: str = "s", **fields: object) -> Schedule:
    return msgspec.structs.replace(Schedule(id=id, queue="q", data=raw(id)), **fields)


def run_until(queues: Queues, clock: ManualClock, wall: float) -> None:
    """Let time pass until ``wall``, serving each deadline when it falls due (as the timer
    does), and put the jobs schedules made in line (as the flush does once they are durable)."""
    while True:
        due = queues.next_deadline()
        if due is None or due - clock.monotonic() > wall - clock.wall():
            break
        clock.advance(max(0.0, due - clock.monotonic()))
        queues.tick(queues.now())
        queues.enqueue(queues.take_fired())
        check_state(queues)
    clock.advance(wall - clock.wall())


def keys(queues: Queues) -> list[str]:
    return [job.info().key or "" for job in sorted(queues.jobs.values(), key=lambda j: j.id)]


def due_times(queues: Queues, schedule_id: str = "s") -> list[float]:
    prefix = f"schedule:{schedule_id}:"
    return [float(key.removeprefix(prefix)) for key in keys(queues) if key.startswith(prefix)]


def test_every_makes_one_job_per_due_time_with_the_template() -> None:
    clock = ManualClock()
    queues = make_queues(clock)
    start = clock.wall()
    queues.set_schedule(schedule(every=10.0, priority=5, attempts=3, name="report"), start)
    assert queues.schedules["s"].next == start + 10
    run_until(queues, clock, start + 35)
    assert due_times(queues) == [start + 10, start + 20, start + 30]
    job = queues.jobs[min(queues.jobs)]
    assert (job.queue, job.data, job.options.priority, job.options.attempts,
            job.options.name) == ("q", raw("s"), 5, 3, "report")
    assert [j.id for j in queues.queue("q").waiting] == sorted(queues.jobs)
    # A tick that comes again at the same instant makes nothing more.
    queues.tick(queues.now())
    assert queues.take_fired() == []
    assert len(queues.jobs) == 3


def test_cron_follows_its_time_zone_across_a_dst_change() -> None:
    # 2026-10-31 12:00 UTC; New York leaves daylight time on 2026-11-01 at 02:00.
    clock = ManualClock(wall=datetime(2026, 10, 31, 12, tzinfo=UTC).timestamp())
    queues = make_queues(clock)
    queues.set_schedule(schedule(cron="0 9 * * *", tz="America/New_York"), clock.wall())
    run_until(queues, clock, datetime(2026, 11, 3, 0, tzinfo=UTC).timestamp())
    fired = [datetime.fromtimestamp(t, UTC).strftime("%m-%d %H:%M") for t in due_times(queues)]
    # 09:00 in New York: 13:00 UTC under daylight time, 14:00 UTC after it.
    assert fired == ["10-31 13:00", "11-01 14:00", "11-02 14:00"]


def test_an_upsert_moves_the_next_due_time_and_a_remove_stops_the_schedule() -> None:
    clock = ManualClock()
    queues = make_queues(clock)
    start = clock.wall()
    queues.set_schedule(schedule(every=10.0), start)
    run_until(queues, clock, start + 15)
    assert len(queues.jobs) == 1
    queues.set_schedule(schedule(every=100.0, data=raw("new")), clock.wall())
    assert queues.schedules["s"].next == start + 115
    run_until(queues, clock, start + 114)
    assert len(queues.jobs) == 1
    run_until(queues, clock, start + 116)
    assert len(queues.jobs) == 2 and queues.jobs[max(queues.jobs)].data == raw("new")
    assert queues.remove_schedule("s")
    assert not queues.remove_schedule("s")
    assert "s" not in queues.deadlines.live(Kind.SCHEDULE)
    run_until(queues, clock, start + 1000)
    assert len(queues.jobs) == 2


def test_a_late_timer_gives_one_job_for_the_latest_due_time() -> None:
    clock = ManualClock()
    queues = make_queues(clock)
    start = clock.wall()
    queues.set_schedule(schedule(every=10.0), start)
    clock.advance(35)  # the timer could not run over three due times
    queues.tick(queues.now())
    assert due_times(queues) == [start + 30]
    assert queues.schedules["s"].next == start + 40


def replay(queues: Queues, clock: ManualClock) -> Queues:
    """A fresh state rebuilt from the records ``queues`` produced (a restart)."""
    records = queues.take_outbox().records
    restarted = make_queues(clock)
    replayer = Replayer(restarted)
    for record in records:
        replayer.apply(record)
    replayer.finish()
    return restarted


def test_a_replay_gives_missed_due_times_one_job_under_once_and_none_under_skip() -> None:
    clock = ManualClock()
    queues = make_queues(clock)
    start = clock.wall()
    queues.set_schedule(schedule("once", every=10.0), start)
    queues.set_schedule(schedule("skip", every=10.0, missed="skip"), start)
    run_until(queues, clock, start + 15)
    assert len(queues.jobs) == 2
    clock.advance(40)  # down over the due times 20, 30, 40 and 50
    restarted = replay(queues, clock)
    assert sorted(restarted.schedules) == ["once", "skip"]
    assert restarted.schedules["skip"].next == start + 60
    restarted.tick(restarted.now())
    restarted.enqueue(restarted.take_fired())
    assert due_times(restarted, "once") == [start + 10, start + 50]
    assert due_times(restarted, "skip") == [start + 10]
    assert restarted.schedules["once"].next == start + 60


def test_a_job_logged_without_its_schedules_record_is_not_made_twice() -> None:
    clock = ManualClock()
    queues = make_queues(clock)
    start = clock.wall()
    queues.set_schedule(schedule(every=10.0), start)
    run_until(queues, clock, start + 10)
    records = queues.take_outbox().records
    # A crash cut the log between the job's record and the schedule's.
    assert type(records[-1]).__name__ == "ScheduleSet"
    restarted = make_queues(clock)
    replayer = Replayer(restarted)
    for record in records[:-1]:
        replayer.apply(record)
    replayer.finish()
    restarted.tick(restarted.now())
    assert restarted.take_fired() == []
    assert due_times(restarted) == [start + 10]
    assert restarted.schedules["s"].next == start + 20


def test_a_due_time_that_rounding_puts_off_by_a_hair_still_gets_its_job() -> None:
    clock = ManualClock(wall=1_700_000_000.0)
    queues = make_queues(clock)
    queues.set_schedule(schedule(every=0.1), clock.wall())
    # (1_700_000_000.1 - 1_700_000_000.0) / 0.1 is a hair under 1 in floating point.
    run_until(queues, clock, clock.wall() + 0.35)
    assert len(due_times(queues)) == 3
