"""Invariants of the queue state that every test driving it can check after each step (imported as
``state_checks``; pytest puts this directory on ``sys.path``)."""

from __future__ import annotations

from collections import Counter

from conveyor.broker.testing import Kind, Queues
from conveyor.protocol import JobState

WAITING = JobState.WAITING
DELAYED = JobState.DELAYED
ACTIVE = JobState.ACTIVE
COMPLETED = JobState.COMPLETED
FAILED = JobState.FAILED


def check_active_exactly_when_held(queues: Queues) -> None:
    """A job is ``active`` exactly when a subscription of its queue holds it, under its lease."""
    for job_id, job in queues.jobs.items():
        holder = job.holder
        if job.state is ACTIVE:
            assert holder is not None, f"job {job_id} is active with no holder"
            assert holder.held.get(job_id) is job, f"job {job_id}'s holder does not hold it"
            assert holder.queue.name == job.queue
            assert holder.queue.consumers.get(holder.owner) is holder, \
                f"job {job_id} is held by a subscription that is gone"
            assert job.lease != 0
        else:
            assert holder is None, f"job {job_id} is {job.state.value} yet held"
            assert job.lease == 0
    for queue in queues.queues.values():
        for consumer in queue.consumers.values():
            for job_id, job in consumer.held.items():
                assert queues.jobs.get(job_id) is job, f"a held job {job_id} is forgotten"
                assert job.state is ACTIVE and job.holder is consumer
        assert queue.active == sum(len(c.held) for c in queue.consumers.values())


def check_every_job_in_one_place(queues: Queues) -> None:
    """Every job the state knows is in exactly one place fitting its state (a pending job, whose
    record is not durable yet, in none), and the counts agree with the places."""
    places: Counter[int] = Counter()
    for name, queue in queues.queues.items():
        for job in queue.waiting:
            assert job.state is WAITING and job.queue == name and not job.pending
            places[job.id] += 1
        for job_id, job in queue.delayed.items():
            assert job.state is DELAYED and job.queue == name and not job.pending
            assert job_id in queues.deadlines.live(Kind.DUE), f"delayed job {job_id} has no due"
            places[job_id] += 1
        for consumer in queue.consumers.values():
            places.update(list(consumer.held))
        for job_id in (*queue.kept_completed, *queue.kept_failed, *queue.kept_own):
            job = queues.jobs[job_id]
            assert job.state in (COMPLETED, FAILED) and job.finished_at is not None
            places[job_id] += 1
        counts = queues.counts(name)
        assert (counts["waiting"], counts["active"], counts["delayed"]) == (
            len(queue.waiting), sum(len(c.held) for c in queue.consumers.values()),
            len(queue.delayed))
    for job_id, job in queues.jobs.items():
        expected = 0 if job.pending else 1
        assert places[job_id] == expected, \
            f"job {job_id} ({job.state.value}) is in {places[job_id]} places"
    assert set(places) <= set(queues.jobs), "a line holds a forgotten job"


def check_state(queues: Queues) -> None:
    """Every invariant above."""
    check_active_exactly_when_held(queues)
    check_every_job_in_one_place(queues)
