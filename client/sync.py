"""``SyncClient``: the ``Client`` for code that is not async (web views, scripts, threads).

One ``SyncClient`` runs one event loop in a daemon thread and one ``Client`` (one connection) on
it. Each call hands its coroutine to that loop and blocks the calling thread until it is done, so
any number of threads share the client, and their requests travel multiplexed over the one
connection: a thread blocked in ``wait`` holds up nobody else.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import ssl as _ssl
import threading
import weakref
from collections.abc import Coroutine, Iterable
from types import TracebackType
from typing import Any, Final, Literal, TypeVar, Unpack

from conveyor.protocol import Backoff, JobError, JobState, QueueSummary, ScheduleInfo, Stats

from .client import Client
from .errors import ConveyorError
from .flows import AddedFlow, Flow
from .jobs import JobInfo
from .options import JobOptions

__all__ = ["SyncClient"]

CLOSE_TIMEOUT: Final = 5.0
"""Seconds ``close()`` waits for the connection to close and the loop thread to end."""

_T = TypeVar("_T")


class SyncClient:
    """A blocking client of a Conveyor broker, safe to share between threads.

    It has the methods of ``Client``, without ``await``, and raises the same exceptions. It
    connects at once (``ConnectionLost`` when the broker cannot be reached), reconnects on demand
    after the connection drops (unless ``reconnect=False``; see ``Client``), and is closed by
    ``close()``, by leaving a ``with`` block, when it is garbage-collected, or at interpreter
    exit. A call made after ``close()`` raises ``ConveyorError``.

    Async code should use ``Client``: a ``SyncClient`` call blocks its thread, and with it any
    event loop that thread runs. ``url`` and ``ssl`` are as for ``Client``.
    """

    def __init__(self, url: str | None = None, *, name: str = "client", timeout: float = 10.0,
                 reconnect: bool = True, ssl: _ssl.SSLContext | None = None) -> None:
        self._client = Client(url, name=name, timeout=timeout, reconnect=reconnect, ssl=ssl)
        self._runner = _Runner(self._client, name)
        # Closes the runner when this object is collected; it holds the runner, never self, so
        # an unclosed client can be collected. Interpreter exit is _close_at_exit's.
        self._finalizer = weakref.finalize(self, self._runner.close)
        self._finalizer.atexit = False
        _open_clients.add(self)
        try:
            self._runner.call(self._client.connect())
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str | None:
        """The broker address given (None: ``$CONVEYOR_URL``, else the default)."""
        return self._client.url

    @property
    def name(self) -> str:
        """The client name sent to the broker."""
        return self._client.name

    @property
    def timeout(self) -> float:
        """Seconds a connection (or a reconnection) may take."""
        return self._client.timeout

    @property
    def reconnect(self) -> bool:
        """Whether a call after a lost connection opens a new one."""
        return self._client.reconnect

    @property
    def closed(self) -> bool:
        """Whether ``close()`` has run."""
        return not self._finalizer.alive

    def close(self) -> None:
        """Close the connection and stop the loop thread. Idempotent.

        Calls still in flight in other threads fail with ``ConnectionLost``.
        """
        self._finalizer()
        _open_clients.discard(self)

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<SyncClient {self._client.name!r} {state}>"

    # Producing.

    def add(self, queue: str, data: Any, **options: Unpack[JobOptions]) -> int:
        """Add one job; return its id once the broker has accepted it (see ``Client.add``).

        Raises ``TypeError`` for an unserializable payload, ``ValueError`` for an option out of
        range, ``ConnectionLost``, ``RequestRefused`` (``DiskFull``, ``ShuttingDown``...).
        """
        return self._runner.call(self._client.add(queue, data, **options))

    def add_flow(self, flow: Flow) -> AddedFlow:
        """Add a flow: a parent and its children, at once; return their ids in the flow's shape
        (see ``Client.add_flow``)."""
        return self._runner.call(self._client.add_flow(flow))

    def children_results(self, job_id: int) -> dict[int, Any]:
        """The results of the job's children that completed, by child id."""
        return self._runner.call(self._client.children_results(job_id))

    def children_errors(self, job_id: int) -> dict[int, JobError]:
        """The errors of the job's children that failed for good or were removed, by child id."""
        return self._runner.call(self._client.children_errors(job_id))

    def add_bulk(self, queue: str, payloads: Iterable[Any],
                 **options: Unpack[JobOptions]) -> list[int]:
        """Add many jobs; return their ids in input order (see ``Client.add_bulk``).

        ``options`` (those of ``add``) apply to every payload; a ``JobSpec`` carries its own.
        Raises as ``add`` does.
        """
        return self._runner.call(self._client.add_bulk(queue, payloads, **options))

    # Queue control.

    def promote(self, job_id: int) -> None:
        """Make a delayed job waiting now (``InvalidState`` when it is not delayed)."""
        self._runner.call(self._client.promote(job_id))

    def remove(self, job_id: int) -> None:
        """Remove a job that is not active (``InvalidState`` when it is, ``UnknownJob`` when
        no such job is retained)."""
        self._runner.call(self._client.remove(job_id))

    def pause(self, queue: str) -> None:
        """Stop deliveries from ``queue``; it still accepts jobs. Survives a broker restart."""
        self._runner.call(self._client.pause(queue))

    def resume(self, queue: str) -> None:
        """Restart deliveries from a paused queue."""
        self._runner.call(self._client.resume(queue))

    def set_limits(self, queue: str, *, rate: int | None = None, per: float = 1.0,
                   concurrency: int | None = None, group_concurrency: int | None = None,
                   group_rate: int | None = None, group_per: float = 1.0) -> None:
        """Limit how fast ``queue``'s jobs start (see ``Client.set_limits``)."""
        self._runner.call(self._client.set_limits(
            queue, rate=rate, per=per, concurrency=concurrency,
            group_concurrency=group_concurrency, group_rate=group_rate, group_per=group_per))

    def set_schedule(self, id: str, queue: str, data: object, *,
                     every: float | None = None, cron: str | None = None, tz: str = "UTC",
                     missed: Literal["once", "skip"] = "once", name: str | None = None,
                     priority: int = 0, attempts: int = 1,
                     backoff: float | Backoff | None = None,
                     timeout: float | None = None) -> None:
        """Create or replace a schedule of repeatable jobs (see ``Client.set_schedule``)."""
        self._runner.call(self._client.set_schedule(
            id, queue, data, every=every, cron=cron, tz=tz, missed=missed, name=name,
            priority=priority, attempts=attempts, backoff=backoff, timeout=timeout))

    def remove_schedule(self, id: str) -> None:
        """Remove the schedule ``id`` (see ``Client.remove_schedule``)."""
        self._runner.call(self._client.remove_schedule(id))

    def schedules(self) -> list[ScheduleInfo]:
        """Every schedule of the queues the user may read, with its next due time."""
        return self._runner.call(self._client.schedules())

    def clear_limits(self, queue: str) -> None:
        """Remove ``queue``'s limits (its groups' too)."""
        self._runner.call(self._client.clear_limits(queue))

    def retry_failed(self, queue: str | None = None, *, job_id: int | None = None) -> int:
        """Put failed jobs (every retained one of ``queue``, or one job) back in line, with
        their attempts renewed; return how many."""
        return self._runner.call(self._client.retry_failed(queue, job_id=job_id))

    def drain(self, queue: str) -> int:
        """Remove every waiting and delayed job of ``queue``; return how many."""
        return self._runner.call(self._client.drain(queue))

    def clean(self, queue: str, state: JobState | str, older_than: float = 0.0) -> int:
        """Remove ``queue``'s completed or failed jobs finished over ``older_than`` seconds ago."""
        return self._runner.call(self._client.clean(queue, state, older_than))

    # Reading.

    def get_job(self, job_id: int) -> JobInfo | None:
        """The job's record, or None when the broker does not retain it."""
        return self._runner.call(self._client.get_job(job_id))

    def find_job(self, key: str) -> JobInfo | None:
        """The retained job whose idempotency key is ``key``, or None."""
        return self._runner.call(self._client.find_job(key))

    def wait(self, job_id: int, timeout: float | None = None) -> Any:
        """Block until the job finishes; return its result or raise ``JobFailed``.

        Only the calling thread waits: other threads' calls go on meanwhile. Raises
        ``TimeoutError`` after ``timeout`` seconds, ``UnknownJob`` when no such job is retained,
        and ``ConnectionLost`` when the connection drops meanwhile.
        """
        return self._runner.call(self._client.wait(job_id, timeout))

    def get_jobs(self, queue: str, state: JobState | str, *, offset: int = 0,
                 limit: int = 100) -> list[JobInfo]:
        """``queue``'s jobs in ``state``, in order (see ``Client.get_jobs``)."""
        return self._runner.call(self._client.get_jobs(queue, state, offset=offset, limit=limit))

    def queues(self) -> list[QueueSummary]:
        """Every queue the broker knows, by name, with its counts, whether it is paused, and
        its rates."""
        return self._runner.call(self._client.queues())

    def stats(self, queue: str | None = None) -> Stats:
        """The broker's statistics (see ``Client.stats``)."""
        return self._runner.call(self._client.stats(queue))

    def counts(self, queue: str) -> dict[str, int]:
        """Jobs waiting, active and delayed now, completed and failed since the queue was created,
        and the workers subscribed now."""
        return self._runner.call(self._client.counts(queue))


class _Runner:
    """The event loop thread of one ``SyncClient``. It never refers to the ``SyncClient``, so
    that one can be collected while its thread runs."""

    def __init__(self, client: Client, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._closed = False
        self._exiting = False
        self._thread = threading.Thread(target=_run_loop, args=(self._loop, client), daemon=True,
                                        name=f"conveyor-sync-client-{name}")
        self._thread.start()

    def call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coroutine`` on the loop thread; block until it is done and return its result."""
        with self._lock:
            # Under the lock, so that close() cannot stop the loop between the check and the
            # submission (a coroutine submitted to a stopped loop would never run).
            if self._closed:
                coroutine.close()
                raise ConveyorError("the SyncClient is closed")
            if threading.get_ident() == self._thread.ident:
                coroutine.close()
                raise ConveyorError("a SyncClient cannot be called from its own event loop")
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException as exc:
            if self._exiting:
                # Only daemon threads can still be in a call at interpreter exit (the others
                # were joined first), and they are about to be dropped: raising here would
                # only print their tracebacks over the exit.
                threading.Event().wait()
            if isinstance(exc, concurrent.futures.CancelledError):
                raise ConveyorError("the SyncClient was closed during the call") from None
            # KeyboardInterrupt while blocked: stop the call rather than leave it running.
            future.cancel()
            raise

    def close(self, *, at_exit: bool = False) -> None:
        """Refuse new calls, stop the loop and wait (a bounded time) for its thread to end."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._exiting = at_exit
        try:
            self._loop.call_soon_threadsafe(self._loop.stop)
        except RuntimeError:
            return  # the loop is closed already
        if threading.get_ident() != self._thread.ident:
            self._thread.join(CLOSE_TIMEOUT)


_open_clients: weakref.WeakSet[SyncClient] = weakref.WeakSet()
"""Clients not closed yet: those left open are closed at interpreter exit."""


@atexit.register
def _close_at_exit() -> None:
    for client in list(_open_clients):
        client._runner.close(at_exit=True)


def _run_loop(loop: asyncio.AbstractEventLoop, client: Client) -> None:
    """The loop thread: serve until stopped, then 1. close the connection (calls in flight fail
    with ``ConnectionLost``), 2. cancel what is left, 3. close the loop."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
        loop.run_until_complete(client.close())
    finally:
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
