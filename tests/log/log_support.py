"""Helpers for the log tests: broker and worker subprocesses, reopening a data directory, and
comparing a replayed queue state with the live one it came from.

Test modules import this as ``log_support`` (pytest puts this directory on ``sys.path``); worker
subprocesses get this directory on their ``PYTHONPATH`` so ``log_handlers`` imports there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TypedDict

from processes import ROOT, STOP_TIMEOUT, launch_broker
from processes import subprocess_env as child_env
from queue_state import raw

from conveyor.broker import FsyncPolicy
from conveyor.broker.testing import (
    Core,
    Job,
    Log,
    Queues,
    RecordingPeer,
    Recovery,
    flush,
    handle,
    install_failpoint,
)
from conveyor.protocol import Add, Added, AddFlow, FlowJob, JobDef, JobError, JobState

HERE = Path(__file__).resolve().parent

def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for child processes, with this directory's handler modules importable."""
    return child_env(HERE, extra)


# Broker subprocesses.


class BrokerProcess:
    """``python -m conveyor.broker`` (or another command line ending in broker options) as a
    child."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, stderr_path: Path) -> None:
        self.process = process
        self.url = url
        """``HOST:PORT`` from the ``listening on`` line."""
        self.stderr_path = stderr_path

    @property
    def stderr(self) -> str:
        """What the broker wrote to stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    def kill(self) -> int:
        """SIGKILL the broker and reap it; return its exit status."""
        if self.process.poll() is None:
            self.process.kill()
        return self._reap(STOP_TIMEOUT)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM the broker and wait for it (SIGKILL if it hangs); return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self._reap(timeout)
                raise AssertionError(f"broker did not exit within {timeout} s of SIGTERM:\n"
                                     f"{self.stderr}") from None
        return self._reap(timeout)

    def wait(self, timeout: float) -> int:
        """Wait for the broker to exit on its own; return its exit status."""
        try:
            return self._reap(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"broker still running after {timeout} s:\n{self.stderr}") \
                from None

    def _reap(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        if self.process.stdout is not None and not self.process.stdout.closed:
            self.process.stdout.close()
        return code


def broker_command(data_dir: Path, *args: str, port: int = 0) -> list[str]:
    """The ``python -m conveyor.broker`` command line for ``data_dir`` on 127.0.0.1."""
    return [sys.executable, "-m", "conveyor.broker", "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(data_dir), *args]


def start_broker(data_dir: Path, *args: str, stderr_path: Path, port: int = 0,
                 env: dict[str, str] | None = None,
                 command: list[str] | None = None) -> BrokerProcess:
    """Start a broker on ``data_dir``; return once it prints ``listening on``.

    ``command`` replaces ``python -m conveyor.broker`` (a wrapper script taking the same options).
    """
    argv = broker_command(data_dir, *args, port=port)
    if command is not None:
        argv = [*command, *argv[3:]]
    process, line = launch_broker(argv, stderr_path=stderr_path, env=subprocess_env(env),
                                  append=True)
    return BrokerProcess(process, line.removeprefix("listening on ").strip(), stderr_path)


def run_broker(data_dir: Path, *args: str, timeout: float = 30.0,
               command: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a broker that is expected to exit by itself; return what it did."""
    argv = broker_command(data_dir, *args)
    if command is not None:
        argv = [*command, *argv[3:]]
    return subprocess.run(argv, cwd=ROOT, env=subprocess_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_error_line(stderr: str, *words: str) -> str:
    """``stderr`` holds no traceback and exactly one ``broker: ...`` line, naming ``words``."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("broker: ")]
    assert len(errors) == 1, stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


# Worker subprocesses.


class WorkerProcess:
    """``python -m conveyor.worker ...`` as a child process, leader of its own process group."""

    def __init__(self, handler: str, *, queue: str, url: str, log_path: Path,
                 processes: int = 1, concurrency: int = 1,
                 env: dict[str, str] | None = None) -> None:
        argv = [sys.executable, "-m", "conveyor.worker", handler, "--queue", queue, "--url", url,
                "--processes", str(processes), "--concurrency", str(concurrency)]
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, cwd=ROOT, env=subprocess_env(env),
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            start_new_session=True)

    @property
    def log(self) -> str:
        """What the worker processes wrote so far."""
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        """Whether the CLI process is still running (it is not reaped here)."""
        if self.process.returncode is not None:
            return False
        try:
            info = os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return info is None

    def stop(self) -> None:
        """SIGTERM the whole group, wait, SIGKILL whatever is left; reap the CLI."""
        if self.process.returncode is not None:
            return
        pid = self.process.pid
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while self.running() and time.monotonic() < deadline:
                time.sleep(0.02)
        # Safe while the leader is unreaped: its group id cannot have been reused.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        self.process.wait()


def recorded_payloads(directory: Path) -> list[str]:
    """Every payload ``log_handlers.record_payload`` ran, over all worker processes."""
    payloads: list[str] = []
    for path in directory.iterdir():
        payloads += path.read_text().split()
    return payloads


# Failpoints of a broker in this process.


class Gate:
    """A failpoint hook that holds whoever reaches it (in any thread) until ``open()``."""

    def __init__(self) -> None:
        self._reached = threading.Event()
        self._open = threading.Event()

    def __call__(self, detail: object) -> None:
        self._reached.set()
        self._open.wait(60)

    async def reached(self, timeout: float = 10.0) -> None:
        """Return once something is held at the gate."""
        if not await asyncio.to_thread(self._reached.wait, timeout):
            raise AssertionError(f"nothing reached the gate within {timeout} s")

    def open(self) -> None:
        """Let everything held through, and whatever comes later."""
        self._open.set()


class Failpoints:
    """Hooks installed at the broker's failpoints for one test; all removed (and every gate
    opened) at its end."""

    def __init__(self) -> None:
        self._names: set[str] = set()
        self._gates: list[Gate] = []

    def install(self, name: str, hook: Callable[[object], None] | None) -> None:
        """Run ``hook`` at failpoint ``name`` (``None``: no longer)."""
        install_failpoint(name, hook)
        self._names.add(name)

    def gate(self, name: str) -> Gate:
        """Hold everything that reaches failpoint ``name`` until the gate returned opens."""
        gate = Gate()
        self._gates.append(gate)
        self.install(name, gate)
        return gate

    def clear(self) -> None:
        for name in self._names:
            install_failpoint(name, None)
        for gate in self._gates:
            gate.open()


# Reopening a data directory in this process.


class Limits(TypedDict):
    """The ``Queues`` options that replay must be given as the live broker had them."""

    keep_completed: int
    keep_failed: int
    keep_age: float | None
    max_redeliveries: int


class LoggedCore:
    """A core with a real log, driven as the server drives it, on a clock the test moves."""

    def __init__(self, directory: Path, *, keep_completed: int = 10_000,
                 keep_failed: int = 10_000) -> None:
        self.queues = Queues(logged=True, keep_completed=keep_completed, keep_failed=keep_failed)
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

    def add_flow(self, *jobs: FlowJob) -> list[int]:
        """Add a flow; return its ids."""
        self.req += 1
        handle(self.core, self.producer, AddFlow(req=self.req, jobs=list(jobs)), self.now)
        flush(self.core, self.now)
        (reply,) = self.producer.take()
        assert isinstance(reply, Added), reply
        return list(reply.ids)

    def flush(self) -> None:
        flush(self.core, self.now)
        self.producer.take()
        self.worker.take()

    def run(self, queue: str, *, fail: bool = False) -> int:
        """Take the first waiting job of ``queue`` and complete it (result ``"r<id>"``) or fail
        it for good; return its id."""
        self.queues.subscribe(self.worker, queue, 1)
        ((_, (job,)),) = self.queues.dispatch(self.now)
        if fail:
            done = self.queues.fail(self.worker, job.id, job.lease, JobError("E", "bad"),
                                    self.now)
        else:
            done = self.queues.ack(self.worker, job.id, job.lease, raw(f"r{job.id}"), self.now)
        assert done is job
        self.queues.subscribe(self.worker, queue, 0)
        self.flush()
        return job.id

    def close(self) -> None:
        asyncio.run(self.log.close())


def reopen(directory: Path, *, salvage: bool = False, keep_completed: int = 10_000,
           keep_failed: int = 10_000, keep_age: float | None = None,
           max_redeliveries: int = 5) -> tuple[Queues, Recovery]:
    """Open the log in ``directory`` as a starting broker would, then close it again.

    Returns the rebuilt state and what recovery reported. Call it from synchronous code only.
    """
    queues = Queues(logged=True, keep_completed=keep_completed, keep_failed=keep_failed,
                    keep_age=keep_age, max_redeliveries=max_redeliveries)
    log = Log(directory, salvage=salvage, fsync=FsyncPolicy.NO)
    recovery = log.open(queues)
    asyncio.run(log.close())
    return queues, recovery


def dir_log_bytes(directory: Path) -> int:
    """Bytes of every log file (``*.log`` and ``*.tmp``) in ``directory`` now."""
    total = 0
    for path in directory.iterdir():
        if path.suffix in (".log", ".tmp"):
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
    return total


# Comparing states.


def _job_after_replay(job: Job, *, drops: bool = True) -> tuple[object, ...]:
    """What a job should look like once replayed: an active job is waiting again, its try
    given back; an unfinished job keeps its drop count (unless not ``drops``)."""
    active = job.state is JobState.ACTIVE
    finished = job.finished_at is not None
    return (
        job.id,
        job.queue,
        bytes(job.data),
        job.created_at,
        JobState.WAITING if active else job.state,
        job.attempt - 1 if active else job.attempt,
        None if finished or not drops else job.drops,
        job.finished_at,
        bytes(job.result) if finished else None,
        job.error,
        job.options,
        job.priority,
        job.run_at,
    )


def assert_same_state(live: Queues, replayed: Queues, *,
                      drops_may_differ: Collection[int] = ()) -> None:
    """``replayed`` is what a restart should rebuild from ``live``'s log.

    The same jobs with the same states, tries, options, results and errors (live active jobs
    waiting again); the same delayed jobs, retained completed and failed jobs, lifetime counters
    and pause per queue; the same idempotency keys (but for keys whose ``dedup`` time ran out),
    last id and live-size estimate; and each
    waiting line equal to the live one once the jobs that were active live are taken out of it.

    ``drops_may_differ``: jobs whose count of lost workers the log does not carry (a job failed
    for losing too many workers, then retried: the loss that failed it is not logged).
    """
    assert sorted(replayed.jobs) == sorted(live.jobs)
    for job_id, job in live.jobs.items():
        assert not job.pending, job_id
        flow, again = job.flow, replayed.jobs[job_id].flow
        assert (flow is None) == (again is None), job_id
        if flow is not None and again is not None:
            assert (again.left, again.done) == (flow.left, flow.done), job_id
        drops = job_id not in drops_may_differ
        assert _job_after_replay(replayed.jobs[job_id], drops=drops) == \
            _job_after_replay(job, drops=drops), job_id
    active = {job_id for job_id, job in live.jobs.items() if job.state is JobState.ACTIVE}
    names = {name for name, q in live.queues.items() if q.waiting or q.active or q.delayed
             or q.completed or q.failed or q.kept_completed or q.kept_failed or q.kept_own
             or q.paused}
    assert names <= set(replayed.queues)
    for name in set(live.queues) | set(replayed.queues):
        before = live.counts(name)
        after = replayed.counts(name)
        for count in ("completed", "failed", "delayed"):
            assert after[count] == before[count], (name, count)
        assert after["waiting"] == before["waiting"] + before["active"], name
        assert after["active"] == 0, name
        if name not in live.queues or name not in replayed.queues:
            continue  # a queue only subscribed to, never used: nothing to keep
        old, new = live.queues[name], replayed.queues[name]
        assert new.paused == old.paused, name
        assert list(new.kept_completed) == list(old.kept_completed), name
        assert list(new.kept_failed) == list(old.kept_failed), name
        assert set(new.kept_own) == set(old.kept_own), name
        assert set(new.delayed) == set(old.delayed), name
        assert set(new.parents) == set(old.parents), name
        for state in (JobState.COMPLETED, JobState.FAILED):
            assert [j.id for j in replayed.finished_jobs(new, state)] == \
                [j.id for j in live.finished_jobs(old, state)], (name, state)
        line = [job.id for job in new.waiting]
        # Each group's jobs (and those of no group) keep their order; whose turn comes next
        # among the groups is not logged, so the groups' interleaving may differ.
        groups = {job.group for job in old.waiting} | {job.group for job in new.waiting}
        for group in groups:
            assert [job.id for job in new.waiting
                    if job.group == group and job.id not in active] == \
                [job.id for job in old.waiting if job.group == group], (name, group)
        assert len(set(line)) == len(line), name
        assert len(line) == len(old.waiting) + sum(
            1 for job_id in active if live.jobs[job_id].queue == name), name
        for job in new.waiting:
            assert job.state is JobState.WAITING and job.queue == name
    # A key whose ``dedup`` time ran out passed to a newer job; once that job is gone, nothing
    # left in a snapshot tells that the key passed: the older job's entry comes back, and reads
    # as free all the same (``Store.keyed``), its time having run out.
    assert live.keys.items() <= replayed.keys.items()
    for key in replayed.keys.keys() - live.keys.keys():
        assert replayed.jobs[replayed.keys[key]].options.dedup_until is not None, key
    assert replayed.last_id == live.last_id
    assert replayed.live_bytes == live.live_bytes


