"""Replay of keys with a time to live and of LIFO jobs: a key that passed to a newer job stays
with it (and goes with it) after a restart, and waiting lines with LIFO jobs come back in the
order the live broker had."""

from __future__ import annotations

import asyncio
from pathlib import Path

from log_support import assert_same_state, reopen
from queue_state import raw

from conveyor.broker import FsyncPolicy
from conveyor.broker.testing import Core, Log, Queues, RecordingPeer, flush, handle
from conveyor.protocol import Add, JobDef


class Broker:
    """A core with a real log, driven as the server drives it, on a clock the test moves."""

    def __init__(self, directory: Path, *, keep_completed: int = 10_000) -> None:
        self.queues = Queues(logged=True, keep_completed=keep_completed)
        self.log = Log(directory, fsync=FsyncPolicy.NO)
        self.log.open(self.queues)
        self.core = Core(self.queues, self.log)
        self.producer = RecordingPeer("producer")
        self.worker = RecordingPeer("worker")
        self.now = 1_000_000.0
        self.req = 0

    def add(self, queue: str, *jobs: JobDef) -> None:
        self.req += 1
        handle(self.core, self.producer, Add(req=self.req, queue=queue, jobs=list(jobs)),
               self.now)
        self.flush()

    def flush(self) -> None:
        flush(self.core, self.now)
        self.producer.take()
        self.worker.take()

    def run_one(self, queue: str) -> int:
        """Take the first waiting job of ``queue`` and complete it; return its id."""
        self.queues.subscribe(self.worker, queue, 1)
        ((_, (job,)),) = self.queues.dispatch(self.now)
        assert self.queues.ack(self.worker, job.id, job.lease, raw("done"), self.now) is job
        self.queues.subscribe(self.worker, queue, 0)
        self.flush()
        return job.id

    def close(self) -> None:
        asyncio.run(self.log.close())


def job(data: str, **options: object) -> JobDef:
    return JobDef(data=raw(data), **options)  # type: ignore[arg-type]


def test_a_key_that_passed_to_a_job_now_forgotten_is_free_after_a_restart(
        tmp_path: Path) -> None:
    broker = Broker(tmp_path, keep_completed=1)
    broker.add("a", job("old", id="k", dedup=1.0))
    old = broker.queues.keys["k"]
    broker.now += 2.0
    broker.add("b", job("new", id="k", dedup=3600.0))
    new = broker.queues.keys["k"]
    assert new != old
    assert broker.run_one("b") == new
    broker.add("b", job("other"))
    broker.run_one("b")  # the new job is no longer retained: its key goes with it
    assert new not in broker.queues.jobs and "k" not in broker.queues.keys
    broker.close()
    replayed, _ = reopen(tmp_path, keep_completed=1)
    assert_same_state(broker.queues, replayed)
    assert replayed.keyed("k", broker.now) is None
    assert replayed.jobs[old].options.key == "k"


def test_a_key_within_its_time_to_live_survives_a_restart(tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    broker.add("a", job("first", id="k", dedup=60.0))
    first = broker.queues.keys["k"]
    broker.close()
    replayed, _ = reopen(tmp_path)
    assert_same_state(broker.queues, replayed)
    (same,) = replayed.create("a", [job("again", id="k")], broker.now + 59.0)
    assert same.id == first
    (fresh,) = replayed.create("a", [job("later", id="k")], broker.now + 60.0)
    assert fresh.id != first and replayed.keys["k"] == fresh.id


def test_lifo_jobs_come_back_in_their_place(tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    broker.add("q", job("f1"), job("l1", lifo=True))
    broker.add("q", job("l2", lifo=True, priority=1), job("f2", priority=1))
    broker.add("q", job("l3", lifo=True), job("f3"))
    # A released job goes back to the head of its priority, ahead of the LIFO ones.
    broker.queues.subscribe(broker.worker, "q", 1)
    ((_, (taken,)),) = broker.queues.dispatch(broker.now)
    assert bytes(taken.data) == bytes(raw("l2"))
    broker.queues.subscribe(broker.worker, "q", 0)
    broker.queues.release(broker.worker, taken.id, taken.lease, broker.now)
    broker.flush()
    line = [bytes(j.data) for j in broker.queues.queue("q").waiting]
    assert line == [bytes(raw(name)) for name in ("l2", "f2", "l3", "l1", "f1", "f3")]
    broker.close()
    replayed, _ = reopen(tmp_path)
    assert_same_state(broker.queues, replayed)
