"""Leases, delays and retention against a wall clock that steps: the state machine with a manual
clock (``advance``: time passes; ``step``: only the wall clock is set forward or back).

Everything that runs out runs on the monotonic clock; wall times (``run_at``, ``finished_at``)
are what is kept and shown, turned into monotonic time once, when their deadline is armed.
"""

from __future__ import annotations

import pytest
from queue_state import raw, state
from state_checks import check_state

from conveyor.broker.testing import ManualClock, Queues, Replayer, snapshot
from conveyor.protocol import Backoff, JobDef, JobError, JobState

HOUR = 3600.0
LEASE = 30.0


def holding(clock: ManualClock) -> tuple[Queues, int]:
    """A state whose subscriber ``w`` holds one job under a ``LEASE``-second lease."""
    queues = Queues(clock=clock)
    queues.subscribe("w", "q", 1, lease=LEASE)
    (job_id,) = queues.add("q", [raw("job")], queues.now())
    ((_, [job]),) = queues.dispatch(queues.now())
    assert job.id == job_id
    return queues, job_id


@pytest.mark.parametrize("step", [HOUR, -HOUR])
def test_a_step_of_the_wall_clock_neither_ends_nor_stretches_a_lease(step: float) -> None:
    clock = ManualClock()
    queues, job_id = holding(clock)
    job = queues.jobs[job_id]
    clock.advance(10)
    clock.step(step)
    queues.tick(queues.now())
    assert state(job) is JobState.ACTIVE and job.attempt == 1, "a healthy worker lost its job"
    queues.extend("w", "q", queues.now())  # heard from: the lease runs 30 s from here
    clock.advance(LEASE - 1)
    queues.tick(queues.now())
    assert state(job) is JobState.ACTIVE
    check_state(queues)
    clock.advance(1)
    queues.tick(queues.now())
    assert state(job) is JobState.WAITING and job.drops == 1, "the lease was stretched"
    check_state(queues)


@pytest.mark.parametrize("step", [HOUR, -HOUR])
def test_a_delayed_job_comes_due_after_its_delay_whatever_the_wall_clock_does(
        step: float) -> None:
    clock = ManualClock()
    queues = Queues(clock=clock)
    added = clock.wall()
    (job,) = queues.create("q", [JobDef(data=raw("later"), delay=60.0)], queues.now())
    queues.enqueue([job])
    clock.step(step)
    clock.advance(59)
    queues.tick(queues.now())
    assert state(job) is JobState.DELAYED
    assert job.run_at == added + 60.0  # what is shown stays what was asked
    clock.advance(1)
    queues.tick(queues.now())
    assert state(job) is JobState.WAITING and job.run_at is None
    check_state(queues)


@pytest.mark.parametrize("step", [HOUR, -HOUR])
def test_a_retry_waits_its_backoff_whatever_the_wall_clock_does(step: float) -> None:
    clock = ManualClock()
    queues = Queues(clock=clock)
    queues.subscribe("w", "q", 1, lease=LEASE)
    (job,) = queues.create("q", [JobDef(data=raw("x"), attempts=2,
                                        backoff=Backoff(type="fixed", delay=20.0))],
                           queues.now())
    queues.enqueue([job])
    queues.dispatch(queues.now())
    queues.fail("w", job.id, job.lease, JobError(type="E", message="m"), queues.now())
    assert state(job) is JobState.DELAYED
    clock.step(step)
    clock.advance(19)
    queues.tick(queues.now())
    assert state(job) is JobState.DELAYED
    clock.advance(1)
    queues.tick(queues.now())
    assert state(job) is JobState.WAITING


@pytest.mark.parametrize("step", [HOUR, -HOUR])
def test_a_kept_result_expires_after_keep_result_whatever_the_wall_clock_does(
        step: float) -> None:
    clock = ManualClock()
    queues = Queues(clock=clock)
    queues.subscribe("w", "q", 1, lease=LEASE)
    (job,) = queues.create("q", [JobDef(data=raw("x"), keep_result=10.0)], queues.now())
    queues.enqueue([job])
    queues.dispatch(queues.now())
    assert queues.ack("w", job.id, job.lease, raw("done"), queues.now()) is job
    clock.step(step)
    clock.advance(9)
    queues.tick(queues.now())
    assert job.id in queues.jobs
    clock.advance(1)
    queues.tick(queues.now())
    assert job.id not in queues.jobs


def test_after_a_restart_run_at_is_read_against_the_wall_clock_again() -> None:
    """A delayed job keeps its ``run_at`` (wall time) across a restart: a broker that starts
    with its wall clock 30 s further on runs it 30 s sooner."""
    clock = ManualClock()
    queues = Queues(clock=clock, logged=True)
    (job,) = queues.create("q", [JobDef(data=raw("later"), delay=60.0)], queues.now())
    queues.enqueue([job])
    records = list(snapshot(queues))
    later = ManualClock(wall=clock.wall() + 30.0, monotonic=5.0)
    restarted = Queues(clock=later, logged=True)
    replayer = Replayer(restarted)
    for record in records:
        replayer.apply(record)
    replayer.finish()
    copy = restarted.jobs[job.id]
    assert state(copy) is JobState.DELAYED and copy.run_at == job.run_at
    later.advance(29)
    restarted.tick(restarted.now())
    assert state(copy) is JobState.DELAYED
    later.advance(1)
    restarted.tick(restarted.now())
    assert state(copy) is JobState.WAITING


class JitteryClock(ManualClock):
    """Each reading of the monotonic clock a few microseconds on: reading two clocks one after
    the other never gives the same difference twice."""

    def monotonic(self) -> float:
        self._monotonic += 3e-6
        return self._monotonic


def test_jobs_due_a_microsecond_apart_come_due_in_order() -> None:
    """The offset between the clocks moves only when the wall clock steps: jobs armed at
    different moments keep the order of their ``run_at``, however close."""
    clock = JitteryClock()
    queues = Queues(clock=clock)
    base = clock.wall() + 10.0
    jobs = []
    for n in range(200):
        # Added in reverse: the latest due first, each armed at a later reading of the clocks.
        (job,) = queues.create("q", [JobDef(data=raw(n), run_at=base + (200 - n) * 1e-6)],
                               queues.now())
        queues.enqueue([job])
        jobs.append(job)
    clock.advance(20)
    queues.tick(queues.now())
    assert [job.id for job in queues.queue("q").waiting] == [job.id for job in reversed(jobs)]


def test_without_a_clock_the_timers_run_on_the_times_passed_in() -> None:
    queues = Queues()
    queues.subscribe("w", "q", 1, lease=LEASE)
    queues.add("q", [raw("x")], 100.0)
    queues.dispatch(100.0)
    assert queues.next_deadline() == 100.0 + LEASE
    with pytest.raises(RuntimeError):
        queues.now()


@pytest.mark.parametrize("step", [HOUR, -HOUR])
def test_a_step_while_an_add_waits_for_its_fsync_does_not_move_its_due_time(
        step: float) -> None:
    """Under ``--fsync always`` a job joins its line only once its record is fsynced: its
    delay still counts from when it was added."""
    clock = ManualClock()
    queues = Queues(clock=clock)
    (job,) = queues.create("q", [JobDef(data=raw("later"), delay=60.0)], queues.now())
    clock.step(step)
    clock.advance(1)
    queues.tick(queues.now())
    queues.enqueue([job])  # the fsync came
    clock.advance(58)
    queues.tick(queues.now())
    assert state(job) is JobState.DELAYED
    clock.advance(1)
    queues.tick(queues.now())
    assert state(job) is JobState.WAITING
    check_state(queues)


def test_a_job_due_before_its_fsync_is_waiting_once_it_is_durable() -> None:
    clock = ManualClock()
    queues = Queues(clock=clock, logged=True)
    (job,) = queues.create("q", [JobDef(data=raw("soon"), delay=2.0)], queues.now())
    clock.advance(3)
    queues.tick(queues.now())  # due while its record waits for the disk: nothing to do yet
    assert job.pending and state(job) is JobState.DELAYED
    queues.enqueue([job])
    assert state(job) is JobState.WAITING and list(queues.queue("q").waiting) == [job]
    assert [type(record).__name__ for record in queues.take_outbox().records] == [
        "JobsAddedWithOptions", "JobPromoted"]
    check_state(queues)


@pytest.mark.parametrize("step", [HOUR, -HOUR])
def test_a_step_of_the_wall_clock_does_not_reset_the_rates(step: float) -> None:
    clock = ManualClock()
    queues = Queues(clock=clock)
    queues.add("q", [raw(n) for n in range(60)], queues.now())
    clock.step(step)
    clock.advance(1)
    (summary,) = queues.summaries(queues.now())
    assert summary.added_rate == 1.0  # 60 jobs over the last minute


def test_the_completed_and_failed_rates_count_every_job_that_finished_in_the_window() -> None:
    clock = ManualClock()
    queues = Queues(clock=clock)
    queues.add("q", [raw(n) for n in range(6)], queues.now())
    queues.subscribe("w", "q", 6)
    ((_, jobs),) = queues.dispatch(queues.now())
    for job in jobs[:3]:  # three acks at one time (one loop pass)
        queues.ack("w", job.id, job.lease, raw("ok"), queues.now())
    clock.advance(30)
    queues.ack("w", jobs[3].id, jobs[3].lease, raw("ok"), queues.now())
    for job in jobs[4:]:
        queues.fail("w", job.id, job.lease, JobError(type="E", message="no"), queues.now(),
                    retry=False)
    (summary,) = queues.summaries(queues.now())
    assert (summary.completed_rate, summary.failed_rate) == (4 / 60, 2 / 60)
    clock.advance(31)  # the first three left the window
    (summary,) = queues.summaries(queues.now())
    assert (summary.completed_rate, summary.failed_rate) == (1 / 60, 2 / 60)
