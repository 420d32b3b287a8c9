"""``Client``: add jobs, read them and wait for their results over one connection."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, Final

import msgspec

from conveyor.protocol import (
    NIL,
    Add,
    Added,
    Backoff,
    Clean,
    Count,
    Counts,
    Drain,
    Events,
    Finished,
    GetCounts,
    GetJob,
    GetJobs,
    GetQueues,
    JobDef,
    JobReply,
    Jobs,
    JobState,
    Ok,
    Pause,
    Promote,
    QueueList,
    QueueSummary,
    Remove,
    RetryFailed,
    Unwait,
    Wait,
    Watch,
    check_queue_name,
)

from .connection import Connection, Push, Reply
from .errors import ConnectionLost, ConveyorError, JobFailed
from .events import EventStream
from .jobs import JobInfo, decode_job, decode_value, encode_value, encode_values
from .options import JobSpec, job_def

__all__ = ["Client", "connect"]

BULK_FRAME_BYTES: Final = 256 * 1024
"""Target frame size when splitting a bulk add (bytes); small frames let dispatch start early."""
BULK_FRAME_JOBS: Final = 2_000
"""Most jobs per frame of a bulk add."""
FIRST_FRAME_JOBS: Final = 64
"""Most jobs in a bulk add's first frame: it leaves at once, and idle workers start on it."""
_FRAME_SLACK: Final = 1024
"""Room left in a frame for the message envelope and queue name (bytes)."""
_JOB_OVERHEAD: Final = 8
"""Bytes a job's envelope adds to its encoded payload."""
_OPTIONS_OVERHEAD: Final = 160
"""Most bytes a job's options other than ``id`` add to it."""


class Client:
    """An asyncio client of a Conveyor broker; many calls may be in flight at once."""

    def __init__(self, url: str | None = None, *, name: str = "client",
                 timeout: float = 10.0) -> None:
        self.url = url
        self.name = name
        self.timeout = timeout
        self._connection: Connection | None = None
        self._streams: dict[str, list[EventStream]] = {}

    async def connect(self) -> Client:
        """Open the connection (done by ``async with`` and ``client.connect()``)."""
        if self._connection is None:
            self._connection = await Connection.open(self.url, name=self.name,
                                                     timeout=self.timeout, on_push=self._push)
            self._connection.on_lost(self._lost)
        return self

    async def __aenter__(self) -> Client:
        return await self.connect()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection. Idempotent."""
        if self._connection is not None:
            await self._connection.close()

    @property
    def connection(self) -> Connection:
        """The open connection."""
        if self._connection is None:
            raise ConveyorError("client is not connected: use 'async with' or 'await connect()'")
        return self._connection

    # Producing.

    async def add(
        self,
        queue: str,
        data: Any,
        *,
        id: str | None = None,
        priority: int = 0,
        attempts: int = 1,
        backoff: float | Backoff | None = None,
        timeout: float | None = None,
        delay: float = 0.0,
        run_at: float | None = None,
        keep_result: float | None = None,
        name: str | None = None,
    ) -> int:
        """Add one job; return its id once the broker has accepted it.

        ``id`` is an idempotency key: adding a key a retained job already has adds nothing and
        returns that job's id. ``priority``: higher runs first. ``attempts``: tries in all.
        ``backoff``: seconds between tries, or ``exponential(...)``. ``timeout``: seconds one
        try may run. ``delay`` / ``run_at``: not before then. ``keep_result``: seconds the
        finished job is retained. ``name``: what kind of job it is (a worker serving a task
        registry runs the task of that name).
        """
        _check_queue(queue)
        raw = encode_value(data, "job payload")
        if len(raw) + _JOB_OVERHEAD + _FRAME_SLACK > self.connection.max_frame:
            raise ValueError(f"payload is {len(raw)} bytes encoded; the broker's frame limit is "
                             f"{self.connection.max_frame} bytes")
        job = job_def(raw, id=id, priority=priority, attempts=attempts, backoff=backoff,
                      timeout=timeout, delay=delay, run_at=run_at, keep_result=keep_result,
                      name=name)
        reply = await self.connection.request(functools.partial(_add, queue, [job]))
        assert isinstance(reply, Added)
        return reply.ids[0]

    async def add_bulk(self, queue: str, payloads: Iterable[Any], **options: Any) -> list[int]:
        """Add many jobs; return their ids in input order.

        ``options`` (those of ``add``) apply to every payload; a ``JobSpec`` carries its own.
        Payloads are all encoded and checked before anything is sent (an unserializable one
        raises ``TypeError`` naming its index), then split into frames under the broker's frame
        limit and pipelined. Workers start on the first frame's jobs while later frames are still
        in flight.
        """
        _check_queue(queue)
        connection = self.connection
        items = list(payloads)
        has_specs = JobSpec in map(type, items)
        raws = encode_values(
            [item.data if isinstance(item, JobSpec) else item for item in items]
            if has_specs else items, "payload")
        # Options are checked once for the call, and once for each JobSpec, before any frame.
        template = job_def(NIL, **options) if options else None
        own: dict[int, JobDef] = {}
        if has_specs:
            own = {index: job_def(raws[index], **item.options())
                   for index, item in enumerate(items) if isinstance(item, JobSpec)}
        limit = connection.max_frame - _FRAME_SLACK
        extra = _job_size(template or JobDef(NIL)) - len(NIL)
        largest = max(map(len, raws), default=0) + extra
        sizes: list[int] | None = None
        if own or largest * BULK_FRAME_JOBS > BULK_FRAME_BYTES:
            sizes = [len(raw) + extra for raw in raws]
            for index, spec in own.items():
                sizes[index] = _job_size(spec)
            largest = max(sizes)
        if largest > limit:
            assert sizes is not None
            index = next(i for i, size in enumerate(sizes) if size > limit)
            raise ValueError(f"payload {index} is {len(raws[index])} bytes encoded; the "
                             f"broker's frame limit is {connection.max_frame} bytes")

        def job(index: int) -> JobDef:
            if index in own:
                return own[index]
            if template is None:
                return JobDef(raws[index])
            return msgspec.structs.replace(template, data=raws[index])

        futures: list[asyncio.Future[Reply]] = []
        for start, stop in _chunks(len(raws), sizes, min(BULK_FRAME_BYTES, limit)):
            chunk = [job(index) for index in range(start, stop)]
            futures.append(connection.request(functools.partial(_add, queue, chunk)))
            await connection.drain()
        ids: list[int] = []
        try:
            for future in futures:
                reply = await future
                assert isinstance(reply, Added)
                ids += reply.ids
        finally:
            for future in futures:
                future.cancel()
        return ids

    # Queue control.

    async def promote(self, job_id: int) -> None:
        """Make a delayed job waiting now (``InvalidState`` when it is not delayed)."""
        await self._ok(functools.partial(_message, Promote, job=job_id))

    async def remove(self, job_id: int) -> None:
        """Remove a job that is not active (``InvalidState`` when it is)."""
        await self._ok(functools.partial(_message, Remove, job=job_id))

    async def pause(self, queue: str) -> None:
        """Stop deliveries from ``queue``; it still accepts jobs. Survives a broker restart."""
        _check_queue(queue)
        await self._ok(functools.partial(_message, Pause, queue=queue, paused=True))

    async def resume(self, queue: str) -> None:
        """Restart deliveries from a paused queue."""
        _check_queue(queue)
        await self._ok(functools.partial(_message, Pause, queue=queue, paused=False))

    async def retry_failed(self, queue: str | None = None, *, job_id: int | None = None) -> int:
        """Put failed jobs (every retained one of ``queue``, or one job) back in line, with
        their attempts renewed; return how many."""
        if (queue is None) == (job_id is None):
            raise ValueError("give either a queue or a job_id")
        if queue is not None:
            _check_queue(queue)
        return await self._count(functools.partial(_message, RetryFailed, queue=queue,
                                                   job=job_id))

    async def drain(self, queue: str) -> int:
        """Remove every waiting and delayed job of ``queue``; return how many."""
        _check_queue(queue)
        return await self._count(functools.partial(_message, Drain, queue=queue))

    async def clean(self, queue: str, state: JobState | str, older_than: float = 0.0) -> int:
        """Remove ``queue``'s completed or failed jobs finished over ``older_than`` seconds ago."""
        _check_queue(queue)
        return await self._count(functools.partial(
            _message, Clean, queue=queue, state=JobState(state), older_than=older_than))

    def events(self, queue: str) -> EventStream:
        """Follow ``queue``'s events live: ``async for event in client.events(queue)``.

        Events are buffered from the moment this is called; ``aclose()`` (or ``async with``)
        stops the watch. A reader that falls too far behind gets ``EventsLost``.
        """
        _check_queue(queue)
        stream = EventStream(queue, self._unwatch)
        streams = self._streams.setdefault(queue, [])
        streams.append(stream)
        if len(streams) == 1:
            future = self.connection.request(functools.partial(_message, Watch, queue=queue))
            future.add_done_callback(functools.partial(_watch_refused, stream))
        return stream

    async def _unwatch(self, stream: EventStream) -> None:
        streams = self._streams.get(stream.queue, [])
        if stream in streams:
            streams.remove(stream)
        if not streams:
            self._streams.pop(stream.queue, None)
            connection = self._connection
            if connection is not None and connection.failure is None:
                await connection.request(functools.partial(
                    _message, Watch, queue=stream.queue, watching=False))

    def _push(self, message: Push) -> None:
        if isinstance(message, Events):
            for stream in self._streams.get(message.queue, ()):
                stream.feed(message.events)

    def _lost(self, error: ConveyorError) -> None:
        for streams in self._streams.values():
            for stream in streams:
                stream.fail(error)

    async def _ok(self, build: functools.partial[Any]) -> None:
        reply = await self.connection.request(build)
        assert isinstance(reply, Ok)

    async def _count(self, build: functools.partial[Any]) -> int:
        reply = await self.connection.request(build)
        assert isinstance(reply, Count)
        return reply.count

    # Reading.

    async def get_job(self, job_id: int) -> JobInfo | None:
        """The job's record, or None when the broker does not retain it."""
        reply = await self.connection.request(lambda req: GetJob(req=req, job=job_id))
        assert isinstance(reply, JobReply)
        return None if reply.job is None else decode_job(reply.job)

    async def wait(self, job_id: int, timeout: float | None = None) -> Any:
        """Wait until the job finishes; return its result or raise ``JobFailed``.

        The broker replies when the job completes or fails: nothing polls. Raises
        ``TimeoutError`` after ``timeout`` seconds, and ``UnknownJob`` when no such job is retained.
        On a timeout or a cancellation the wait is withdrawn at the broker (``unwait``).
        """
        connection = self.connection
        sent: list[int] = []

        def build(req: int) -> Wait:
            sent.append(req)
            return Wait(req=req, job=job_id)

        future = connection.request(build)
        try:
            async with asyncio.timeout(timeout):
                reply = await future
        finally:
            if future.cancelled() or not future.done():
                # Timed out or cancelled: withdraw the wait, so the broker forgets it.
                future.cancel()
                with contextlib.suppress(ConveyorError):
                    connection.send(Unwait(job=job_id, wait=sent[0]))
        assert isinstance(reply, Finished)
        job = reply.job
        if job.state is JobState.FAILED:
            raise JobFailed(decode_job(job))
        return decode_value(job.result)

    async def get_jobs(self, queue: str, state: JobState | str, *, offset: int = 0,
                       limit: int = 100) -> list[JobInfo]:
        """``queue``'s jobs in ``state``, in order: waiting in the order they will run, delayed
        by due time, active in delivery order, completed and failed most recent first."""
        _check_queue(queue)
        reply = await self.connection.request(functools.partial(
            _message, GetJobs, queue=queue, state=JobState(state), offset=offset, limit=limit))
        assert isinstance(reply, Jobs)
        return [decode_job(job) for job in reply.jobs]

    async def queues(self) -> list[QueueSummary]:
        """Every queue the broker knows, by name, with its counts, whether it is paused, and
        its rates (jobs a second added, completed and failed over the last minute)."""
        reply = await self.connection.request(lambda req: GetQueues(req=req))
        assert isinstance(reply, QueueList)
        return reply.queues

    async def counts(self, queue: str) -> dict[str, int]:
        """Jobs waiting, active and delayed now, completed and failed since the queue was created,
        and the workers subscribed now."""
        _check_queue(queue)
        reply = await self.connection.request(lambda req: GetCounts(req=req, queue=queue))
        assert isinstance(reply, Counts)
        return {
            "waiting": reply.waiting,
            "active": reply.active,
            "delayed": reply.delayed,
            "completed": reply.completed,
            "failed": reply.failed,
            "workers": reply.workers,
        }


async def connect(url: str | None = None, *, name: str = "client",
                  timeout: float = 10.0) -> Client:
    """Open a ``Client`` connected to ``url``."""
    return await Client(url, name=name, timeout=timeout).connect()


def _add(queue: str, jobs: list[JobDef], req: int) -> Add:
    return Add(req=req, queue=queue, jobs=jobs)


def _message(kind: type[Any], req: int, **fields: Any) -> Any:
    return kind(req=req, **fields)


def _job_size(job: JobDef) -> int:
    """An upper bound of a job's encoded size in an ``add`` frame (bytes)."""
    size = len(job.data) + _JOB_OVERHEAD
    if job.id is not None:
        size += 8 + 4 * len(job.id)
    if job.name is not None:
        size += 8 + 4 * len(job.name)
    if (job.priority or job.attempts != 1 or job.backoff is not None or job.timeout is not None
            or job.delay or job.run_at is not None or job.keep_result is not None):
        size += _OPTIONS_OVERHEAD
    return size


def _watch_refused(stream: EventStream, future: asyncio.Future[Reply]) -> None:
    if not future.cancelled() and future.exception() is not None:
        stream.fail(future.exception() or ConnectionLost("watch refused"))


def _check_queue(queue: str) -> None:
    problem = check_queue_name(queue)
    if problem is not None:
        raise ValueError(problem)


def _chunks(count: int, sizes: list[int] | None, target: int) -> Iterator[tuple[int, int]]:
    """Split ``count`` jobs into runs of at most ``target`` bytes (``sizes`` None: all small)
    and ``BULK_FRAME_JOBS`` jobs; yield each run's (start, stop) indices.

    The first run is short (``FIRST_FRAME_JOBS``), so workers start while the rest is built.
    """
    most = FIRST_FRAME_JOBS
    start = 0
    if sizes is None:
        while start < count:
            yield start, min(start + most, count)
            start += most
            most = BULK_FRAME_JOBS
        return
    total = 0
    for index, size in enumerate(sizes):
        if index > start and (total + size > target or index - start >= most):
            yield start, index
            start, total, most = index, 0, BULK_FRAME_JOBS
        total += size
    if start < count:
        yield start, count
