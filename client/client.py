"""``Client``: add jobs, read them and wait for their results over one connection."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl as _ssl
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Final, Literal, Unpack, cast

import msgspec

from conveyor.protocol import (
    HEADER_SIZE,
    Add,
    Added,
    AddFlow,
    Clean,
    Count,
    Counts,
    Drain,
    Events,
    FindJob,
    Finished,
    GetCounts,
    GetJob,
    GetJobs,
    GetQueues,
    GetSchedules,
    GetStats,
    JobDef,
    JobError,
    JobReply,
    Jobs,
    JobState,
    Ok,
    Pause,
    Promote,
    QueueLimits,
    QueueList,
    QueueSummary,
    Remove,
    RemoveSchedule,
    RetryFailed,
    Schedule,
    ScheduleInfo,
    Schedules,
    SetLimits,
    SetSchedule,
    Stats,
    Unwait,
    Wait,
    Watch,
)

from .connection import Connection, Push, Reply
from .errors import BulkAddFailed, ConnectionLost, ConveyorError, JobFailed
from .events import EventStream
from .flows import AddedFlow, Flow, added_flow, children_errors, children_results, flow_jobs
from .frames import bulk_jobs, check_fits, check_queue, frames
from .jobs import JobInfo, decode_job, decode_value, encode_value
from .options import Backoff, JobOptions, job_def

__all__ = ["Client", "connect"]

_encoder: Final = msgspec.msgpack.Encoder()
_FRAME_SLACK: Final = HEADER_SIZE + 8
"""Bytes a frame takes beyond its message encoded with request id 1 (a larger id is longer)."""

RECONNECT_BACKOFF: Final = 0.05
"""Seconds before trying again to reconnect, doubling after each failed try..."""
MAX_RECONNECT_BACKOFF: Final = 0.5
"""...up to this (seconds): a broker back from a restart is found within it."""


class Client:
    """An asyncio client of a Conveyor broker; many calls may be in flight at once.

    After the connection drops (a broker restart, say), the calls in flight on it fail with
    ``ConnectionLost`` and the next call opens a new connection: one attempt shared by every
    call made meanwhile, retried with a short backoff for at most ``timeout`` seconds, after
    which those calls fail with ``ConnectionLost``. Event streams open on the lost connection end
    with ``ConnectionLost``; call ``events()`` again to follow the queue on the new one. With
    ``reconnect=False`` a lost connection stays lost: every later call raises ``ConnectionLost``.

    ``url`` is ``conveyor://[user[:secret]@]host[:port]``, ``conveyors://...`` for TLS, or
    ``HOST:PORT`` (default: ``$CONVEYOR_URL``, else ``127.0.0.1:7400``). ``ssl``: the TLS context
    to use (``tls_context(...)``); without it a ``conveyors://`` URL uses one built from
    ``$CONVEYOR_TLS_CA``, ``$CONVEYOR_TLS_CERT`` and ``$CONVEYOR_TLS_KEY``.
    """

    def __init__(self, url: str | None = None, *, name: str = "client",
                 timeout: float = 10.0, reconnect: bool = True,
                 ssl: _ssl.SSLContext | None = None) -> None:
        self.url = url
        self.ssl = ssl
        """The TLS context given, if any."""
        self.name = name
        self.timeout = timeout
        """Seconds connecting (or reconnecting) may take."""
        self.reconnect = reconnect
        """Whether a call after a lost connection opens a new one."""
        self._connection: Connection | None = None
        self._closed = False
        self._reconnecting: asyncio.Task[Connection] | None = None
        self._streams: dict[str, list[EventStream]] = {}
        """Streams watching on the current connection, by queue."""
        self._waiting_streams: set[EventStream] = set()
        """Streams made while reconnecting; they watch once the new connection is open."""

    async def connect(self) -> Client:
        """Open the connection (done by ``async with`` and ``client.connect()``).

        Raises ``ConnectionLost`` when the broker does not answer within ``timeout`` seconds,
        ``VersionMismatch`` when it speaks another protocol version.
        """
        if self._closed:
            raise _closed_error()
        if self._connection is None:
            self._adopt(await Connection.open(self.url, name=self.name, timeout=self.timeout,
                                              on_push=self._push, ssl=self.ssl))
        return self

    async def __aenter__(self) -> Client:
        return await self.connect()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection; calls in flight fail with ``ConnectionLost``, later calls raise
        ``ConveyorError``. Idempotent."""
        self._closed = True
        reconnecting = self._reconnecting
        if reconnecting is not None:
            reconnecting.cancel()
            await asyncio.wait([reconnecting])
        if self._connection is not None:
            await self._connection.close()

    @property
    def connection(self) -> Connection:
        """The current connection (once lost, until the next call replaces it)."""
        if self._connection is None:
            raise ConveyorError("client is not connected: use 'async with' or 'await connect()'")
        return self._connection

    async def _open(self) -> Connection:
        """The open connection, or a new one when it was lost (see the class docstring).

        Raises ``ConnectionLost`` when it was lost and cannot be replaced.
        """
        connection = self.connection
        if self._closed:
            raise _closed_error()
        if connection.failure is None:
            return connection
        if not self.reconnect:
            raise connection.failure
        attempt = self._start_reconnect()
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if attempt.cancelled() and (current is None or not current.cancelling()):
                raise _closed_error() from None
            raise

    def _start_reconnect(self) -> asyncio.Task[Connection]:
        """The reconnection under way, else a new one: calls made meanwhile share it."""
        if self._reconnecting is None:
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())
            self._reconnecting.add_done_callback(self._reconnected)
        return self._reconnecting

    async def _reconnect(self) -> Connection:
        """Open a new connection, trying again with a backoff for at most ``timeout`` seconds."""
        pause = RECONNECT_BACKOFF
        failure: ConveyorError | None = None
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    try:
                        connection = await Connection.open(self.url, name=self.name,
                                                           on_push=self._push,
                                                           timeout=self.timeout, ssl=self.ssl)
                    except ConnectionLost as exc:
                        failure = exc
                        await asyncio.sleep(pause)
                        pause = min(pause * 2, MAX_RECONNECT_BACKOFF)
                        continue
                    break
        except TimeoutError:
            reason = failure or f"no answer from broker within {self.timeout:g} s"
            raise ConnectionLost(f"{reason} (reconnecting for {self.timeout:g} s)") from None
        self._adopt(connection)
        return connection

    def _reconnected(self, attempt: asyncio.Task[Connection]) -> None:
        self._reconnecting = None
        if not attempt.cancelled():
            # Read here, so that an attempt whose callers all went away is not reported unread.
            attempt.exception()

    def _adopt(self, connection: Connection) -> None:
        """Make ``connection`` the current one."""
        old = self._connection
        if old is not None and old.failure is not None:
            self._lost(old, old.failure)
        self._connection = connection
        connection.on_lost(functools.partial(self._lost, connection))

    # Producing.

    async def add(self, queue: str, data: Any, **options: Unpack[JobOptions]) -> int:
        """Add one job; return its id once the broker has accepted it.

        ``options`` (``JobOptions``): ``id`` is an idempotency key: adding a key a retained job
        already has adds nothing and returns that job's id. ``priority``: higher runs first.
        ``attempts``: tries in all. ``backoff``: seconds between tries, or ``exponential(...)``.
        ``timeout``: seconds one try may run. ``delay`` / ``run_at``: not before then.
        ``keep_result``: seconds the finished job is retained. ``name``: what kind of job it is
        (a worker serving a task registry runs the task of that name). ``dedup``: seconds after
        the add during which ``id`` deduplicates; after them an add with that key creates a new
        job, which ``find_job`` then finds. ``lifo``: the job joins the head of its priority's
        waiting line, ahead of the jobs waiting there. ``group``: the group (tenant) the job
        belongs to: dispatch takes turns across the groups of a queue, and the queue's
        per-group limits apply to it.
        """
        check_queue(queue)
        raw = encode_value(data, "job payload")
        job = job_def(raw, **options)
        connection = await self._open()
        check_fits(queue, job, connection.max_frame)
        reply = await connection.request(functools.partial(_add, queue, [job]))
        assert isinstance(reply, Added)
        return reply.ids[0]

    async def add_bulk(self, queue: str, payloads: Iterable[Any],
                       **options: Unpack[JobOptions]) -> list[int]:
        """Add many jobs; return their ids in input order.

        ``options`` (those of ``add``) apply to every payload; a ``JobSpec`` carries its own.
        Payloads are all encoded and checked before anything is sent (an unserializable one
        raises ``TypeError`` naming its index), then split into frames under the broker's frame
        limit and pipelined. Workers start on the first frame's jobs while later frames are still
        in flight.

        Raises:
            TypeError: a payload cannot be serialized (nothing was sent).
            ValueError: an option is out of range, or a job cannot fit in a frame (nothing was
                sent).
            BulkAddFailed: some frames were added and others failed; it carries the ids added
                (``added_ids``) and the error.
            RequestRefused, ConnectionLost: nothing was added (``DiskFull``,
                ``ProtocolViolation``...: the error of the first frame).
        """
        jobs = bulk_jobs(queue, payloads, options)
        connection = await self._open()
        sent: list[tuple[asyncio.Future[Reply], int]] = []
        unsent: ConveyorError | None = None
        try:
            for chunk in frames(jobs, connection.max_frame):
                sent.append((connection.request(functools.partial(_add, queue, chunk)),
                             len(chunk)))
                await connection.drain()
        except ConveyorError as exc:
            unsent = exc  # the connection was lost: the frames sent still get their answers
        except BaseException:
            for future, _ in sent:
                future.cancel()
            raise
        return await _added_ids(sent, len(jobs.raws), unsent)

    def add_bulk_nowait(self, queue: str, payloads: Iterable[Any],
                        **options: Unpack[JobOptions]) -> asyncio.Future[list[int]]:
        """Send a bulk add at once; return a future of its ids, in input order.

        As ``add_bulk`` (the same checks, raising before anything is sent), but every frame is
        queued on the connection before this returns, without waiting for the broker or for room
        in the socket's buffer: bulks sent one after another are added in that order, however
        many are in flight. The caller bounds what it sends (``await client.connection.drain()``
        between bulks waits for room). It does not reconnect: on a lost connection it raises
        ``ConnectionLost``.
        """
        jobs = bulk_jobs(queue, payloads, options)
        connection = self.connection
        sent: list[tuple[asyncio.Future[Reply], int]] = []
        try:
            for chunk in frames(jobs, connection.max_frame):
                sent.append((connection.request(functools.partial(_add, queue, chunk)),
                             len(chunk)))
        except BaseException:
            for future, _ in sent:
                future.cancel()
            raise
        return asyncio.ensure_future(_added_ids(sent, len(jobs.raws)))

    # Queue control.

    async def add_flow(self, flow: Flow) -> AddedFlow:
        """Add a flow: a parent job and its children (nested to any depth, on any queues), all
        at once or none; return the ids they were given, in the flow's shape.

        A job with children waits (``waiting-children``) until every one of them finished, then
        runs and may read their results (``children_results``). A child that fails for good
        fails its parent, is ignored by it, or removes it, by the child's ``on_failure``.

        Raises:
            TypeError: a payload cannot be serialized (nothing was sent).
            ValueError: an option is out of range, or the flow does not fit in one frame of the
                broker's (nothing was sent).
            RequestRefused, ConnectionLost: nothing was added.
        """
        connection = await self._open()
        jobs, parents = flow_jobs(flow, connection.max_frame)
        size = len(_encoder.encode(AddFlow(req=1, jobs=jobs)))
        if size + _FRAME_SLACK > connection.max_frame:
            raise ValueError(f"the flow's {len(jobs):,} jobs are {size:,} bytes encoded; the "
                             f"broker's frame limit is {connection.max_frame:,} bytes (a flow is "
                             f"added in one frame)")
        reply = await connection.request(lambda req: AddFlow(req=req, jobs=jobs))
        assert isinstance(reply, Added)
        return added_flow(reply.ids, parents)

    async def children_results(self, job_id: int) -> dict[int, Any]:
        """The results of the children of job ``job_id`` that completed, by child id (empty
        for a job that is not the parent of a flow)."""
        return await children_results(await self._open(), job_id)

    async def children_errors(self, job_id: int) -> dict[int, JobError]:
        """The errors of the children of job ``job_id`` that failed for good or were removed
        before they finished (those its parent ignored, or that failed or removed it), by child
        id."""
        return await children_errors(await self._open(), job_id)

    async def promote(self, job_id: int) -> None:
        """Make a delayed job waiting now (``InvalidState`` when it is not delayed)."""
        await self._ok(functools.partial(_message, Promote, job=job_id))

    async def remove(self, job_id: int) -> None:
        """Remove a job that is not active (``InvalidState`` when it is)."""
        await self._ok(functools.partial(_message, Remove, job=job_id))

    async def pause(self, queue: str) -> None:
        """Stop deliveries from ``queue``; it still accepts jobs. Survives a broker restart."""
        check_queue(queue)
        await self._ok(functools.partial(_message, Pause, queue=queue, paused=True))

    async def resume(self, queue: str) -> None:
        """Restart deliveries from a paused queue."""
        check_queue(queue)
        await self._ok(functools.partial(_message, Pause, queue=queue, paused=False))

    async def set_limits(self, queue: str, *, rate: int | None = None, per: float = 1.0,
                         concurrency: int | None = None, group_concurrency: int | None = None,
                         group_rate: int | None = None, group_per: float = 1.0) -> None:
        """Limit how fast ``queue``'s jobs start, replacing its limits: at most ``rate`` starts
        in any ``per`` seconds (evenly spaced, one every ``per / rate`` seconds), and at most
        ``concurrency`` of its jobs active at once across all workers (None: no such limit).
        The ``group_`` limits hold for each group of the queue on its own: at most
        ``group_concurrency`` of a group's jobs active at once, at most ``group_rate`` of them
        starting in any ``group_per`` seconds. Lowering them stops nothing that runs. Survives
        a broker restart.

        Raises:
            ValueError: a count is not between 1 and ``MAX_LIMIT``, or a period is not a
                number of seconds above 0 (at most ``MAX_LIMIT_PERIOD``).
        """
        check_queue(queue)
        try:
            limits = msgspec.convert({"rate": rate, "per": per, "concurrency": concurrency,
                                      "group_concurrency": group_concurrency,
                                      "group_rate": group_rate, "group_per": group_per},
                                     QueueLimits)
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid limits: {exc}") from None
        await self._ok(functools.partial(_message, SetLimits, queue=queue, limits=limits))

    async def set_schedule(self, id: str, queue: str, data: object, *,
                           every: float | None = None, cron: str | None = None,
                           tz: str = "UTC", missed: Literal["once", "skip"] = "once",
                           name: str | None = None, priority: int = 0, attempts: int = 1,
                           backoff: float | Backoff | None = None,
                           timeout: float | None = None) -> None:
        """Create or replace (by ``id``) a schedule that adds a job with ``data`` and the job
        options to ``queue`` every ``every`` seconds (from now), or at the times the cron
        expression ``cron`` matches in the IANA time zone ``tz``. Due times that pass while the
        broker is down give one job when it starts (``missed="once"``) or none (``"skip"``).
        Exactly one job is made per due time, across restarts.

        Raises:
            ValueError: not exactly one of ``every`` and ``cron``, or an option out of range.
            TypeError: ``data`` cannot be serialized.
            ProtocolViolation: the broker refused the cron expression or the time zone.
        """
        check_queue(queue)
        if (every is None) == (cron is None):
            raise ValueError("give exactly one of every and cron")
        job = job_def(encode_value(data, "job payload"), name=name, priority=priority,
                      attempts=attempts, backoff=backoff, timeout=timeout)
        schedule = Schedule(id=id, queue=queue, data=job.data, name=job.name,
                            priority=job.priority, attempts=job.attempts, backoff=job.backoff,
                            timeout=job.timeout, every=every, cron=cron, tz=tz, missed=missed)
        try:
            # Checked as the broker decodes it, so that a bad value is this caller's error.
            msgspec.msgpack.decode(msgspec.msgpack.encode(schedule), type=Schedule)
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid schedule: {exc}") from None
        await self._ok(functools.partial(_message, SetSchedule, schedule=schedule))

    async def remove_schedule(self, id: str) -> None:
        """Remove the schedule ``id``; its jobs already made stay.

        Raises:
            UnknownJob: there is no schedule ``id``.
        """
        await self._ok(functools.partial(_message, RemoveSchedule, id=id))

    async def schedules(self) -> list[ScheduleInfo]:
        """Every schedule of the queues the user may read, by id, with its next due time."""
        connection = await self._open()
        found: list[ScheduleInfo] = []
        while True:
            after = found[-1].schedule.id if found else ""
            reply = await connection.request(
                functools.partial(_message, GetSchedules, after=after))
            assert isinstance(reply, Schedules)
            found += reply.schedules
            if not reply.more or not reply.schedules:
                return found

    async def clear_limits(self, queue: str) -> None:
        """Remove ``queue``'s limits (its groups' too)."""
        check_queue(queue)
        await self._ok(functools.partial(_message, SetLimits, queue=queue,
                                         limits=QueueLimits()))

    async def retry_failed(self, queue: str | None = None, *, job_id: int | None = None) -> int:
        """Put failed jobs (every retained one of ``queue``, or one job) back in line, with
        their attempts renewed; return how many."""
        if (queue is None) == (job_id is None):
            raise ValueError("give either a queue or a job_id")
        if queue is not None:
            check_queue(queue)
        return await self._count(functools.partial(_message, RetryFailed, queue=queue,
                                                   job=job_id))

    async def drain(self, queue: str) -> int:
        """Remove every waiting and delayed job of ``queue``; return how many."""
        check_queue(queue)
        return await self._count(functools.partial(_message, Drain, queue=queue))

    async def clean(self, queue: str, state: JobState | str, older_than: float = 0.0) -> int:
        """Remove ``queue``'s completed or failed jobs finished over ``older_than`` seconds ago."""
        check_queue(queue)
        return await self._count(functools.partial(
            _message, Clean, queue=queue, state=JobState(state), older_than=older_than))

    def events(self, queue: str) -> EventStream:
        """Follow ``queue``'s events live: ``async for event in client.events(queue)``.

        Events are buffered from the moment this is called (from when the new connection is open,
        when it is called while reconnecting); ``aclose()`` (or ``async with``) stops the watch.
        A reader that falls too far behind gets ``EventsLost``. A lost connection ends the
        stream with ``ConnectionLost``: call ``events()`` again to go on following the queue.
        """
        check_queue(queue)
        connection = self.connection
        if self._closed:
            raise _closed_error()
        stream = EventStream(queue, self._unwatch)
        if connection.failure is None:
            self._watch(connection, stream)
        elif not self.reconnect:
            raise connection.failure
        else:
            self._waiting_streams.add(stream)
            self._start_reconnect().add_done_callback(
                functools.partial(self._watch_when_reconnected, stream))
        return stream

    def _watch(self, connection: Connection, stream: EventStream) -> None:
        streams = self._streams.setdefault(stream.queue, [])
        streams.append(stream)
        if len(streams) == 1:
            future = connection.request(functools.partial(_message, Watch, queue=stream.queue))
            future.add_done_callback(functools.partial(_watch_refused, stream))

    def _watch_when_reconnected(self, stream: EventStream,
                                attempt: asyncio.Task[Connection]) -> None:
        if stream not in self._waiting_streams:
            return  # closed by its reader meanwhile
        self._waiting_streams.discard(stream)
        if attempt.cancelled():
            stream.fail(_closed_error())
        elif (error := attempt.exception()) is not None:
            stream.fail(error)
        elif (failure := attempt.result().failure) is not None:
            stream.fail(failure)
        else:
            self._watch(attempt.result(), stream)

    async def _unwatch(self, stream: EventStream) -> None:
        self._waiting_streams.discard(stream)
        streams = self._streams.get(stream.queue, [])
        if stream not in streams:
            return  # its connection is gone, and the watch with it
        streams.remove(stream)
        if not streams:
            del self._streams[stream.queue]
            connection = self._connection
            if connection is not None and connection.failure is None:
                await connection.request(functools.partial(
                    _message, Watch, queue=stream.queue, watching=False))

    def _push(self, message: Push) -> None:
        if isinstance(message, Events):
            for stream in self._streams.get(message.queue, ()):
                stream.feed(message.events)

    def _lost(self, connection: Connection, error: ConveyorError) -> None:
        if connection is not self._connection:
            return  # its streams ended when the new connection was adopted
        streams, self._streams = self._streams, {}
        for queue_streams in streams.values():
            for stream in queue_streams:
                stream.fail(error)

    async def _ok(self, build: functools.partial[Any]) -> None:
        reply = await (await self._open()).request(build)
        assert isinstance(reply, Ok)

    async def _count(self, build: functools.partial[Any]) -> int:
        reply = await (await self._open()).request(build)
        assert isinstance(reply, Count)
        return reply.count

    # Reading.

    async def get_job(self, job_id: int) -> JobInfo | None:
        """The job's record, or None when the broker does not retain it."""
        reply = await (await self._open()).request(lambda req: GetJob(req=req, job=job_id))
        assert isinstance(reply, JobReply)
        return None if reply.job is None else decode_job(reply.job)

    async def find_job(self, key: str) -> JobInfo | None:
        """The retained job whose idempotency key (``id=`` option) is ``key``, or None."""
        reply = await (await self._open()).request(lambda req: FindJob(req=req, key=key))
        assert isinstance(reply, JobReply)
        return None if reply.job is None else decode_job(reply.job)

    async def wait(self, job_id: int, timeout: float | None = None) -> Any:
        """Wait until the job finishes; return its result or raise ``JobFailed``.

        The broker replies when the job completes or fails: nothing polls. Raises
        ``TimeoutError`` (naming the job) after ``timeout`` seconds, ``UnknownJob`` when no such
        job is retained, and ``ConnectionLost`` when the connection drops meanwhile. On a timeout
        or a cancellation the wait is withdrawn at the broker (``unwait``).
        """
        connection = await self._open()
        sent: list[int] = []

        def build(req: int) -> Wait:
            sent.append(req)
            return Wait(req=req, job=job_id)

        future = connection.request(build)
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                reply = await future
        except TimeoutError:
            if deadline.expired():
                raise TimeoutError(f"job {job_id} did not finish within {timeout:g} s") from None
            raise
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
        check_queue(queue)
        reply = await (await self._open()).request(functools.partial(
            _message, GetJobs, queue=queue, state=JobState(state), offset=offset, limit=limit))
        assert isinstance(reply, Jobs)
        return [decode_job(job) for job in reply.jobs]

    async def queues(self) -> list[QueueSummary]:
        """Every queue the broker knows, by name, with its counts, whether it is paused, and
        its rates (jobs a second added, completed and failed over the last minute)."""
        connection = await self._open()
        found: list[QueueSummary] = []
        while True:
            after = found[-1].name if found else ""
            reply = await connection.request(functools.partial(_message, GetQueues, after=after))
            assert isinstance(reply, QueueList)
            found += reply.queues
            if not reply.more or not reply.queues:
                return found

    async def stats(self, queue: str | None = None) -> Stats:
        """The broker's statistics: every queue's counts, rates and duration histograms, the
        connected workers, and the broker's own figures. ``queue`` narrows the queues and the
        workers to that one queue. Only what the user may read is included.

        The broker answers a page of queues at a time; this asks for every page (so the
        queues of a large broker are read over several requests, not at one instant)."""
        if queue is not None:
            check_queue(queue)
        first = reply = await self._stats_page(queue, "")
        queues = list(reply.queues)
        while reply.more and reply.queues:
            reply = await self._stats_page(queue, reply.queues[-1].name)
            queues += reply.queues
        return msgspec.structs.replace(first, queues=queues, more=False)

    async def _stats_page(self, queue: str | None, after: str) -> Stats:
        reply = await (await self._open()).request(
            lambda req: GetStats(req=req, queue=queue, after=after))
        assert isinstance(reply, Stats)
        return reply

    async def counts(self, queue: str) -> dict[str, int]:
        """Jobs waiting, active and delayed now, completed and failed since the queue was created,
        the workers subscribed now, and the parents of flows waiting for their children
        (``waiting-children``)."""
        check_queue(queue)
        reply = await (await self._open()).request(
            lambda req: GetCounts(req=req, queue=queue))
        assert isinstance(reply, Counts)
        return {
            "waiting": reply.waiting,
            "active": reply.active,
            "delayed": reply.delayed,
            "completed": reply.completed,
            "failed": reply.failed,
            "workers": reply.workers,
            "waiting-children": reply.waiting_children,
        }


async def connect(url: str | None = None, *, name: str = "client",
                  timeout: float = 10.0, reconnect: bool = True,
                  ssl: _ssl.SSLContext | None = None) -> Client:
    """Open a ``Client`` connected to ``url`` (raises as ``Client.connect`` does)."""
    return await Client(url, name=name, timeout=timeout, reconnect=reconnect,
                        ssl=ssl).connect()


def _closed_error() -> ConveyorError:
    return ConveyorError("the client is closed")


async def _added_ids(sent: list[tuple[asyncio.Future[Reply], int]], total: int,
                     unsent: ConveyorError | None = None) -> list[int]:
    """The ids the ``added`` replies to a bulk add's frames (reply, jobs) carry, in order.

    ``total`` jobs were given; those past the frames were not sent, for the reason ``unsent``.
    Every reply is awaited, also after a failed frame (a later one may still be added). Raises
    ``BulkAddFailed`` when some frames were added and some not, else the first frame's error.
    """
    ids: list[int | None] = []
    error: ConveyorError | None = None
    try:
        for future, count in sent:
            try:
                reply = await future
            except ConveyorError as exc:
                error = error or exc
                ids += [None] * count
                continue
            assert isinstance(reply, Added)
            ids += reply.ids
    finally:
        for future, _ in sent:
            future.cancel()
    error = error or unsent
    if error is None:
        return cast(list[int], ids)
    ids += [None] * (total - len(ids))
    if all(job_id is None for job_id in ids):
        raise error
    raise BulkAddFailed(error, ids) from error


def _add(queue: str, jobs: list[JobDef], req: int) -> Add:
    return Add(req=req, queue=queue, jobs=jobs)


def _message(kind: type[Any], req: int, **fields: Any) -> Any:
    return kind(req=req, **fields)


def _watch_refused(stream: EventStream, future: asyncio.Future[Reply]) -> None:
    if not future.cancelled() and future.exception() is not None:
        stream.fail(future.exception() or ConnectionLost("watch refused"))
