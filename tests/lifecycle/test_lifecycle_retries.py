"""Retries and backoff: the schedule a failing job follows, checked on the queue state machine
with a fake clock (``tick`` at chosen times), then end to end with a real worker.

- ``fixed(d)`` waits ``d`` before every retry; ``exponential(d, cap=c)`` waits ``d * 2 ** (n-1)``
  after try ``n``, at most ``c``; ``jitter`` takes up to that fraction off, at random.
- A job is tried at most ``attempts`` times; ``Unrecoverable`` ends it at once;
  ``Retry(delay=)`` retries after that delay instead of the backoff, and counts as a try.
"""

from __future__ import annotations

import asyncio
import random
import time
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lifecycle_support import running
from queue_state import raw

from conveyor.broker.testing import MAX_DELAY, Job, Queues, backoff_delay
from conveyor.client import Client, JobFailed, JobState, exponential, fixed
from conveyor.protocol import Backoff, JobDef, JobError
from conveyor.worker import Job as WorkerJob
from conveyor.worker import Retry, Unrecoverable, Worker

WAITING = JobState.WAITING
DELAYED = JobState.DELAYED
ACTIVE = JobState.ACTIVE
COMPLETED = JobState.COMPLETED
FAILED = JobState.FAILED

LONG_LEASE = 1e9
"""Seconds: leases never run out in the fake-clock tests (they have tests of their own)."""
ERROR = JobError(type="RuntimeError", message="try failed", traceback="Traceback ...")


def subscribe(queues: Queues) -> None:
    """One subscriber, ``w``, with a window of 1 and a lease longer than any test's clock."""
    queues.subscribe("w", "q", 1, lease=LONG_LEASE)


def add(queues: Queues, now: float, **options: Any) -> Job:
    """Add one job with ``options`` (``JobDef`` fields) at ``now``."""
    (job,) = queues.create("q", [JobDef(data=raw("payload"), **options)], now)
    queues.enqueue([job])
    return job


def take(queues: Queues, now: float) -> Job:
    """Dispatch at ``now``; exactly one job must go to the one subscriber, ``w``."""
    dispatched = queues.dispatch(now)
    assert [(consumer.owner, len(jobs)) for consumer, jobs in dispatched] == [("w", 1)]
    job = dispatched[0][1][0]
    assert job.state is ACTIVE
    return job


def fail(queues: Queues, job: Job, now: float, **options: Any) -> None:
    assert queues.fail("w", job.id, job.lease, ERROR, now, **options) is job


def retry_waits(queues: Queues, job: Job, tries: int, *, start: float = 100.0) -> list[float]:
    """Fail ``job`` ``tries - 1`` times, each retry run the moment it is due; return the waits
    between each failure and the retry's ``run_at``. Checks nothing runs before its time."""
    now = start
    waits = []
    for attempt in range(1, tries):
        assert take(queues, now) is job and job.attempt == attempt
        now += 0.5  # the try ran half a second
        fail(queues, job, now)
        assert job.state is DELAYED and job.run_at is not None
        assert queues.counts("q")["delayed"] == 1
        waits.append(job.run_at - now)
        assert queues.next_deadline() == job.run_at
        # Not a moment early: just before its time the job is still delayed.
        queues.tick(job.run_at - 1e-6)
        assert job.state is DELAYED and queues.dispatch(job.run_at - 1e-6) == []
        now = job.run_at
        queues.tick(now)
        assert job.state is WAITING and job.run_at is None
    return waits


def test_fixed_backoff_waits_the_same_before_every_retry() -> None:
    queues = Queues()
    subscribe(queues)
    job = add(queues, 100.0, attempts=4, backoff=fixed(2.5))
    assert retry_waits(queues, job, 4) == pytest.approx([2.5, 2.5, 2.5])
    # The fourth try is the last: its failure fails the job.
    last = take(queues, 200.0)
    assert last is job and job.attempt == 4
    fail(queues, job, 201.0)
    assert job.state is FAILED and job.error == ERROR and job.finished_at == 201.0
    assert queues.counts("q") == {"waiting": 0, "active": 0, "delayed": 0, "completed": 0,
                                  "failed": 1, "workers": 1, "waiting_children": 0}


def test_exponential_backoff_doubles_up_to_its_cap() -> None:
    queues = Queues()
    subscribe(queues)
    job = add(queues, 100.0, attempts=7, backoff=exponential(0.5, cap=3.0))
    assert retry_waits(queues, job, 7) == pytest.approx([0.5, 1.0, 2.0, 3.0, 3.0, 3.0])


def test_exponential_backoff_without_a_cap_keeps_doubling() -> None:
    queues = Queues()
    subscribe(queues)
    job = add(queues, 100.0, attempts=6, backoff=exponential(1.0))
    assert retry_waits(queues, job, 6) == pytest.approx([1.0, 2.0, 4.0, 8.0, 16.0])


def test_a_job_without_backoff_is_retried_at_once_at_the_tail_of_its_queue() -> None:
    queues = Queues()
    subscribe(queues)
    job = add(queues, 0.0, attempts=2)
    other = add(queues, 0.0)
    assert take(queues, 1.0) is job
    fail(queues, job, 2.0)
    assert job.state is WAITING and [j.id for j in queues.queue("q").waiting] == [other.id, job.id]


def test_jitter_takes_a_seeded_random_fraction_off_each_wait() -> None:
    seed, jitter = 1234, 0.5
    queues = Queues(rng=random.Random(seed))
    subscribe(queues)
    job = add(queues, 100.0, attempts=7, backoff=exponential(1.0, cap=8.0, jitter=jitter))
    waits = retry_waits(queues, job, 7)
    full = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    for wait, most in zip(waits, full, strict=True):
        assert most * (1 - jitter) <= wait <= most
    # The same seed gives the same schedule: one draw per retry from the broker's rng.
    replay = random.Random(seed)
    assert waits == pytest.approx([most * (1 - jitter * replay.random()) for most in full])
    assert len({round(wait / most, 9) for wait, most in zip(waits, full, strict=True)}) > 1


def test_fixed_backoff_with_jitter_stays_within_its_bounds() -> None:
    queues = Queues(rng=random.Random(7))
    subscribe(queues)
    job = add(queues, 100.0, attempts=30, backoff=Backoff(type="fixed", delay=2.0, jitter=0.25))
    waits = retry_waits(queues, job, 30)
    assert all(1.5 <= wait <= 2.0 for wait in waits)
    assert max(waits) - min(waits) > 0.1  # the jitter really varies


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(["fixed", "exponential"]),
    delay=st.floats(0, 100),
    cap=st.none() | st.floats(0, 1000),
    jitter=st.floats(0, 1),
    attempt=st.integers(1, 60) | st.integers(1, 1_000_000),
    seed=st.integers(0, 2**32),
)
def test_backoff_delay_stays_within_its_bounds(kind: str, delay: float, cap: float | None,
                                               jitter: float, attempt: int, seed: int) -> None:
    backoff = Backoff(type=kind, delay=delay, cap=cap, jitter=jitter)  # type: ignore[arg-type]
    # Exact arithmetic: 2.0 ** 1024 overflows a float, and a million attempts are valid.
    exact = Fraction(delay) * (1 if kind == "fixed" else 2 ** (attempt - 1))
    if kind == "exponential" and cap is not None:
        exact = min(exact, Fraction(cap))
    most = float(min(exact, Fraction(MAX_DELAY)))  # no wait is ever longer
    wait = backoff_delay(backoff, attempt, random.Random(seed))
    assert most * (1 - jitter) - 1e-9 <= wait <= most + 1e-9
    assert backoff_delay(None, attempt, random.Random(seed)) == 0.0


def test_two_failures_then_success_with_3_attempts_ends_completed_on_try_3() -> None:
    queues = Queues()
    subscribe(queues)
    job = add(queues, 0.0, attempts=3, backoff=fixed(1.0))
    now = 0.0
    for attempt in (1, 2):
        assert take(queues, now) is job and job.attempt == attempt
        fail(queues, job, now)
        assert job.state is DELAYED
        now += 1.0
        queues.tick(now)
    assert take(queues, now) is job and job.attempt == 3
    assert queues.ack("w", job.id, job.lease, raw("ok"), now) is job
    assert job.state is COMPLETED and job.attempt == 3 and job.error is None
    info = job.info()
    assert (info.attempt, info.attempts, info.state) == (3, 3, COMPLETED)
    assert queues.counts("q")["completed"] == 1 and queues.counts("q")["failed"] == 0


def test_unrecoverable_fails_at_once_with_attempts_left() -> None:
    queues = Queues()
    subscribe(queues)
    job = add(queues, 0.0, attempts=5, backoff=fixed(1.0))
    assert take(queues, 0.0) is job
    fail(queues, job, 1.0, retry=False)
    assert job.state is FAILED and job.attempt == 1 and job.finished_at == 1.0
    queues.tick(1000.0)
    assert queues.dispatch(1000.0) == []
    assert queues.counts("q")["failed"] == 1


def test_an_explicit_retry_delay_replaces_the_backoff_and_counts_as_a_try() -> None:
    queues = Queues()
    subscribe(queues)
    job = add(queues, 0.0, attempts=2, backoff=exponential(100.0))
    assert take(queues, 0.0) is job
    fail(queues, job, 1.0, delay=4.0)
    assert job.state is DELAYED and job.run_at == 5.0
    queues.tick(4.9)
    assert queues.dispatch(4.9) == []
    queues.tick(5.0)
    assert take(queues, 5.0) is job and job.attempt == 2
    # No try left: the retry request fails the job.
    fail(queues, job, 6.0, delay=4.0)
    assert job.state is FAILED and job.attempt == 2


def test_a_zero_retry_delay_retries_at_once_despite_the_backoff() -> None:
    queues = Queues()
    subscribe(queues)
    job = add(queues, 0.0, attempts=2, backoff=fixed(30.0))
    assert take(queues, 0.0) is job
    fail(queues, job, 1.0, delay=0.0)
    assert job.state is WAITING
    assert take(queues, 1.0) is job and job.attempt == 2


def test_a_retried_job_tells_its_watchers_when_it_runs_next() -> None:
    queues = Queues()
    queues.watched.add("q")
    subscribe(queues)
    job = add(queues, 0.0, attempts=2, backoff=fixed(3.0))
    take(queues, 0.0)
    fail(queues, job, 1.0)
    events = queues.take_outbox().events
    kinds = [(event.kind, event.attempt, event.run_at) for _, event in events]
    assert kinds == [("added", 0, None), ("active", 1, None), ("retrying", 1, 4.0),
                     ("delayed", 1, 4.0)]
    assert events[2][1].error == ERROR


# End to end: a real broker and an in-process worker.


class Flaky:
    """A handler that fails its first ``failures`` tries (raising ``error``), then returns;
    it notes the time of every try."""

    def __init__(self, failures: int, error: type[Exception] = ValueError,
                 **error_options: Any) -> None:
        self.failures = failures
        self.error = error
        self.error_options = error_options
        self.tries: list[tuple[int, float]] = []

    async def __call__(self, job: WorkerJob) -> dict[str, Any]:
        self.tries.append((job.attempt, time.monotonic()))
        if len(self.tries) <= self.failures:
            raise self.error(f"try {job.attempt} of {job.attempts}", **self.error_options)
        return {"attempt": job.attempt, "data": job.data}


async def test_a_job_failing_twice_then_succeeding_completes_on_its_third_try(url: str) -> None:
    handler = Flaky(2)
    async with Client(url) as client:
        job_id = await client.add("flaky", {"n": 1}, attempts=3, backoff=fixed(0.2))
        async with running(Worker("flaky", handler, url=url)):
            result = await client.wait(job_id, timeout=10)
        info = await client.get_job(job_id)
        counts = await client.counts("flaky")
    assert result == {"attempt": 3, "data": {"n": 1}}
    assert [attempt for attempt, _ in handler.tries] == [1, 2, 3]
    gaps = [b - a for (_, a), (_, b) in zip(handler.tries, handler.tries[1:], strict=False)]
    assert all(gap >= 0.19 for gap in gaps), gaps  # the backoff is waited out
    assert info is not None and (info.state, info.attempt, info.attempts) == (COMPLETED, 3, 3)
    assert info.error is None
    assert (counts["completed"], counts["failed"]) == (1, 0)


async def test_exponential_backoff_spaces_the_tries_end_to_end(url: str) -> None:
    handler = Flaky(3)
    async with Client(url) as client:
        job_id = await client.add("exp", "x", attempts=4, backoff=exponential(0.1, cap=0.3))
        async with running(Worker("exp", handler, url=url)):
            await client.wait(job_id, timeout=10)
    gaps = [b - a for (_, a), (_, b) in zip(handler.tries, handler.tries[1:], strict=False)]
    # 0.1, 0.2, then 0.3 (capped); a loaded machine only makes the gaps longer.
    for gap, least in zip(gaps, [0.1, 0.2, 0.3], strict=True):
        assert least - 0.01 <= gap < least + 1.0, gaps


async def test_unrecoverable_fails_after_one_try_with_attempts_left(url: str) -> None:
    handler = Flaky(10, Unrecoverable)
    async with Client(url) as client:
        job_id = await client.add("fatal", "x", attempts=5)
        async with running(Worker("fatal", handler, url=url)):
            with pytest.raises(JobFailed) as failed:
                await client.wait(job_id, timeout=10)
            await asyncio.sleep(0.1)  # room for a wrong retry to show up
        counts = await client.counts("fatal")
    assert [attempt for attempt, _ in handler.tries] == [1]
    assert failed.value.error_type == "Unrecoverable"
    assert failed.value.error_message == "try 1 of 5"
    assert failed.value.job.attempt == 1 and failed.value.job.attempts == 5
    assert (counts["failed"], counts["waiting"], counts["delayed"]) == (1, 0, 0)


async def test_retry_with_a_delay_retries_after_it_and_fails_with_no_try_left(url: str) -> None:
    handler = Flaky(10, Retry, delay=0.3)
    async with Client(url) as client:
        job_id = await client.add("again", "x", attempts=2, backoff=fixed(30.0))
        async with running(Worker("again", handler, url=url)):
            with pytest.raises(JobFailed) as failed:
                await client.wait(job_id, timeout=10)
    assert [attempt for attempt, _ in handler.tries] == [1, 2]
    gap = handler.tries[1][1] - handler.tries[0][1]
    assert 0.29 <= gap < 5.0  # Retry's delay, not the job's 30 s backoff
    assert failed.value.error_type == "Retry"
    assert failed.value.job.attempt == 2 and failed.value.job.state is FAILED


async def test_retry_without_a_delay_follows_the_jobs_backoff(url: str) -> None:
    handler = Flaky(1, Retry)
    async with Client(url) as client:
        job_id = await client.add("backoff", "x", attempts=2, backoff=fixed(0.3))
        async with running(Worker("backoff", handler, url=url)):
            assert await client.wait(job_id, timeout=10) == {"attempt": 2, "data": "x"}
    gap = handler.tries[1][1] - handler.tries[0][1]
    assert 0.29 <= gap < 5.0
