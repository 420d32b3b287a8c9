"""``Worker``: subscribe to queues with credit windows and run their jobs.

A credit window is a queue's concurrency: the broker pushes at most that many of its jobs at a
time, and every ack, failure or release frees a slot for the next push. A worker serves one queue
with one handler, or every queue of a ``Tasks`` registry (one subscription, and window, per queue,
over one connection), running each job's task by the job's name. Async handlers run as tasks on
the worker's loop; plain functions run in a thread pool with a thread for each of their slots so
they cannot block it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import enum
import functools
import inspect
import logging
import ssl as _ssl
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, overload

import msgspec

from conveyor.client import (
    Connection,
    ConnectionLost,
    ConveyorError,
    Push,
    RequestRefused,
    encode_value,
)
from conveyor.protocol import (
    MAX_LIMIT_PERIOD,
    Ack,
    Deliver,
    Extend,
    Fail,
    JobError,
    Release,
    SetWindow,
    Subscribe,
    Throttle,
    check_queue_name,
)

from .errors import RateLimited, Retry, UnknownTask, Unrecoverable
from .job import Job, _current
from .limits import VALUE_SLACK, fit_failure, result_too_large
from .tasks import Task, Tasks

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
_RECENT_JOBS: Final = 256
"""Finished jobs the loop monitor keeps, to name one that blocked the loop and then returned."""
_LOOP_CHECKS: Final = 12
"""Times per lease the worker checks that its event loop is not blocked (at most once a
second)."""
MIN_BACKOFF: Final = 0.05
MAX_BACKOFF: Final = 2.0
"""Seconds between attempts to reconnect to a broker that went away: doubling, up to this."""

Handler = Callable[[Job], Awaitable[Any]] | Callable[[Job], Any]

log = logging.getLogger("conveyor.worker")

_clock: Final = time.perf_counter
"""Bound once: read twice per job."""
_NONE: Final = encode_value(None, "job result")
"""The result of a job whose handler returned None."""


class WorkerStatus(enum.Enum):
    """Lifecycle of a ``Worker``."""

    NEW = "new"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(slots=True)
class _Subscription:
    """One queue the worker takes jobs from: its window, and what runs its jobs."""

    queue: str
    window: int
    handler: Handler | None = None
    """The one handler of every job (a ``Worker(queue, handler)``), else None."""
    handler_is_async: bool = False
    tasks: Mapping[str, Task[Any, Any]] = field(default_factory=dict)
    """The registry's tasks of this queue, by name (a ``Worker(tasks)``)."""
    direct: Callable[[Job], Awaitable[Any]] | None = field(init=False)
    """``handler`` when it is async: what most jobs run, awaited at once (see ``_run_job``)."""

    def __post_init__(self) -> None:
        self.direct = self.handler if self.handler_is_async else None

    @property
    def needs_threads(self) -> bool:
        if self.handler is not None:
            return not self.handler_is_async
        return not all(task.is_async for task in self.tasks.values())


class Worker:
    """Runs the jobs of one queue with ``handler``, or of a registry's queues with its tasks.

    ``Worker(queue, handler, ...)``: every job of ``queue``, at most ``concurrency`` at a time.

    ``Worker(tasks, queues=None, ...)``: every queue of the ``Tasks`` registry (or the ``queues``
    named), each with its own window: the ``concurrency`` set with ``tasks.queue(...)``, else
    ``concurrency``. Each job runs the task of its queue named like the job, with the payload as
    its keyword arguments. A job whose name is not a task of its queue fails as ``UnknownTask``,
    and one whose payload does not fit the task as ``InvalidArguments``, without a retry.
    """

    @overload
    def __init__(self, queue: str, handler: Handler, *, url: str | None = None,
                 concurrency: int = 1, grace: float = DEFAULT_GRACE,
                 lease: float = DEFAULT_LEASE, reconnect: bool = True,
                 name: str = "worker", ssl: _ssl.SSLContext | None = None) -> None: ...

    @overload
    def __init__(self, tasks: Tasks, /, *, queues: Iterable[str] | None = None,
                 url: str | None = None, concurrency: int = 1, grace: float = DEFAULT_GRACE,
                 lease: float = DEFAULT_LEASE, reconnect: bool = True,
                 name: str = "worker", ssl: _ssl.SSLContext | None = None) -> None: ...

    def __init__(
        self,
        queue: str | Tasks,
        handler: Handler | None = None,
        *,
        queues: Iterable[str] | None = None,
        url: str | None = None,
        concurrency: int = 1,
        grace: float = DEFAULT_GRACE,
        lease: float = DEFAULT_LEASE,
        reconnect: bool = True,
        name: str = "worker",
        ssl: _ssl.SSLContext | None = None,
    ) -> None:
        """Raises ``ValueError`` for a bad queue name, a concurrency below 1, or queues the
        registry does not have."""
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency!r}")
        self.tasks: Tasks | None = None
        """The registry served, or None for a one-handler worker."""
        if isinstance(queue, Tasks):
            if handler is not None:
                raise TypeError("Worker(tasks) takes no handler: the registry's tasks run")
            self.tasks = queue
            subscriptions = _task_subscriptions(queue, queues, concurrency)
        else:
            if handler is None or queues is not None:
                raise TypeError("use Worker(queue, handler, ...) or Worker(tasks, queues=...)")
            problem = check_queue_name(queue)
            if problem is not None:
                raise ValueError(problem)
            is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
                type(handler).__call__)
            subscriptions = [_Subscription(queue, concurrency, handler, is_async)]
        self._subscriptions = {sub.queue: sub for sub in subscriptions}
        self.queues: dict[str, int] = {sub.queue: sub.window for sub in subscriptions}
        """The queues served, with their windows (jobs run at once)."""
        self.url = url
        self.ssl = ssl
        """The TLS context for a ``conveyors://`` URL (default: one built from
        ``$CONVEYOR_TLS_CA``, ``$CONVEYOR_TLS_CERT`` and ``$CONVEYOR_TLS_KEY``)."""
        self.concurrency = concurrency
        self.grace = grace
        self.lease = lease
        self.reconnect = reconnect
        self.name = name
        self.status = WorkerStatus.NEW
        self.processed = 0
        """Jobs whose outcome (result or failure) this worker reported."""
        self._connection: Connection | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._running: dict[Job, asyncio.Task[None]] = {}
        """The running jobs and their tasks: each job's task takes its job out as it ends."""
        self._recent: collections.deque[Job] = collections.deque(maxlen=_RECENT_JOBS)
        """The jobs that finished last, most recent at the end (see ``_watch_loop``)."""
        self._stop = asyncio.Event()
        self._finished = asyncio.Event()
        """Set once ``run()`` is over (or ``close()`` came before it)."""
        self._ran = False
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"<Worker {self.name!r} {self.status.value} on {self.queues}>"

    async def run(self) -> None:
        """Connect, take jobs until ``close()``, then shut down gracefully.

        Returns at once when ``close()`` (or ``stop()``) came first. Raises ``ConnectionLost``
        when the first connection cannot be made, and ``RuntimeError`` when it already ran. A
        connection lost later is made again (with ``reconnect``), backing off up to
        ``MAX_BACKOFF`` seconds; the broker has re-queued every job this worker held, so running
        handlers are cancelled.
        """
        if self.status is WorkerStatus.CLOSED and not self._ran:
            return
        if self.status is not WorkerStatus.NEW:
            raise RuntimeError(f"worker is {self.status.value}")
        self._ran = True
        self.status = WorkerStatus.RUNNING
        threads = sum(sub.window for sub in self._subscriptions.values() if sub.needs_threads)
        if threads:
            self._threads = concurrent.futures.ThreadPoolExecutor(
                threads, thread_name_prefix=f"{self.name}-job"
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
            try:
                if self._connection is not None:
                    await self._connection.close()
                if self._threads is not None:
                    self._threads.shutdown(wait=False, cancel_futures=True)
            finally:
                self._finished.set()

    async def _connect(self) -> Connection:
        connection = await Connection.open(self.url, name=self.name, on_push=self._push,
                                           ssl=self.ssl)
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
        refused: RequestRefused | None = None
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            try:
                try:
                    await _all(connection.request(functools.partial(
                        _subscribe, sub.queue, sub.window, self.lease))
                        for sub in self._subscriptions.values())
                except ConnectionLost:
                    return True
                except RequestRefused as exc:
                    # Raised after the task group, so that it reaches the caller as itself (a
                    # queue name or a permission refused), not wrapped in an exception group.
                    refused = exc
                if refused is None:
                    log.info("serving %s", ", ".join(f"{queue} ({window} at a time)"
                                                     for queue, window in self.queues.items()),
                             extra={"fields": {"queues": self.queues}})
                    heartbeat = tasks.create_task(self._extend_leases(connection))
                    monitor = tasks.create_task(self._watch_loop())
                    closed = asyncio.ensure_future(connection.wait_closed())
                    stop = asyncio.ensure_future(self._stop.wait())
                    try:
                        await asyncio.wait([closed, stop], return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        closed.cancel()
                        stop.cancel()
                    lost = connection.failure is not None
                    if not lost:
                        await self._shut_down(connection)
                    # Else the broker has re-queued our jobs: ``_end_jobs`` cancels them, with
                    # nothing to report them to.
                    heartbeat.cancel()
                    monitor.cancel()
            finally:
                # The jobs' tasks are not the group's (see ``_push``): this waits for them.
                await self._end_jobs()
        self._tasks = None
        if refused is not None:
            await connection.close()
            raise refused
        return lost and not self._stop.is_set()

    async def close(self) -> None:
        """Stop taking jobs, let running ones finish within the grace period, release the rest
        and disconnect; return once that is done and ``run()`` is over.

        Idempotent, and safe at any time: before ``run()`` it marks the worker closed (``run()``
        then returns at once); after ``run()`` is over it returns at once. Called from one of
        this worker's jobs (its handler, or a task the handler started), it starts the shutdown
        and returns without waiting for it: the shutdown waits for that job to finish, so the
        job cannot wait for the shutdown. The job then goes on and its outcome is reported as
        usual (within the grace period).
        """
        self.stop()
        if self._finished.is_set() or self._in_own_job():
            return
        await self._finished.wait()

    def stop(self) -> None:
        """Start the shutdown of ``close()`` without waiting for it, for callers that cannot
        await, such as a signal handler."""
        if self.status is WorkerStatus.NEW:
            self.status = WorkerStatus.CLOSED
            self._finished.set()
        elif self.status is WorkerStatus.RUNNING:
            self.status = WorkerStatus.CLOSING
        self._stop.set()

    def _in_own_job(self) -> bool:
        """Whether the caller runs in one of this worker's running jobs."""
        job = _current.get(None)
        return job is not None and job in self._running  # a Job is equal only to itself

    async def _extend_leases(self, connection: Connection) -> None:
        """Tell the broker every third of a lease that this worker is alive, on every queue.

        Also when idle: a worker whose lease ran out (its loop was blocked) gets nothing more
        until the broker hears from it.
        """
        while connection.failure is None:
            await asyncio.sleep(self.lease / 3)
            if connection.failure is None:
                for queue in self._subscriptions:
                    connection.send(Extend(queue=queue))

    async def _watch_loop(self) -> None:
        """Warn when the event loop was blocked for over a third of the lease, naming the jobs
        that were running then.

        A blocked loop sends no lease extensions: blocked much longer, the broker takes the
        worker's jobs back and hands them to others while they still run here. The usual cause
        is a blocking call (``time.sleep``, synchronous I/O) in an async handler. The check is
        a sleep that overran: it wakes every ``lease / _LOOP_CHECKS`` seconds (at most once a
        second), so blocks are measured to within that.
        """
        interval = min(self.lease / _LOOP_CHECKS, 1.0)
        threshold = self.lease / 3
        while True:
            due = time.perf_counter() + interval
            await asyncio.sleep(interval)
            blocked = time.perf_counter() - due
            if blocked > threshold:
                # The loop did not come back to us between ``due`` and now: the jobs running
                # then are those still running, and those that finished after ``due`` (the
                # blocking one often among them: its handler blocked, then returned).
                jobs = dict.fromkeys([*self._running, *(
                    job for job in self._recent
                    if job._finished is not None and job._finished >= due)])
                _log_blocked(blocked, self.lease, list(jobs))

    async def _end_jobs(self) -> None:
        """Cancel the jobs still running (each is handed back, if the connection stands) and wait
        until they end."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        # A task cancelled before it ran never took its job out.
        self._running.clear()

    async def _shut_down(self, connection: Connection) -> None:
        self.status = WorkerStatus.CLOSING
        # 1. Stop credit on every queue: the broker pushes nothing more.
        with contextlib.suppress(ConveyorError):
            await _all(connection.request(functools.partial(_close_window, queue))
                       for queue in self._subscriptions)
        # 2. Let running jobs finish within the grace period.
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=self.grace)
        # 3. Cancel what is left; each cancelled job is released back to the queue.
        for task in self._running.values():
            task.cancel()
        if self._running:
            await asyncio.wait(list(self._running.values()))
        await connection.drain()

    def _push(self, message: Push) -> None:
        connection = self._connection
        tasks = self._tasks
        if not isinstance(message, Deliver) or connection is None or tasks is None:
            # A closing broker pushes nothing more; running jobs still report their outcome.
            return
        queue = message.queue
        subscription = self._subscriptions.get(queue)
        if subscription is None:
            # Not a queue of ours (cannot happen with a well-behaved broker): hand it back.
            for delivery in message.jobs:
                connection.send(Release(job=delivery.job, lease=delivery.lease))
            return
        # Once per push rather than per job: a level set while a batch runs applies to the next.
        logging_jobs = log.isEnabledFor(logging.INFO)
        # Bound once per push: this loop runs for every job. The jobs' tasks are the loop's, not
        # the task group's: its create_task adds a done callback (a trip through the loop) per
        # job; ``_serve`` waits for them itself, and each job handles its own errors.
        create_task = asyncio.get_running_loop().create_task
        run_job = self._run_job
        running = self._running
        for delivery in message.jobs:
            try:
                data = msgspec.msgpack.decode(delivery.data)
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                connection.send(Fail(job=delivery.job, lease=delivery.lease, error=JobError(
                    type="DecodeError", message=f"payload is not valid MessagePack: {exc}")))
                continue
            job = Job(connection, queue, delivery.job, delivery.lease, delivery.attempt,
                      data, attempts=delivery.attempts, timeout=delivery.timeout,
                      name=delivery.name, group=delivery.group)
            running[job] = create_task(run_job(connection, subscription, job, logging_jobs))

    def _resolve(self, subscription: _Subscription, job: Job) -> tuple[Callable[[], Any], bool]:
        """What runs ``job`` (a call without arguments), and whether it is async.

        Raises ``UnknownTask`` or ``InvalidArguments`` for a job no task of its queue can run.
        """
        if subscription.handler is not None:
            return functools.partial(subscription.handler, job), subscription.handler_is_async
        task = None if job.name is None else subscription.tasks.get(job.name)
        if task is None:
            raise UnknownTask(self._unknown(subscription, job))
        return functools.partial(task.func, **task.arguments(job.id, job.data)), task.is_async

    def _unknown(self, subscription: _Subscription, job: Job) -> str:
        names = ", ".join(sorted(subscription.tasks))
        if job.name is None:
            return (f"job {job.id} has no name, so no task of queue {job.queue!r} can run it "
                    f"(its tasks: {names})")
        message = (f"job {job.id} is named {job.name!r}, which is not a task of queue "
                   f"{job.queue!r} (its tasks: {names})")
        elsewhere = None if self.tasks is None else self.tasks.get(job.name)
        if elsewhere is not None:
            message += f"; task {job.name!r} is registered on queue {elsewhere.queue!r}"
        return message

    async def _run_job(self, connection: Connection, subscription: _Subscription, job: Job,
                       logging_jobs: bool) -> None:
        try:
            _current.set(job)  # this task's own context: the job's code sees it in current_job()
            started = 0.0
            if logging_jobs:
                _log_start(job)
                started = _clock()
            timer: asyncio.Timeout | None = None
            direct = subscription.direct
            try:
                if direct is not None and job.timeout is None:
                    # The common case, called at once: no partial (``_resolve``) built per job.
                    result = await direct(job)
                else:
                    call, is_async = self._resolve(subscription, job)
                    if is_async and job.timeout is None:
                        result = await call()
                    elif is_async:
                        timer = asyncio.timeout(job.timeout)
                        async with timer:
                            result = await call()
                    else:
                        loop = asyncio.get_running_loop()
                        # The thread runs in a copy of this context: current_job() works there.
                        context = contextvars.copy_context()
                        if job.timeout is None:
                            result = await loop.run_in_executor(self._threads, context.run, call)
                        else:
                            # A plain handler's clock starts when a thread runs it (see ``_call``).
                            timer = asyncio.timeout(None)
                            async with timer:
                                result = await loop.run_in_executor(
                                    self._threads, context.run, _call, loop, timer, job.timeout,
                                    call)
                # None (the most common result) is encoded once for all jobs.
                raw = _NONE if result is None else encode_value(result, "job result")
                ack = Ack(job=job.id, lease=job.lease, result=raw)
                outcome: Ack | Fail | Throttle = ack
                if len(raw) + VALUE_SLACK > connection.max_frame:
                    # Only a value near the limit is measured in its message (most fit at a glance).
                    too_large = result_too_large(job.id, ack, connection.max_frame)
                    if too_large is not None:
                        outcome = _failure(job, too_large)
            except asyncio.CancelledError:
                # The one place a cancellation is caught: the job is handed back, then we stop.
                job._finished = finished = time.perf_counter()
                self._recent.append(job)
                if connection.failure is None:
                    connection.send(Release(job=job.id, lease=job.lease))
                if logging_jobs:
                    _log_outcome(job, finished - started, None)
                raise
            except TimeoutError as exc:
                if timer is not None and timer.expired():
                    outcome = _failure(job, exc, message=f"job {job.id} ran over its timeout of "
                                                         f"{job.timeout:g} s and was cancelled")
                else:
                    outcome = _failure(job, exc)
            except RateLimited as exc:
                outcome = Throttle(job=job.id, lease=job.lease, seconds=_hold(exc.seconds))
            except Exception as exc:
                outcome = _failure(job, exc)
            job._finished = finished = _clock()
            self._recent.append(job)
            # ``type() is``: an isinstance() that fails on a struct class is slow; this is per job.
            if type(outcome) is Fail:
                outcome = fit_failure(outcome, connection.max_frame)
            if connection.failure is None:
                connection.send(outcome)
                self.processed += 1
            if logging_jobs:
                _log_outcome(job, finished - started, outcome)
        finally:
            # Here rather than a done callback: one call less per job. A task cancelled
            # before it ran leaves its job behind, which ``_end_jobs`` clears.
            self._running.pop(job, None)


def _task_subscriptions(tasks: Tasks, queues: Iterable[str] | None,
                        concurrency: int) -> list[_Subscription]:
    known = tasks.queues
    if not known:
        raise ValueError("the registry has no tasks")
    if isinstance(queues, str):
        queues = [queues]  # one queue's name, not the characters of one
    chosen = known if queues is None else list(dict.fromkeys(queues))
    if not chosen:
        raise ValueError("no queue to serve: give at least one of the registry's queues")
    for queue in chosen:
        if queue not in known:
            raise ValueError(f"the registry has no tasks on queue {queue!r} "
                             f"(its queues: {', '.join(known)})")
    return [_Subscription(queue, tasks.concurrency(queue) or concurrency, tasks=tasks.on(queue))
            for queue in chosen]


def _subscribe(queue: str, window: int, lease: float, req: int) -> Subscribe:
    return Subscribe(req=req, queue=queue, window=window, lease=lease)


def _close_window(queue: str, req: int) -> SetWindow:
    return SetWindow(req=req, queue=queue, window=0)


async def _all(futures: Iterable[Awaitable[Any]]) -> None:
    """Await every future; then raise the first failure, if any (none goes unretrieved)."""
    results = await asyncio.gather(*futures, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _call(loop: asyncio.AbstractEventLoop, timer: asyncio.Timeout, seconds: float,
          call: Callable[[], Any]) -> Any:
    """Run a plain handler in a pool thread, starting its try's timeout of ``seconds`` now: a
    try that waited for a thread (one still held by an earlier try that ran over its timeout,
    which no one can stop) is not failed for the time it waited."""
    loop.call_soon_threadsafe(_start_timeout, timer, seconds)
    return call()


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


# One log line per job start and outcome, at INFO; the fields go to structured (JSON) logs.


def _describe(job: Job) -> str:
    what = f"{job.name} on {job.queue}" if job.name is not None else f"on {job.queue}"
    return f"job {job.id} ({what})"


def _fields(job: Job) -> dict[str, Any]:
    return {"job_id": job.id, "queue": job.queue, "name": job.name, "attempt": job.attempt,
            "attempts": job.attempts}


def _log_start(job: Job) -> None:
    log.info("%s started, attempt %d of %d", _describe(job), job.attempt, job.attempts,
             extra={"fields": _fields(job)})


def _log_blocked(blocked: float, lease: float, jobs: list[Job]) -> None:
    """Warn that the loop was blocked for ``blocked`` seconds while ``jobs`` were running."""
    jobs.sort(key=lambda job: job.id)
    named = ", ".join(_describe(job) for job in jobs[:_BLOCKED_JOBS_NAMED])
    if len(jobs) > _BLOCKED_JOBS_NAMED:
        named += f" and {len(jobs) - _BLOCKED_JOBS_NAMED} more"
    log.warning("the event loop was blocked for %.2f s, over a third of the %g s lease (the "
                "broker takes jobs back after a lease without word from the worker); running "
                "then: %s. A blocking call in an async handler? Make it a plain function (it "
                "runs in a thread) or use asyncio.to_thread", blocked, lease, named or "no job",
                extra={"fields": {"blocked_s": round(blocked, 3), "lease": lease,
                                  "job_ids": [job.id for job in jobs]}})


_SHORTEST_HOLD: Final = 0.001
"""Seconds a ``RateLimited`` holds its queue at least."""
_BLOCKED_JOBS_NAMED: Final = 10
"""Most jobs a blocked-loop warning names."""


def _hold(seconds: float) -> float:
    """``RateLimited.seconds`` within what ``throttle`` takes: 1 ms (also for NaN) to 1e9 s."""
    return min(seconds, MAX_LIMIT_PERIOD) if seconds >= _SHORTEST_HOLD else _SHORTEST_HOLD


def _log_outcome(job: Job, seconds: float, outcome: Ack | Fail | Throttle | None) -> None:
    """Log a job's completion, failure or (``outcome`` None) release, ``seconds`` after it
    started."""
    duration = seconds * 1000
    fields = {**_fields(job), "duration_ms": round(duration, 3)}
    if isinstance(outcome, Ack):
        log.info("%s completed in %.1f ms", _describe(job), duration,
                 extra={"fields": {**fields, "outcome": "completed"}})
    elif isinstance(outcome, Fail):
        error = outcome.error
        retry = outcome.retry and job.attempt < job.attempts
        log.info("%s failed in %.1f ms: %s: %s%s", _describe(job), duration, error.type,
                 error.message, "" if retry else " (no retry)",
                 extra={"fields": {**fields, "outcome": "failed", "error_type": error.type,
                                   "error": error.message, "retry": retry}})
    elif isinstance(outcome, Throttle):
        log.info("%s rate limited after %.1f ms: handed back, its queue held for %g s",
                 _describe(job), duration, outcome.seconds,
                 extra={"fields": {**fields, "outcome": "rate_limited",
                                   "hold_s": outcome.seconds}})
    else:
        log.info("%s cancelled after %.1f ms and handed back", _describe(job), duration,
                 extra={"fields": {**fields, "outcome": "released"}})
