"""``SyncClient``: the blocking client, shared by many threads over one connection.

The broker runs in-process on an event loop of its own thread, so that the test's thread may
block in ``SyncClient`` calls as a web view would.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from processes import subprocess_env

from conveyor.broker import Broker
from conveyor.client import (
    Client,
    ConnectionLost,
    ConveyorError,
    InvalidState,
    JobFailed,
    JobSpec,
    JobState,
    SyncClient,
    UnknownJob,
)
from conveyor.worker import Job, Worker

HERE = Path(__file__).resolve().parent

_T = TypeVar("_T")


class ThreadedBroker:
    """An in-process broker served by an event loop in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._workers: list[tuple[Worker, Future[None]]] = []
        self.broker = self.run(self._start())
        self.url = f"127.0.0.1:{self.broker.port}"

    async def _start(self) -> Broker:
        broker = Broker(host="127.0.0.1", port=0)
        await broker.start()
        return broker

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coroutine`` on the broker's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def start_worker(self, queue: str, handler: Any) -> Worker:
        """Serve ``queue`` with ``handler`` on the broker's loop until ``close()``."""
        worker = Worker(queue, handler, url=self.url, concurrency=4)
        self._workers.append((worker, asyncio.run_coroutine_threadsafe(worker.run(), self.loop)))
        return worker

    def stop_workers(self) -> None:
        """Close every worker started and wait until each has stopped."""
        for worker, running in self._workers:
            self.run(worker.close())
            running.result(30)
        self._workers.clear()

    def close(self) -> None:
        self.stop_workers()
        self.run(self.broker.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()


@pytest.fixture
def threaded() -> Iterator[ThreadedBroker]:
    """A broker on its own thread's loop; closed at teardown."""
    broker = ThreadedBroker()
    try:
        yield broker
    finally:
        broker.close()


async def double(job: Job) -> Any:
    if job.data == "fail":
        raise ValueError("cannot double this")
    return job.data * 2


def test_sixteen_threads_share_one_client_and_every_job_is_added(
    threaded: ThreadedBroker,
) -> None:
    threads, per_thread = 16, 1_000

    with SyncClient(threaded.url) as client:
        def produce(thread: int) -> list[int]:
            return [client.add("many", [thread, n]) for n in range(per_thread)]

        with ThreadPoolExecutor(threads) as pool:
            ids = list(pool.map(produce, range(threads)))

        every = [job_id for thread_ids in ids for job_id in thread_ids]
        assert len(set(every)) == threads * per_thread
        assert client.counts("many")["waiting"] == threads * per_thread
        for thread in range(threads):
            for n in range(0, per_thread, 97):
                job = client.get_job(ids[thread][n])
                assert job is not None and job.data == [thread, n]


def test_a_thread_blocked_in_wait_does_not_hold_up_the_other_threads(
    threaded: ThreadedBroker,
) -> None:
    with SyncClient(threaded.url) as client:
        job_id = client.add("later", "x")
        waiting = threading.Event()
        outcome: list[Any] = []

        def wait() -> None:
            waiting.set()
            outcome.append(client.wait(job_id, timeout=60))

        waiter = threading.Thread(target=wait)
        waiter.start()
        assert waiting.wait(10)

        def produce(thread: int) -> list[int]:
            return [client.add("other", [thread, n]) for n in range(250)]

        with ThreadPoolExecutor(4) as pool:
            added = pool.map(produce, range(4), timeout=30)
            assert sum(map(len, added)) == 1_000
        assert client.counts("other")["waiting"] == 1_000
        assert waiter.is_alive() and not outcome, "the wait returned before the job ran"

        threaded.start_worker("later", double)
        waiter.join(30)
        assert outcome == ["xx"]


def test_every_method_works_and_raises_what_the_async_client_raises(
    threaded: ThreadedBroker,
) -> None:
    with SyncClient(threaded.url, name="views") as client:
        ids = client.add_bulk("m", [1, JobSpec(2, priority=5), 3], attempts=2)
        waiting = client.get_jobs("m", JobState.WAITING)
        assert [job.id for job in waiting] == [ids[1], ids[0], ids[2]]
        assert [job.attempts for job in waiting] == [1, 2, 2]

        later = client.add("m", 4, id="later", delay=3600, name="remind")
        assert client.add("m", 4, id="later") == later
        job = client.get_job(later)
        assert job is not None and job.state is JobState.DELAYED and job.name == "remind"
        client.promote(later)
        assert client.get_jobs("m", "waiting", offset=3, limit=1)[0].id == later
        with pytest.raises(InvalidState):
            client.promote(later)

        client.pause("m")
        assert [queue.paused for queue in client.queues() if queue.name == "m"] == [True]
        client.resume("m")
        assert [queue.paused for queue in client.queues() if queue.name == "m"] == [False]

        gone = client.add("m", 5)
        client.remove(gone)
        assert client.get_job(gone) is None
        with pytest.raises(UnknownJob):
            client.remove(gone)
        with pytest.raises(UnknownJob):
            client.wait(gone)
        assert client.drain("m") == 4
        assert client.counts("m")["waiting"] == 0

        idle = client.add("idle", 0)
        with pytest.raises(TimeoutError, match=rf"^job {idle} did not finish within 0.2 s$"):
            client.wait(idle, timeout=0.2)

        ok, bad = client.add("work", 21), client.add("work", "fail")
        threaded.start_worker("work", double)
        assert client.wait(ok, timeout=30) == 42
        with pytest.raises(JobFailed) as failed:
            client.wait(bad, timeout=30)
        assert failed.value.error_type == "ValueError"
        threaded.stop_workers()
        assert client.retry_failed("work") == 1
        assert client.counts("work")["waiting"] == 1
        assert client.drain("work") == 1
        with pytest.raises(ValueError, match="either a queue or a job_id"):
            client.retry_failed()
        assert client.clean("work", "completed") == 1
        assert client.get_job(ok) is None
        with pytest.raises(TypeError, match="cannot be serialized"):
            client.add("work", object())


def test_the_context_manager_closes_and_later_calls_raise(threaded: ThreadedBroker) -> None:
    with SyncClient(threaded.url) as client:
        client.add("q", 1)
    assert client.closed
    with pytest.raises(ConveyorError, match="closed"):
        client.add("q", 2)
    client.close()
    with pytest.raises(ConveyorError, match="closed"):
        client.counts("q")

    async def count() -> int:
        async with Client(threaded.url) as other:
            return (await other.counts("q"))["waiting"]

    assert asyncio.run(count()) == 1


def test_close_ends_a_wait_in_flight(threaded: ThreadedBroker) -> None:
    client = SyncClient(threaded.url)
    job_id = client.add("never", 1)
    outcome: list[BaseException] = []
    started = threading.Event()

    def wait() -> None:
        started.set()
        try:
            client.wait(job_id)
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    assert started.wait(10)
    client.close()
    waiter.join(10)
    assert not waiter.is_alive(), "the wait still blocks after close()"
    assert len(outcome) == 1 and isinstance(outcome[0], ConveyorError), outcome


def test_an_unreachable_broker_raises_connection_lost_at_once() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    before = threading.active_count()
    with pytest.raises(ConnectionLost, match=f"127.0.0.1:{port}"):
        SyncClient(f"127.0.0.1:{port}", timeout=2)
    assert threading.active_count() == before


def test_a_client_dropped_without_close_is_closed_and_its_thread_ends(
    threaded: ThreadedBroker,
) -> None:
    before = threading.active_count()
    job_id = SyncClient(threaded.url).add("dropped", 1)
    gc.collect()
    assert threading.active_count() == before
    with SyncClient(threaded.url) as client:
        assert client.get_job(job_id) is not None


def test_calls_from_a_thread_running_its_own_event_loop_work(threaded: ThreadedBroker) -> None:
    with SyncClient(threaded.url) as client:
        async def handler() -> int:
            return client.add("from-async", "blocking, but allowed")

        job_id = asyncio.run(handler())
        job = client.get_job(job_id)
        assert job is not None and job.data == "blocking, but allowed"


UNCLOSED = """
import sys
import threading
from conveyor.client import SyncClient

kept = SyncClient(sys.argv[1])
job = kept.add("exit", "kept")
SyncClient(sys.argv[1]).add("exit", "collected")
threading.Thread(target=kept.wait, args=(job,), daemon=True).start()
print("added", flush=True)
"""


def test_a_script_that_never_closes_its_client_exits_at_once_and_cleanly(
    threaded: ThreadedBroker,
) -> None:
    """Even with a daemon thread blocked in ``wait`` at exit."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", UNCLOSED, threaded.url], env=subprocess_env(HERE),
                          capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - started
    assert (done.returncode, done.stdout, done.stderr) == (0, "added\n", "")
    assert elapsed < 5.0, f"the script took {elapsed:.1f} s to exit"
    with SyncClient(threaded.url) as client:
        assert client.counts("exit")["waiting"] == 2
