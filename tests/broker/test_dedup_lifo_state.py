"""Idempotency keys with a time to live (``dedup``) and LIFO adds, on the queue state machine
with a manual clock: the key deduplicates only within its time, and a LIFO job joins the head of
its priority's waiting line."""

from __future__ import annotations

from queue_state import raw
from state_checks import check_state

from conveyor.broker.testing import (
    Core,
    Job,
    ManualClock,
    Queues,
    RecordingPeer,
    flush,
    handle,
)
from conveyor.protocol import Add, Added, FindJob, JobDef, JobError, JobReply, JobState

ERROR = JobError(type="RuntimeError", message="try failed")


def make_queues(clock: ManualClock, *, keep_completed: int = 10_000) -> Queues:
    return Queues(clock=clock, keep_completed=keep_completed)


def add(queues: Queues, *jobs: JobDef, queue: str = "q") -> list[Job]:
    """Add ``jobs`` as one request and put them in line, as the flush does once durable."""
    created = queues.create(queue, list(jobs), queues.now())
    queues.enqueue(created)
    check_state(queues)
    return created


def job(n: int, **options: object) -> JobDef:
    return JobDef(data=raw(n), **options)  # type: ignore[arg-type]


def waiting(queues: Queues, queue: str = "q") -> list[int]:
    return [j.id for j in queues.queue(queue).waiting]


# Dedup.


def test_a_key_deduplicates_within_its_time_to_live_then_passes_to_a_new_job() -> None:
    clock = ManualClock()
    queues = make_queues(clock)
    (first,) = add(queues, job(1, id="k", dedup=10.0))
    clock.advance(9.5)
    assert add(queues, job(2, id="k", dedup=10.0)) == [first]
    assert queues.keyed("k", queues.now()) is first
    clock.advance(0.5)  # the time to live runs out: the key is free
    assert queues.keyed("k", queues.now()) is None
    (second,) = add(queues, job(3, id="k", dedup=10.0))
    assert second is not first
    assert queues.keyed("k", queues.now()) is second
    # The old job is still there, with its key, readable by its id.
    assert queues.jobs[first.id] is first and first.info().key == "k"
    assert waiting(queues) == [first.id, second.id]


def test_a_key_deduplicates_whatever_the_state_of_its_job() -> None:
    clock = ManualClock()
    queues = make_queues(clock)
    (first,) = add(queues, job(1, id="k", dedup=60.0))
    queues.subscribe("w", "q", 1)
    ((_, (leased,)),) = queues.dispatch(queues.now())
    assert add(queues, job(2, id="k")) == [first]  # active
    queues.fail("w", leased.id, leased.lease, ERROR, queues.now())
    assert first.state is JobState.FAILED
    assert add(queues, job(3, id="k")) == [first]  # failed
    clock.advance(60.0)
    (second,) = add(queues, job(4, id="k"))  # without a dedup of its own
    assert second is not first
    clock.advance(1e6)
    assert add(queues, job(5, id="k")) == [second]  # no time to live: while retained


def test_without_a_key_dedup_changes_nothing() -> None:
    queues = make_queues(ManualClock())
    (a,) = add(queues, job(1, dedup=5.0))
    assert a.options.dedup_until is None
    assert queues.keys == {}


def test_dedup_zero_never_deduplicates_and_repeats_in_one_bulk_make_new_jobs() -> None:
    queues = make_queues(ManualClock())
    created = add(queues, job(1, id="k", dedup=0.0), job(2, id="k", dedup=0.0))
    assert len({j.id for j in created}) == 2
    assert queues.keys["k"] == created[1].id


def test_a_superseded_job_forgotten_later_leaves_the_new_job_its_key() -> None:
    clock = ManualClock()
    queues = make_queues(clock, keep_completed=1)
    (old,) = add(queues, job(1, id="k", dedup=1.0))
    clock.advance(2.0)
    (new,) = add(queues, job(2, id="k"))
    queues.remove(old.id)
    assert queues.keyed("k", queues.now()) is new


def test_a_key_whose_job_finished_and_was_forgotten_is_free_within_its_time() -> None:
    clock = ManualClock()
    queues = make_queues(clock, keep_completed=1)
    (first,) = add(queues, job(1, id="k", dedup=3600.0))
    queues.subscribe("w", "q", 1)
    ((_, (leased,)),) = queues.dispatch(queues.now())
    queues.ack("w", leased.id, leased.lease, raw("done"), queues.now())
    add(queues, job(2))
    ((_, (other,)),) = queues.dispatch(queues.now())
    queues.ack("w", other.id, other.lease, raw("done"), queues.now())  # pushes ``first`` out
    assert first.id not in queues.jobs
    (second,) = add(queues, job(3, id="k", dedup=3600.0))
    assert second.id != first.id


def test_find_job_gives_the_job_that_holds_the_key_now() -> None:
    clock = ManualClock()
    core = Core(make_queues(clock))
    peer = RecordingPeer("producer")

    def request(message: Add | FindJob) -> object:
        handle(core, peer, message, clock.wall())
        flush(core, clock.wall())
        (reply,) = peer.take()
        return reply

    added = request(Add(req=1, queue="q", jobs=[job(1, id="k", dedup=5.0)]))
    assert isinstance(added, Added)
    found = request(FindJob(req=2, key="k"))
    assert isinstance(found, JobReply) and found.job is not None
    assert found.job.id == added.ids[0]
    clock.advance(5.0)
    expired = request(FindJob(req=3, key="k"))
    assert isinstance(expired, JobReply) and expired.job is None
    again = request(Add(req=4, queue="q", jobs=[job(2, id="k", dedup=5.0)]))
    assert isinstance(again, Added) and again.ids[0] > added.ids[0]
    found = request(FindJob(req=5, key="k"))
    assert isinstance(found, JobReply) and found.job is not None
    assert found.job.id == again.ids[0]


# LIFO.


def test_lifo_jobs_go_ahead_of_their_priority_the_last_added_first() -> None:
    queues = make_queues(ManualClock())
    f1, f2 = add(queues, job(1), job(2))
    (l1,) = add(queues, job(3, lifo=True))
    l2, f3, l3 = add(queues, job(4, lifo=True), job(5), job(6, lifo=True))
    assert waiting(queues) == [l3.id, l2.id, l1.id, f1.id, f2.id, f3.id]


def test_lifo_stays_within_its_priority() -> None:
    queues = make_queues(ManualClock())
    (high,) = add(queues, job(1, priority=5))
    (low_lifo,) = add(queues, job(2, lifo=True))
    (high_lifo,) = add(queues, job(3, priority=5, lifo=True))
    (low,) = add(queues, job(4, priority=-1, lifo=True))
    assert waiting(queues) == [high_lifo.id, high.id, low_lifo.id, low.id]
    queues.subscribe("w", "q", 4)
    ((_, leased),) = queues.dispatch(queues.now())
    assert [j.id for j in leased] == [high_lifo.id, high.id, low_lifo.id, low.id]


def test_a_delayed_or_retried_lifo_job_joins_the_head_again() -> None:
    clock = ManualClock()
    queues = make_queues(clock)
    (late,) = add(queues, job(1, lifo=True, delay=5.0))
    (retried,) = add(queues, job(2, lifo=True, attempts=2))
    queues.subscribe("w", "q", 1)
    ((_, (leased,)),) = queues.dispatch(queues.now())
    assert leased is retried
    queues.subscribe("w", "q", 0)
    (plain,) = add(queues, job(3))
    queues.fail("w", retried.id, retried.lease, ERROR, queues.now())
    assert waiting(queues) == [retried.id, plain.id]
    clock.advance(5.0)
    queues.tick(clock.wall())
    assert waiting(queues) == [late.id, retried.id, plain.id]
    check_state(queues)


def test_a_step_of_the_wall_clock_neither_ends_nor_stretches_a_time_to_live() -> None:
    # The time to live was measured on the wall clock: setting it an hour on freed every key at
    # once (duplicate jobs), setting it back kept them an hour longer.
    clock = ManualClock()
    queues = make_queues(clock)
    (first,) = add(queues, job(1, id="k", dedup=10.0))
    clock.step(3600.0)
    assert add(queues, job(2, id="k", dedup=10.0)) == [first]
    clock.step(-7200.0)
    clock.advance(10.0)
    assert queues.keyed("k", queues.now()) is None
    (second,) = add(queues, job(3, id="k", dedup=10.0))
    assert second is not first
