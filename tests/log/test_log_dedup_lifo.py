"""Replay of keys with a time to live and of LIFO jobs: a key that passed to a newer job stays
with it (and goes with it) after a restart, and waiting lines with LIFO jobs come back in the
order the live broker had."""

from __future__ import annotations

from pathlib import Path

from log_support import LoggedCore, assert_same_state, reopen
from queue_state import raw

from conveyor.protocol import JobDef


def job(data: str, **options: object) -> JobDef:
    return JobDef(data=raw(data), **options)  # type: ignore[arg-type]


def test_a_key_that_passed_to_a_job_now_forgotten_is_free_after_a_restart(
        tmp_path: Path) -> None:
    broker = LoggedCore(tmp_path, keep_completed=1)
    broker.add("a", job("old", id="k", dedup=1.0))
    old = broker.queues.keys["k"]
    broker.now += 2.0
    broker.add("b", job("new", id="k", dedup=3600.0))
    new = broker.queues.keys["k"]
    assert new != old
    assert broker.run("b") == new
    broker.add("b", job("other"))
    broker.run("b")  # the new job is no longer retained: its key goes with it
    assert new not in broker.queues.jobs and "k" not in broker.queues.keys
    broker.close()
    replayed, _ = reopen(tmp_path, keep_completed=1)
    assert_same_state(broker.queues, replayed)
    assert replayed.keyed("k", broker.now) is None
    assert replayed.jobs[old].options.key == "k"


def test_a_key_within_its_time_to_live_survives_a_restart(tmp_path: Path) -> None:
    broker = LoggedCore(tmp_path)
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
    broker = LoggedCore(tmp_path)
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
