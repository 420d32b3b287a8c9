"""Request handling never leaves a change half-applied: extreme but valid values are computed
with, not raised on, and an unexpected failure answers ``INTERNAL`` and changes nothing.

The broker's core is driven as the server drives it: ``handle`` for each request, ``flush`` once
per pass, with the state's invariants checked after every step.
"""

from __future__ import annotations

import logging
import random

import msgspec
import pytest
from state_checks import check_state

from conveyor.broker.testing import (
    MAX_DELAY,
    Core,
    Queues,
    RecordingPeer,
    flush,
    handle,
)
from conveyor.protocol import (
    Add,
    Added,
    Backoff,
    BrokerMessage,
    Deliver,
    Delivery,
    Error,
    ErrorCode,
    Fail,
    JobDef,
    JobError,
    JobState,
    Subscribe,
)

NOW = 1_700_000_000.0
ERROR = JobError(type="RuntimeError", message="try failed")


def raw(value: object) -> msgspec.Raw:
    return msgspec.Raw(msgspec.msgpack.encode(value))


def deliveries(messages: list[BrokerMessage]) -> list[Delivery]:
    return [job for message in messages if isinstance(message, Deliver) for job in message.jobs]


def errors(messages: list[BrokerMessage]) -> list[Error]:
    return [message for message in messages if isinstance(message, Error)]


def start(core: Core, job: JobDef) -> tuple[RecordingPeer, int]:
    """Add ``job`` and subscribe a worker with a window of 1; return the worker and the job id."""
    producer, worker = RecordingPeer("producer"), RecordingPeer("worker")
    handle(core, producer, Add(req=1, queue="q", jobs=[job]), NOW)
    handle(core, worker, Subscribe(req=2, queue="q", window=1, lease=1e6), NOW)
    flush(core, NOW)
    (added,) = [m for m in producer.take() if isinstance(m, Added)]
    check_state(core.queues)
    return worker, added.ids[0]


def test_a_job_fails_past_1024_tries_with_an_exponential_backoff() -> None:
    """``2.0 ** 1024`` overflows a float: the 1,025th ``fail`` used to raise inside the request,
    leaving the job active with no holder and dropping the worker's connection."""
    core = Core(Queues())
    tries = 1100
    worker, job_id = start(core, JobDef(data=raw("x"), attempts=tries,
                                        backoff=Backoff(type="exponential", delay=0.0)))
    for attempt in range(1, tries + 1):
        sent = worker.take()
        assert errors(sent) == []
        (delivery,) = deliveries(sent)
        assert (delivery.job, delivery.attempt) == (job_id, attempt)
        handle(core, worker, Fail(job=job_id, lease=delivery.lease, error=ERROR), NOW)
        check_state(core.queues)
        flush(core, NOW)
        check_state(core.queues)
    assert errors(worker.take()) == []
    job = core.queues.jobs[job_id]
    assert (job.state, job.attempt) == (JobState.FAILED, tries)
    assert core.queues.counts("q")["failed"] == 1


def test_a_backoff_past_the_longest_delay_is_cut_to_it() -> None:
    """Past 1,024 tries an exponential backoff of a second is longer than any delay the broker
    schedules: the job waits ``MAX_DELAY`` (a finite time) and a ``promote`` still runs it."""
    core = Core(Queues())
    worker, job_id = start(core, JobDef(data=raw("x"), attempts=2000,
                                        backoff=Backoff(type="exponential", delay=1.0)))
    for _ in range(1030):
        (delivery,) = deliveries(worker.take())
        # ``fail.delay`` 0 overrides the backoff: the next try comes at once.
        handle(core, worker, Fail(job=job_id, lease=delivery.lease, error=ERROR, delay=0.0),
               NOW)
        flush(core, NOW)
    (delivery,) = deliveries(worker.take())
    handle(core, worker, Fail(job=job_id, lease=delivery.lease, error=ERROR), NOW)
    flush(core, NOW)
    check_state(core.queues)
    job = core.queues.jobs[job_id]
    assert job.state is JobState.DELAYED and job.run_at == NOW + MAX_DELAY
    assert core.queues.promote(job_id) is job
    flush(core, NOW)
    (delivery,) = deliveries(worker.take())
    assert delivery.attempt == 1032


class BrokenRandom(random.Random):
    """Raises when drawn from: a stand-in for a bug in the middle of a request."""

    def random(self) -> float:
        raise ArithmeticError("a bug")


def test_an_unexpected_error_answers_internal_and_changes_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    core = Core(Queues())
    worker, job_id = start(core, JobDef(data=raw("x"), attempts=3, backoff=Backoff(
        type="fixed", delay=5.0, jitter=0.5)))
    (delivery,) = deliveries(worker.take())
    job = core.queues.jobs[job_id]
    before = (job.state, job.holder, job.lease, job.attempt, job.error)
    core.queues.rng = BrokenRandom()
    with caplog.at_level(logging.ERROR, logger="broker"):
        handle(core, worker, Fail(job=job_id, lease=delivery.lease, error=ERROR), NOW)
    (error,) = errors(worker.take())
    assert error.code == ErrorCode.INTERNAL and "'fail'" in error.message
    (logged,) = [record for record in caplog.records if record.exc_info]
    assert "'fail'" in logged.getMessage()
    assert (job.state, job.holder, job.lease, job.attempt, job.error) == before
    assert core.queues.take_outbox().records == []
    check_state(core.queues)
    # The same request, once it can be computed, goes through.
    core.queues.rng = random.Random(0)
    handle(core, worker, Fail(job=job_id, lease=delivery.lease, error=ERROR), NOW)
    flush(core, NOW)
    assert job.state is JobState.DELAYED and errors(worker.take()) == []
    check_state(core.queues)
