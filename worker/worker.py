"""``Worker``: subscribe to a queue with a credit window and run its jobs.

The credit window is the worker's concurrency: the broker pushes at most that many jobs at a time,
and every ack, failure or release frees a slot for the next push. Async handlers run as tasks on the
worker's loop; plain functions run in a thread pool of the same size so they cannot block it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import functools
import inspect
import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec

from conveyor.client import Connection, ConnectionLost, ConveyorError, Push, encode_value
from conveyor.protocol import (
    Ack,
    Deliver,
    Extend,
    Fail,
    JobError,
    Release,
    SetWindow,
    Subscribe,
    check_queue_name,
)

from .errors import Retry, Unrecoverable
from .job import Job

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_LEASE",
    "MAX_BACKOFF",
    "MIN_BACKOFF",
    "Handler",
    "Worker",
    "WorkerStatus",
]

DEFAULT_GRACE: Final = 10.0
"""Seconds ``close()`` lets running jobs finish before handing them back."""
DEFAULT_LEASE: Final = 30.0
"""Seconds the broker waits without hearing from a worker before taking its jobs back; the
worker speaks up every third of that while it runs jobs."""
MIN_BACKOFF: Final = 0.05
MAX_BACKOFF: Final = 2.0
"""Seconds between attempts to reconnect to a broker that went away: doubling, up to this."""

Handler = Callable[[Job], Awaitable[Any]] | Callable[[Job], Any]

log = logging.getLogger("worker")


class WorkerStatus(enum.Enum):
    """Lifecycle of a ``Worker``."""

    NEW = "new"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class Worker:
    """Runs ``handler`` for each job of ``queue``, at most ``concurrency`` at a time."""

    def __init__(
        self,
        queue: str,
        handler: Handler,
        *,
        url: str | None = None,
        concurrency: int = 1,
        grace: float = DEFAULT_GRACE,
        lease: float = DEFAULT_LEASE,
        reconnect: bool = True,
        name: str = "worker",
    ) -> None:
        problem = check_queue_name(queue)
        if problem is not None:
            raise ValueError(problem)
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.queue = queue
        self.handler = handler
        self.url = url
        self.concurrency = concurrency
        self.grace = grace
        self.lease = lease
        self.reconnect = reconnect
        self.name = name
        self.status = WorkerStatus.NEW
        self.processed = 0
        """Jobs whose outcome (result or failure) this worker reported."""
        self._is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            type(handler).__call__
        )
        self._connection: Connection | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._running: dict[asyncio.Task[None], Job] = {}
        self._stop = asyncio.Event()
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None

    async def run(self) -> None:
        """Connect, take jobs until ``close()``, then shut down gracefully.

        Raises ``ConnectionLost`` when the first connection cannot be made. A connection lost
        later is made again (with ``reconnect``), backing off up to ``MAX_BACKOFF`` seconds; the
        broker has re-queued every job this worker held, so running handlers are cancelled.
        """
        if self.status is not WorkerStatus.NEW:
            raise RuntimeError(f"worker is {self.status.value}")
        self.status = WorkerStatus.RUNNING
        if not self._is_async:
            self._threads = concurrent.futures.ThreadPoolExecutor(
                self.concurrency, thread_name_prefix=f"{self.name}-job"
            )
        try:
            connection: Connection | None = await self._connect()
            while connection is not None and await self._serve(connection):
                if not self.reconnect:
                    failure = connection.failure
                    raise failure if failure is not None else ConnectionLost("connection lost")
                log.warning("%s; reconnecting", connection.failure)
                connection = await self._reconnect()
        finally:
            self.status = WorkerStatus.CLOSED
            if self._connection is not None:
                await self._connection.close()
            if self._threads is not None:
                self._threads.shutdown(wait=False, cancel_futures=True)

    async def _connect(self) -> Connection:
        connection = await Connection.open(self.url, name=self.name, on_push=self._push)
        self._connection = connection
        return connection

    async def _reconnect(self) -> Connection | None:
        """Connect again, backing off; None once ``close()`` was called."""
        delay = MIN_BACKOFF
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()
            if self._stop.is_set():
                break
            try:
                return await self._connect()
            except ConveyorError as exc:
                # Lost again, or refused (connection limit, shutting down): try later.
                log.debug("reconnect failed: %s", exc)
                delay = min(delay * 2, MAX_BACKOFF)
        return None

    async def _serve(self, connection: Connection) -> bool:
        """Take jobs on ``connection``; True when it was lost, False after a graceful stop."""
        lost = False
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            try:
                await connection.request(lambda req: Subscribe(
                    req=req, queue=self.queue, window=self.concurrency, lease=self.lease))
            except ConnectionLost:
                return True
            heartbeat = tasks.create_task(self._extend_leases(connection))
            closed = asyncio.ensure_future(connection.wait_closed())
            stop = asyncio.ensure_future(self._stop.wait())
            try:
                await asyncio.wait([closed, stop], return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
                stop.cancel()
            lost = connection.failure is not None
            if lost:
                # The broker has re-queued our jobs: nothing to report them to.
                for task in self._running:
                    task.cancel()
            else:
                await self._shut_down(connection)
            heartbeat.cancel()
        self._tasks = None
        return lost and not self._stop.is_set()

    async def close(self) -> None:
        """Stop taking jobs, let running ones finish within the grace period, release the rest.

        Idempotent; ``run()`` returns once the shutdown is done.
        """
        self.stop()

    def stop(self) -> None:
        """``close()`` for callers that cannot await, such as a signal handler."""
        if self.status in (WorkerStatus.RUNNING, WorkerStatus.NEW):
            self.status = WorkerStatus.CLOSING
        self._stop.set()

    async def _extend_leases(self, connection: Connection) -> None:
        """Tell the broker every third of a lease that this worker is alive.

        Also when idle: a worker whose lease ran out (its loop was blocked) gets nothing more
        until the broker hears from it.
        """
        while connection.failure is None:
            await asyncio.sleep(self.lease / 3)
            if connection.failure is None:
                connection.send(Extend(queue=self.queue))

    async def _shut_down(self, connection: Connection) -> None:
        self.status = WorkerStatus.CLOSING
        # 1. Stop credit: the broker pushes nothing more.
        with contextlib.suppress(ConveyorError):
            await connection.request(
                lambda req: SetWindow(req=req, queue=self.queue, window=0)
            )
        # 2. Let running jobs finish within the grace period.
        if self._running:
            await asyncio.wait(list(self._running), timeout=self.grace)
        # 3. Cancel what is left; each cancelled job is released back to the queue.
        for task in self._running:
            task.cancel()
        if self._running:
            await asyncio.wait(list(self._running))
        await connection.drain()

    def _push(self, message: Push) -> None:
        connection = self._connection
        tasks = self._tasks
        if not isinstance(message, Deliver) or connection is None or tasks is None:
            # A closing broker pushes nothing more; running jobs still report their outcome.
            return
        for delivery in message.jobs:
            try:
                data = msgspec.msgpack.decode(delivery.data)
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                connection.send(Fail(job=delivery.job, lease=delivery.lease, error=JobError(
                    type="DecodeError", message=f"payload is not valid MessagePack: {exc}")))
                continue
            job = Job(connection, message.queue, delivery.job, delivery.lease, delivery.attempt,
                      data, attempts=delivery.attempts, timeout=delivery.timeout,
                      name=delivery.name)
            task = tasks.create_task(self._run_job(connection, job))
            self._running[task] = job
            task.add_done_callback(self._running.pop)

    async def _run_job(self, connection: Connection, job: Job) -> None:
        timer: asyncio.Timeout | None = None
        try:
            if self._is_async and job.timeout is None:
                result = await self.handler(job)
            elif self._is_async:
                timer = asyncio.timeout(job.timeout)
                async with timer:
                    result = await self.handler(job)
            else:
                # A plain handler's clock starts when a thread runs it (see ``_call``).
                timer = asyncio.timeout(None)
                async with timer:
                    loop = asyncio.get_running_loop()
                    result = await loop.run_in_executor(
                        self._threads, functools.partial(self._call, loop, timer, job)
                    )
            outcome: Ack | Fail = Ack(job=job.id, lease=job.lease,
                                      result=encode_value(result, "job result"))
        except asyncio.CancelledError:
            # The one place a cancellation is caught: the job is handed back, then we stop.
            if connection.failure is None:
                connection.send(Release(job=job.id, lease=job.lease))
            raise
        except TimeoutError as exc:
            if timer is not None and timer.expired():
                outcome = _failure(job, exc, message=f"job {job.id} ran over its timeout of "
                                                     f"{job.timeout:g} s and was cancelled")
            else:
                outcome = _failure(job, exc)
        except Exception as exc:
            outcome = _failure(job, exc)
        if connection.failure is None:
            connection.send(outcome)
            self.processed += 1

    def _call(self, loop: asyncio.AbstractEventLoop, timer: asyncio.Timeout, job: Job) -> Any:
        """Run a plain handler in a pool thread, starting its try's timeout now: a try that
        waited for a thread (one still held by an earlier try that ran over its timeout, which
        no one can stop) is not failed for the time it waited."""
        if job.timeout is not None:
            loop.call_soon_threadsafe(_start_timeout, timer, job.timeout)
        return self.handler(job)


def _start_timeout(timer: asyncio.Timeout, seconds: float) -> None:
    with contextlib.suppress(RuntimeError):  # the try already ended (it was cancelled)
        timer.reschedule(asyncio.get_running_loop().time() + seconds)


def _failure(job: Job, exc: BaseException, *, message: str | None = None) -> Fail:
    """The ``fail`` report of ``exc``; ``Unrecoverable`` and ``Retry`` steer the retry."""
    error = JobError(
        type=type(exc).__name__,
        message=message if message is not None else str(exc),
        traceback="".join(traceback.format_exception(exc)),
    )
    if isinstance(exc, Unrecoverable):
        return Fail(job=job.id, lease=job.lease, error=error, retry=False)
    if isinstance(exc, Retry):
        delay = None if exc.delay is None else max(0.0, exc.delay)
        return Fail(job=job.id, lease=job.lease, error=error, delay=delay)
    return Fail(job=job.id, lease=job.lease, error=error)
