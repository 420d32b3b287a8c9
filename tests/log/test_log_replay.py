"""Log replay rebuilds the live state: the queue state machine driven as the server drives it,
every change appended to a real log, then replayed into a fresh broker state and compared.

What a restart must give back: the same jobs with the same states, options, results and errors
(jobs that were active are waiting again, in their place), the same delayed jobs, retained jobs,
lifetime counters and paused queues, ids that are never reused, and deadlines (delays, retention)
that still fall due. A snapshot (what compaction writes) replays to the same state as the full
history.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
from collections.abc import Hashable, Iterable
from pathlib import Path
from typing import NamedTuple

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from log_support import Limits, assert_same_state, reopen
from queue_state import raw

from conveyor.broker import FsyncPolicy
from conveyor.broker.testing import (
    Core,
    Job,
    Log,
    Queues,
    Record,
    RecordingPeer,
    Replayer,
    flush,
    handle,
    load_files,
    snapshot,
    write_base,
)
from conveyor.protocol import Add, AddFlow, Backoff, FlowJob, JobDef, JobError, JobState

QUEUES = ("a", "b")
OWNERS = ("w1", "w2", "w3")


class Spec(NamedTuple):
    """A job's options as a producer gives them."""

    key: str | None = None
    priority: int = 0
    attempts: int = 1
    backoff: Backoff | None = None
    delay: float = 0.0
    keep_result: float | None = None
    dedup: float | None = None
    lifo: bool = False
    group: str | None = None


specs = st.one_of(st.none(), st.builds(
    Spec,
    key=st.sampled_from([None, None, "k1", "k2", "k3"]),
    priority=st.sampled_from([0, 0, 1, 5]),
    attempts=st.sampled_from([1, 2, 3]),
    backoff=st.sampled_from([None, Backoff(type="fixed", delay=1.0),
                             Backoff(type="exponential", delay=0.5, cap=2.0)]),
    delay=st.sampled_from([0.0, 0.0, 0.5, 3.0]),
    keep_result=st.sampled_from([None, None, 0.0, 2.0]),
    dedup=st.sampled_from([None, None, 0.0, 1.0, 30.0]),
    lifo=st.sampled_from([False, False, True]),
    group=st.sampled_from([None, None, "g1", "g2"]),
))


class Driver:
    """A broker ``Core`` (queues and a real log) driven the way the server drives it.

    Requests change the state and collect records; ``flush`` is the server's once-per-pass
    flush: the records are appended in one write, jobs added since the last flush join their
    queues (only once their record is durable), then waiting jobs are dispatched. ``advance``
    moves the clock and serves the deadlines that came due, as the server's timer does. Workers
    and the producer are ``RecordingPeer``s.
    """

    def __init__(self, directory: Path, limits: Limits, *, fsync: FsyncPolicy = FsyncPolicy.NO,
                 compact_floor: int = 1 << 40, compact_ratio: float = 2.0) -> None:
        self.directory = directory
        self.limits = limits
        self.fsync = fsync
        self.compact_floor = compact_floor
        self.compact_ratio = compact_ratio
        queues = self.new_queues()
        log = self.new_log(directory)
        log.open(queues)
        self.core = Core(queues, log)
        self.producer = RecordingPeer("producer")
        self.peers: dict[str, RecordingPeer] = {}
        self.now = 1_000_000.0
        self.serial = 0
        self.highest_id = 0
        """The highest job id ever given out, kept apart from the state under test."""
        self.drops_may_differ: set[int] = set()
        """Jobs failed for losing too many workers, then retried (see ``assert_same_state``)."""

    @property
    def queues(self) -> Queues:
        return self.core.queues

    @property
    def log(self) -> Log:
        assert self.core.log is not None
        return self.core.log

    def restarted(self, queues: Queues, log: Log) -> None:
        """Go on with the state and log a restart rebuilt."""
        self.core = Core(queues, log)

    def pending(self) -> bool:
        """Whether adds wait for the flush (or for an fsync) to join their lines."""
        return bool(self.core.accepted or self.core.unsynced or self.core.durable)

    def new_queues(self) -> Queues:
        return Queues(logged=True, rng=random.Random(0), **self.limits)

    def new_log(self, directory: Path) -> Log:
        return Log(directory, fsync=self.fsync, compact_floor=self.compact_floor,
                   compact_ratio=self.compact_ratio)

    def clock(self) -> float:
        self.now += 0.25
        return self.now

    # Requests.

    def add(self, queue: str, jobs: list[Spec | None]) -> None:
        payloads: list[JobDef] = []
        for spec in jobs:
            self.serial += 1
            data = raw({"n": self.serial, "pad": "x" * (self.serial % 7)})
            payloads.append(JobDef(data=data) if spec is None else JobDef(
                data=data, id=spec.key, priority=spec.priority, attempts=spec.attempts,
                backoff=spec.backoff, delay=spec.delay, keep_result=spec.keep_result,
                dedup=spec.dedup, lifo=spec.lifo, group=spec.group))
        self.serial += 1
        handle(self.core, self.producer, Add(req=self.serial, queue=queue, jobs=payloads),
               self.clock())
        _, _, created = self.core.accepted[-1]
        assert len(created) == len(jobs)
        self.highest_id = max([self.highest_id, *(job.id for job in created)])

    def add_flow(self, nodes: list[tuple[str, Spec | None, int, str]]) -> None:
        """Add a flow: each node's queue, options (a key only at the root), parent index (each
        names an earlier node; the root's is ignored) and ``on_failure``."""
        jobs: list[FlowJob] = []
        for index, (queue, spec, parent, policy) in enumerate(nodes):
            self.serial += 1
            data = raw({"n": self.serial})
            job = JobDef(data=data) if spec is None else JobDef(
                data=data, id=spec.key if index == 0 else None, priority=spec.priority,
                attempts=spec.attempts, backoff=spec.backoff, delay=spec.delay,
                keep_result=spec.keep_result, dedup=spec.dedup, lifo=spec.lifo,
                group=spec.group)
            jobs.append(FlowJob(queue=queue, job=job, parent=None if index == 0 else
                                parent % index, on_failure=policy))  # type: ignore[arg-type]
        self.serial += 1
        handle(self.core, self.producer, AddFlow(req=self.serial, jobs=jobs), self.clock())
        _, _, created = self.core.accepted[-1]
        self.highest_id = max([self.highest_id, *(job.id for job in created)])

    def subscribe(self, owner: str, queue: str, window: int) -> None:
        self.queues.subscribe(self.peer(owner), queue, window)

    def extend(self, owner: str, queue: str) -> None:
        self.queues.extend(self.peer(owner), queue, self.clock())

    def held(self) -> list[tuple[Hashable, Job]]:
        """Every leased job with its owner, in a stable order."""
        return [(consumer.owner, job)
                for queue in self.queues.queues.values()
                for consumer in queue.consumers.values()
                for job in consumer.held.values()]

    def pick(self, pick: int) -> tuple[Hashable, Job]:
        held = self.held()
        return held[pick % len(held)]

    def ack(self, pick: int) -> None:
        owner, job = self.pick(pick)
        if job.options.parent is not None:
            self.settle_adds()  # its parent may join the tail of its line
        self.serial += 1
        assert self.queues.ack(owner, job.id, job.lease, raw(["done", self.serial]),
                               self.clock()) is job

    def settle_adds(self) -> None:
        """Flush when jobs wait for their record to be written, before a job moves to the tail.

        Such jobs join their line only at the flush, behind a job that moved to the tail in the
        meantime, though their record comes first in the log: a restart puts them the other way
        round (see ``test_a_job_added_as_another_moves_to_the_tail_keeps_its_place``). Flushing
        first keeps that one known difference out of the random runs.
        """
        if self.pending():
            self.flush()

    def settle_lifo_adds(self) -> None:
        """Flush when LIFO jobs wait for their record to be written, before a job moves to the
        head: the same known difference as ``settle_adds``, at the other end of the line."""
        if any(job.pending and job.options.lifo for job in self.queues.jobs.values()):
            self.flush()

    def fail(self, pick: int, *, retry: bool = True, delay: float | None = None) -> None:
        self.settle_adds()
        owner, job = self.pick(pick)
        error = JobError(type="ValueError", message=f"bad {job.id}", traceback="Traceback ...")
        assert self.queues.fail(owner, job.id, job.lease, error, self.clock(), retry=retry,
                                delay=delay) is job

    def release(self, pick: int) -> None:
        self.settle_lifo_adds()
        owner, job = self.pick(pick)
        assert self.queues.release(owner, job.id, job.lease, self.clock()) is job

    def stale(self, pick: int) -> None:
        """Acks under a lease that is not held change nothing and log nothing."""
        owner, job = self.pick(pick)
        records = list(self.queues.output.records)
        assert self.queues.ack(owner, job.id, job.lease + 1, raw("late"), self.clock()) is None
        assert self.queues.ack(("not", owner), job.id, job.lease, raw("x"), self.clock()) is None
        assert self.queues.output.records == records

    def drop(self, owner: str) -> None:
        self.settle_lifo_adds()
        self.queues.drop(self.peer(owner), self.clock())

    def jobs_in(self, *states: JobState) -> list[Job]:
        """Jobs in ``states`` that are in line (not waiting for their record), by id."""
        return [job for _, job in sorted(self.queues.jobs.items())
                if job.state in states and not job.pending]

    def promote(self, pick: int) -> None:
        self.settle_adds()
        job = _choose(self.jobs_in(JobState.DELAYED), pick)
        assert self.queues.promote(job.id) is job

    def remove(self, pick: int) -> None:
        self.settle_adds()  # a removed child may release its parent to the tail of its line
        job = _choose(self.jobs_in(JobState.WAITING, JobState.DELAYED, JobState.COMPLETED,
                                   JobState.FAILED, JobState.WAITING_CHILDREN), pick)
        assert self.queues.remove(job.id, self.clock()) is job

    def retry_failed(self, queue: str, pick: int | None) -> None:
        self.settle_adds()
        failed = self.jobs_in(JobState.FAILED)
        if pick is None:
            retried = [job for job in failed if job.queue == queue]
            assert self.queues.retry_failed(queue) == len(retried)
        else:
            retried = [_choose(failed, pick)]
            assert self.queues.retry_failed(job_id=retried[0].id) == 1
        self.drops_may_differ.update(job.id for job in retried if job.drops)

    def assert_replays(self, live: Queues, replayed: Queues) -> None:
        assert_same_state(live, replayed, drops_may_differ=self.drops_may_differ)

    def pause(self, queue: str, paused: bool) -> None:
        self.queues.pause(queue, paused)

    def drain(self, queue: str) -> None:
        self.settle_adds()  # as ``remove``
        self.queues.drain(queue, self.clock())

    def clean(self, queue: str, state: JobState, older_than: float) -> None:
        self.queues.clean(queue, state, older_than, self.clock())

    def advance(self, seconds: float) -> None:
        self.settle_adds()
        self.now += seconds
        self.queues.tick(self.now)

    def flush(self) -> None:
        flush(self.core, self.now)
        for peer in (self.producer, *self.peers.values()):
            peer.take()

    async def settle(self) -> None:
        """Flush until every add joined its line (under ``--fsync always``, once fsynced)."""
        self.flush()
        while self.core.unsynced:
            await asyncio.sleep(0.001)
        self.flush()

    def peer(self, owner: str) -> RecordingPeer:
        """The worker called ``owner``."""
        if owner not in self.peers:
            self.peers[owner] = RecordingPeer(owner)
        return self.peers[owner]

    def random_step(self, rng: random.Random) -> None:
        """One request picked by ``rng``, then maybe a flush."""
        choice = rng.random()
        held = self.held()
        if choice < 0.06:
            self.subscribe(rng.choice(OWNERS), rng.choice(QUEUES), rng.randint(0, 3))
        elif choice < 0.34 and len(self.queues.jobs) < 100:
            self.add(rng.choice(QUEUES), [
                None if rng.random() < 0.6 else Spec(
                    priority=rng.choice([0, 1]), attempts=rng.choice([1, 2]),
                    delay=rng.choice([0.0, 1.0]), keep_result=rng.choice([None, 1.0]),
                    lifo=rng.random() < 0.3)
                for _ in range(rng.randint(1, 4))])
        elif choice < 0.86 and not held:
            # Nothing to finish: let delayed jobs come due and paused queues go on.
            self.pause(rng.choice(QUEUES), False)
            self.advance(1.0)
        elif choice < 0.65:
            self.ack(rng.randrange(1 << 20))
        elif choice < 0.78:
            self.fail(rng.randrange(1 << 20), retry=rng.random() < 0.7)
        elif choice < 0.86:
            self.release(rng.randrange(1 << 20))
        elif choice < 0.91:
            self.advance(rng.choice([0.5, 2.0]))
        elif choice < 0.94:
            self.drop(rng.choice(OWNERS))
        elif choice < 0.97:
            self.pause(rng.choice(QUEUES), rng.random() < 0.3)
        else:
            self.retry_failed(rng.choice(QUEUES), None)
        if rng.random() < 0.7:
            self.flush()

    def check_new_ids(self, replayed: Queues) -> None:
        """A job added after a restart gets an id above every id given out before."""
        (job,) = replayed.create("a", [raw("after restart")], self.clock())
        assert job.id > self.highest_id


def _choose(jobs: list[Job], pick: int) -> Job:
    return jobs[pick % len(jobs)]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Record)


def replay_in_memory(records: Iterable[Record], limits: Limits) -> Queues:
    """Replay ``records``, each through its encoded form, into a fresh state."""
    queues = Queues(**limits)
    replayer = Replayer(queues)
    for record in records:
        replayer.apply(_decoder.decode(_encoder.encode(record)))
    replayer.finish()
    return queues


def snapshot_dir(queues: Queues, directory: Path) -> Path:
    """A data directory whose log is one base file: the snapshot of ``queues``, as compaction
    writes it (``write_base``) and its manifest names it."""
    directory.mkdir()
    base = "base-00000001.log"
    write_base(directory / base, 1, queues)
    (directory / "MANIFEST").write_bytes(msgspec.json.encode(
        {"version": 1, "base": base, "increments": []}))
    return directory


def replay_copy(driver: Driver, scratch: Path) -> Queues:
    """Replay a copy of the driver's data directory (the live log stays open and untouched)."""
    copy = scratch / "copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(driver.directory, copy)
    replayed, recovery = reopen(copy, **driver.limits)
    assert recovery.warnings == []
    shutil.rmtree(copy)
    return replayed


def check_everything(driver: Driver, scratch: Path) -> None:
    """History replay (as a starting broker does it) equals the live state; snapshot files (of
    the live state, and of the replayed one) replay to the same state; ids are not reused."""
    driver.flush()
    live = driver.queues
    replayed = replay_copy(driver, scratch)
    driver.assert_replays(live, replayed)
    for source in (live, replayed):
        directory = snapshot_dir(source, scratch / "snapshot")
        from_snapshot, recovery = reopen(directory, **driver.limits)
        shutil.rmtree(directory)
        assert recovery.warnings == []
        assert_same_state(source, from_snapshot)
        driver.assert_replays(live, from_snapshot)
        driver.check_new_ids(from_snapshot)
    driver.check_new_ids(replayed)


class LogReplayMachine(RuleBasedStateMachine):
    """Random request sequences, with restarts (from the full history, or from a snapshot);
    the log is checked against the live state after every pass."""

    @initialize(keep_completed=st.sampled_from([1, 2, 3, 100]),
                keep_failed=st.sampled_from([1, 2, 100]),
                keep_age=st.sampled_from([None, 20.0]),
                max_redeliveries=st.sampled_from([0, 1, 2]))
    def start(self, keep_completed: int, keep_failed: int, keep_age: float | None,
              max_redeliveries: int) -> None:
        self.scratch = Path(tempfile.mkdtemp(prefix="conveyor-replay-"))
        self.generation = 0
        self.driver = Driver(self.scratch / "data-0", Limits(
            keep_completed=keep_completed, keep_failed=keep_failed, keep_age=keep_age,
            max_redeliveries=max_redeliveries))

    @rule(queue=st.sampled_from(QUEUES), jobs=st.lists(specs, min_size=1, max_size=4),
          flush=st.booleans())
    def add(self, queue: str, jobs: list[Spec | None], flush: bool) -> None:
        self.driver.add(queue, jobs)
        if flush:
            self.driver.flush()

    @rule(nodes=st.lists(st.tuples(st.sampled_from(QUEUES), specs, st.integers(0, 5),
                                   st.sampled_from(["fail", "ignore", "remove"])),
                         min_size=1, max_size=6), flush=st.booleans())
    def add_flow(self, nodes: list[tuple[str, Spec | None, int, str]], flush: bool) -> None:
        self.driver.add_flow(nodes)
        if flush:
            self.driver.flush()

    @rule(owner=st.sampled_from(OWNERS), queue=st.sampled_from(QUEUES),
          window=st.integers(0, 3))
    def subscribe(self, owner: str, queue: str, window: int) -> None:
        self.driver.subscribe(owner, queue, window)
        self.driver.flush()

    @rule(owner=st.sampled_from(OWNERS), queue=st.sampled_from(QUEUES))
    def extend(self, owner: str, queue: str) -> None:
        self.driver.extend(owner, queue)

    @precondition(lambda self: self.driver.held())
    @rule(pick=st.integers(0, 99), flush=st.booleans())
    def ack(self, pick: int, flush: bool) -> None:
        self.driver.ack(pick)
        if flush:
            self.driver.flush()

    @precondition(lambda self: self.driver.held())
    @rule(pick=st.integers(0, 99), retry=st.booleans(),
          delay=st.sampled_from([None, 0.0, 1.5]))
    def fail(self, pick: int, retry: bool, delay: float | None) -> None:
        self.driver.fail(pick, retry=retry, delay=delay)

    @precondition(lambda self: self.driver.held())
    @rule(pick=st.integers(0, 99))
    def release(self, pick: int) -> None:
        self.driver.release(pick)

    @precondition(lambda self: self.driver.held())
    @rule(pick=st.integers(0, 99))
    def stale_ack(self, pick: int) -> None:
        self.driver.stale(pick)

    @rule(owner=st.sampled_from(OWNERS))
    def drop(self, owner: str) -> None:
        self.driver.drop(owner)

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0, 40.0]))
    def advance(self, seconds: float) -> None:
        """Time passes: delayed jobs come due, silent workers lose their leases, finished jobs
        past their retention go."""
        self.driver.advance(seconds)

    @precondition(lambda self: self.driver.jobs_in(JobState.DELAYED))
    @rule(pick=st.integers(0, 99))
    def promote(self, pick: int) -> None:
        self.driver.promote(pick)

    @precondition(lambda self: self.driver.jobs_in(
        JobState.WAITING, JobState.DELAYED, JobState.COMPLETED, JobState.FAILED,
        JobState.WAITING_CHILDREN))
    @rule(pick=st.integers(0, 99))
    def remove(self, pick: int) -> None:
        self.driver.remove(pick)

    @precondition(lambda self: self.driver.jobs_in(JobState.FAILED))
    @rule(queue=st.sampled_from(QUEUES), pick=st.none() | st.integers(0, 99))
    def retry_failed(self, queue: str, pick: int | None) -> None:
        self.driver.retry_failed(queue, pick)

    @rule(queue=st.sampled_from(QUEUES), paused=st.booleans())
    def pause(self, queue: str, paused: bool) -> None:
        self.driver.pause(queue, paused)

    @rule(queue=st.sampled_from(QUEUES))
    def drain(self, queue: str) -> None:
        self.driver.drain(queue)

    @rule(queue=st.sampled_from(QUEUES),
          state=st.sampled_from([JobState.COMPLETED, JobState.FAILED]),
          older_than=st.sampled_from([0.0, 1.0, 10.0]))
    def clean(self, queue: str, state: JobState, older_than: float) -> None:
        self.driver.clean(queue, state, older_than)

    @rule()
    def flush(self) -> None:
        self.driver.flush()

    @invariant()
    def log_replays_to_the_live_state(self) -> None:
        """After every pass (nothing waiting to be written), the files as they are replay to the
        live state, and so do snapshots of it. A quick check: the files are read in place, the
        snapshots replayed in memory; ``restart`` and the final check go through files."""
        driver = self.driver
        if driver.queues.output.records or driver.pending():
            return
        names = msgspec.json.decode((driver.directory / "MANIFEST").read_bytes())
        replayed = Queues(**driver.limits)
        load_files(driver.directory, [n for n in (names["base"], *names["increments"]) if n],
                   replayed)
        driver.assert_replays(driver.queues, replayed)
        for source in (driver.queues, replayed):
            from_snapshot = replay_in_memory(snapshot(source), driver.limits)
            assert_same_state(source, from_snapshot)
            driver.check_new_ids(from_snapshot)
        driver.check_new_ids(replayed)

    @rule(from_snapshot=st.booleans(), then_wait=st.booleans())
    def restart(self, from_snapshot: bool, then_wait: bool) -> None:
        """Stop and start again on the same log; go on from the state the restart rebuilt.

        With ``from_snapshot`` the restarted log is a base file holding the rebuilt state (what
        a compaction leaves), and later records go to an increment after it. With ``then_wait``
        the workers first hand their jobs back (as they do on a graceful stop), and after the
        restart time passes on both the old state and the restarted one: they stay the same,
        so every deadline (delays, retention) survived the restart.
        """
        driver = self.driver
        driver.flush()
        if then_wait:
            for queue in driver.queues.queues.values():
                for peer in list(queue.consumers):
                    driver.queues.subscribe(peer, queue.name, 0)
            while driver.held():
                driver.release(0)
            driver.flush()
        asyncio.run(driver.log.close())
        replayed = driver.new_queues()
        log = driver.new_log(driver.directory)
        log.open(replayed)
        driver.assert_replays(driver.queues, replayed)
        if from_snapshot:
            asyncio.run(log.close())
            self.generation += 1
            directory = snapshot_dir(replayed, self.scratch / f"data-{self.generation}")
            compacted = driver.new_queues()
            log = driver.new_log(directory)
            log.open(compacted)
            assert_same_state(replayed, compacted)
            driver.directory, replayed = directory, compacted
        if then_wait:
            assert not driver.held()
            later = driver.now + 100.0
            driver.queues.tick(later)
            replayed.tick(later)
            driver.assert_replays(driver.queues, replayed)
            driver.now = later
        driver.restarted(replayed, log)
        driver.flush()

    @rule()
    def restart_compacted_and_wait(self) -> None:
        """The hardest restart, drawn more often: from a snapshot, then time passes."""
        self.restart(from_snapshot=True, then_wait=True)

    def teardown(self) -> None:
        driver = getattr(self, "driver", None)
        if driver is None:
            return
        try:
            check_everything(driver, self.scratch)
        finally:
            asyncio.run(driver.log.close())
            shutil.rmtree(self.scratch, ignore_errors=True)


LogReplayMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_log_replay_rebuilds_the_live_state = LogReplayMachine.TestCase


async def test_replay_after_background_compactions_and_restarts_equals_the_live_state(
    tmp_path: Path,
) -> None:
    """Compactions run in the background (a child process snapshots the frozen files while
    appends go on to a new increment); a restart at any point rebuilds the live state."""
    rng = random.Random(20240611)
    directory = tmp_path / "data"
    limits = Limits(keep_completed=5, keep_failed=3, keep_age=None, max_redeliveries=2)
    driver = Driver(directory, limits, fsync=FsyncPolicy.ALWAYS, compact_floor=16 * 1024,
                    compact_ratio=2.0)
    compactions = 0
    for round_ in range(4):
        runner = asyncio.ensure_future(driver.log.run(driver.queues))
        started = driver.log.compactions
        for step in range(20_000):
            driver.random_step(rng)
            # Under --fsync always an add joins its line once fsynced: settle it before the
            # next step, so that no job moves to the tail meanwhile (the known difference of
            # test_a_job_added_as_another_moves_to_the_tail_keeps_its_place).
            if driver.pending():
                await driver.settle()
            elif step % 10 == 0:
                await asyncio.sleep(0.001)
            if driver.log.compactions >= started + 2 and step > 500:
                break
        await driver.settle()
        compactions += driver.log.compactions
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await driver.log.close()
        leftovers = [p.name for p in directory.iterdir() if p.suffix == ".tmp"]
        replayed, recovery = await asyncio.to_thread(reopen, directory, **limits)
        assert recovery.warnings == [] and leftovers == []
        driver.assert_replays(driver.queues, replayed)
        driver.check_new_ids(replayed)
        # Go on from what the restart rebuilt.
        live = driver.new_queues()
        log = driver.new_log(directory)
        log.open(live)
        driver.restarted(live, log)
        assert round_ < 3 or compactions >= 4
    await driver.log.close()


def test_finished_jobs_restored_from_a_compacted_log_still_age_out(tmp_path: Path) -> None:
    """With --keep-age, a finished job is forgotten that long after it finished, whether the
    broker restarted from the full history or from a snapshot (a compacted log)."""
    limits = Limits(keep_completed=100, keep_failed=100, keep_age=5.0, max_redeliveries=5)
    driver = Driver(tmp_path / "data", limits)
    driver.add("a", [None, None])
    driver.subscribe("w", "a", 1)
    driver.flush()
    driver.ack(0)
    driver.flush()
    finished_at = driver.now
    from_history = replay_copy(driver, tmp_path)
    from_snapshot, _ = reopen(snapshot_dir(from_history, tmp_path / "snapshot"), **limits)
    asyncio.run(driver.log.close())
    for queues in (driver.queues, from_history, from_snapshot):
        queues.tick(finished_at + 4.0)
        assert sorted(queues.jobs) == [1, 2]
        queues.tick(finished_at + 6.0)
        assert sorted(queues.jobs) == [2]
        assert queues.counts("a")["completed"] == 1


@pytest.mark.xfail(strict=True, reason="a job added while another moves to the tail of the same "
                   "queue joins the line after it, but its record comes first in the log")
def test_a_job_added_as_another_moves_to_the_tail_keeps_its_place(tmp_path: Path) -> None:
    """Under --fsync always an added job joins its line only once its record is fsynced; a
    delayed job that comes due meanwhile goes ahead of it. A restart should keep that order."""
    driver = Driver(tmp_path / "data", Limits(keep_completed=10, keep_failed=10, keep_age=None,
                                              max_redeliveries=5))
    driver.add("a", [Spec(delay=0.5)])
    driver.flush()
    driver.add("a", [None])  # job 2: its record is written, not yet fsynced...
    driver.now += 0.5
    driver.queues.tick(driver.now)  # ...when job 1 comes due and joins the line
    driver.flush()
    assert [job.id for job in driver.queues.queues["a"].waiting] == [1, 2]
    replayed = replay_copy(driver, tmp_path)
    asyncio.run(driver.log.close())
    assert [job.id for job in replayed.queues["a"].waiting] == [1, 2]
