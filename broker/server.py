"""The broker: accepts connections, applies requests to the queue state, and flushes once per pass.

Every request is applied as it is read; everything it causes goes out in the *flush* that runs
once per event-loop pass:

1. the pass's log records are written, in one write;
2. jobs whose records are durable (written; under ``--fsync always``, fsynced) join their queues
   and their producers get ``added``;
3. dispatch: waiting jobs are leased to subscribers with free credit;
4. ``finished`` replies go to the waiters of jobs that completed or failed;
5. one write per connection.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import os
import time
from typing import Final

from conveyor.protocol import (
    DEFAULT_MAX_FRAME,
    Ack,
    Add,
    Added,
    ClientMessage,
    Closing,
    Deliver,
    Delivery,
    ErrorCode,
    Event,
    Events,
    Extend,
    Fail,
    Finished,
    Hello,
    Ok,
    Progress,
    ProtocolError,
    Release,
    SetWindow,
    Subscribe,
    Wait,
    Watch,
    check_queue_name,
)

from ._queues import Queues
from .control import answer
from .jobs import DEFAULT_KEEP, DEFAULT_MAX_REDELIVERIES, Job
from .log import (
    DEFAULT_COMPACT_FLOOR,
    DEFAULT_COMPACT_RATIO,
    DiskFull,
    FsyncPolicy,
    Log,
    LogError,
    Recovery,
)
from .records import JobsAdded, JobsAddedWithOptions, Record
from .session import Session

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_PORT",
    "DEFAULT_SHUTDOWN_GRACE",
    "Broker",
    "BrokerStatus",
]

DEFAULT_PORT: Final = 7400
DEFAULT_MAX_CONNECTIONS: Final = 10_000
DEFAULT_SHUTDOWN_GRACE: Final = 5.0
"""Seconds a graceful shutdown waits for active jobs to be reported."""
_DELIVER_SLACK: Final = 1024
"""Room kept in a ``deliver`` frame for its envelope and queue name (bytes)."""
_DELIVERY_OVERHEAD: Final = 48
"""Most bytes one delivery adds to a ``deliver`` frame beyond its payload."""
_EVENT_BACKLOG: Final = 16 * 1024 * 1024
"""Bytes of unsent output past which an event watcher is cut off."""
_DISK_RETRY: Final = 0.5
"""Seconds between attempts to write records held back by a full disk."""

log = logging.getLogger("broker")

_Accepted = tuple[Session, int, list[Job]]
"""An ``add`` whose jobs wait for their record to be durable: (producer, request id, jobs)."""


class BrokerStatus(enum.Enum):
    """Lifecycle of a ``Broker``."""

    NEW = "new"
    SERVING = "serving"
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"


class Broker:
    """A Conveyor broker, embeddable in any asyncio program.

    With ``data_dir`` every change is written to an append-only log there and replayed by
    ``start()``; without it, queues live in memory only.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        data_dir: str | os.PathLike[str] | None = None,
        fsync: FsyncPolicy | str = FsyncPolicy.EVERYSEC,
        salvage: bool = False,
        compact_floor: int = DEFAULT_COMPACT_FLOOR,
        compact_ratio: float = DEFAULT_COMPACT_RATIO,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_redeliveries: int = DEFAULT_MAX_REDELIVERIES,
        keep_completed: int = DEFAULT_KEEP,
        keep_failed: int = DEFAULT_KEEP,
        keep_age: float | None = None,
        shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
    ) -> None:
        self.host = host
        self.port = port
        """The bound port once started (useful with ``port=0``)."""
        self.max_frame = max_frame
        self.max_connections = max_connections
        self.shutdown_grace = shutdown_grace
        self.status = BrokerStatus.NEW
        self.log = None if data_dir is None else Log(
            data_dir, fsync=FsyncPolicy(fsync), salvage=salvage,
            compact_floor=compact_floor, compact_ratio=compact_ratio,
        )
        self.queues = Queues(max_redeliveries=max_redeliveries, keep_completed=keep_completed,
                             keep_failed=keep_failed, keep_age=keep_age,
                             logged=self.log is not None)
        self.recovery: Recovery | None = None
        """What replaying the log found, once started with a ``data_dir``."""
        self.failure: LogError | None = None
        """Why the broker stopped, when the log failed."""
        self.sessions: set[Session] = set()
        self.dirty: list[Session] = []
        """Sessions with output queued for this pass's flush."""
        self._accepted: list[_Accepted] = []
        self._held_back: list[Record] = []
        """Records a full disk kept out of the log, written first by the next flush."""
        self._durable: list[_Accepted] = []
        self._waiters: dict[int, list[tuple[Session, int]]] = {}
        self._flush_handle: asyncio.Handle | None = None
        self._disk_retry: asyncio.TimerHandle | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._tick_at = 0.0
        self._watchers: dict[str, set[Session]] = {}
        self._dispatching = True
        self._server: asyncio.Server | None = None
        self._background: asyncio.Task[None] | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # Lifecycle.

    async def start(self) -> None:
        """Replay the log (with a ``data_dir``), then bind and start accepting connections."""
        if self.status is not BrokerStatus.NEW:
            raise RuntimeError(f"broker is {self.status.value}")
        self._loop = loop = asyncio.get_running_loop()
        self._stopped = loop.create_future()
        if self.log is not None:
            self.recovery = self.log.open(self.queues)
        try:
            self._server = await loop.create_server(
                lambda: Session(self), self.host, self.port, reuse_address=True
            )
        except BaseException:
            if self.log is not None:
                await self.log.close()
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        self.status = BrokerStatus.SERVING
        if self.log is not None:
            self._background = loop.create_task(self._run_log(self.log))

    async def serve_forever(self) -> None:
        """Serve until ``close()``; raises ``LogError`` when the log fails."""
        if self._server is None:
            await self.start()
        assert self._stopped is not None
        await asyncio.shield(self._stopped)

    async def close(self) -> None:
        """Shut down gracefully. Idempotent.

        1. Stop accepting connections and new jobs.
        2. Tell every client the broker is closing and stop dispatching.
        3. Give active jobs up to ``shutdown_grace`` seconds to be reported.
        4. Close every connection; jobs still active go back to their queues.
        5. Write and fsync the log, and release the data directory.
        """
        if self.status is not BrokerStatus.SERVING:
            if self.status is BrokerStatus.FAILED:
                await self._release_log()
            return
        self.status = BrokerStatus.CLOSING
        assert self._server is not None
        self._server.close()
        self._dispatching = False
        for session in list(self.sessions):
            session.send(Closing(reason="broker shutting down"))
        self._flush()
        deadline = time.monotonic() + self.shutdown_grace
        while self._active_jobs() and time.monotonic() < deadline and self.failure is None:
            await asyncio.sleep(0.02)
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.close()
        # Closed connections give their jobs back (re-queue records) as their callbacks run.
        deadline = time.monotonic() + 1.0
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        self._flush()
        for handle in (self._disk_retry, self._tick_handle):
            if handle is not None:
                handle.cancel()
        self._disk_retry = self._tick_handle = None
        if self._held_back:
            log.error("%d changes could not be written to the log (disk full); after a restart "
                      "their jobs are as they were before them", len(self._held_back))
        await self._release_log()
        await self._server.wait_closed()
        if self.status is BrokerStatus.CLOSING:
            self.status = BrokerStatus.CLOSED
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    async def _release_log(self) -> None:
        background, self._background = self._background, None
        if background is not None:
            background.cancel()
            # Waited on, not awaited: our own cancellation, if any, still propagates.
            await asyncio.wait([background])
        if self.log is not None:
            try:
                await self.log.close()
            except LogError as exc:
                self._fail(exc)

    async def _run_log(self, log_: Log) -> None:
        try:
            await log_.run(self.queues)
        except LogError as exc:
            self._fail(exc)

    def _fail(self, error: LogError) -> None:
        """The log failed: acknowledge nothing more, drop every connection, stop serving.

        ``serve_forever`` raises ``error``; the CLI prints it as its last line.
        """
        if self.failure is not None:
            return
        self.failure = error
        self.status = BrokerStatus.FAILED
        self._accepted.clear()
        self._durable.clear()
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            session.closing = True
            if session.transport is not None:
                session.transport.abort()
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_exception(error)

    def _active_jobs(self) -> int:
        return sum(queue.active for queue in self.queues.queues.values())

    # Sessions.

    def connected(self, session: Session) -> None:
        """A connection was accepted."""
        if self.status is not BrokerStatus.SERVING:
            session.abort(ProtocolError(ErrorCode.SHUTTING_DOWN, "broker is shutting down"))
        elif len(self.sessions) >= self.max_connections:
            session.abort(ProtocolError(
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"connection limit of {self.max_connections} reached",
            ))
        else:
            self.sessions.add(session)

    def disconnected(self, session: Session) -> None:
        """A connection closed: its jobs go back to their queues, its waits are dropped."""
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        for job_id in session.waits:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters[:] = [w for w in waiters if w[0] is not session]
                if not waiters:
                    del self._waiters[job_id]
        for queue in list(session.watching):
            self._watch(session, queue, False)
        if self.status is not BrokerStatus.FAILED:
            self.queues.drop(session, time.time())
            self.schedule_flush()

    # Requests.

    def handle(self, session: Session, message: ClientMessage) -> None:
        """Apply one request from ``session``."""
        now = time.time()
        queues = self.queues
        match message:
            case Ack(job=job_id, lease=lease, result=result):
                queues.ack(session, job_id, lease, result, now)
            case Add(req=req, queue=queue, jobs=jobs):
                if self.status is not BrokerStatus.SERVING:
                    session.refuse(ProtocolError(ErrorCode.SHUTTING_DOWN,
                                                 "broker is shutting down", req=req))
                elif self._valid_queue(session, req, queue):
                    created = queues.create(queue, jobs, now)
                    self._accepted.append((session, req, created))
            case Fail(job=job_id, lease=lease, error=error, retry=retry, delay=delay):
                queues.fail(session, job_id, lease, error, now, retry=retry, delay=delay)
            case Release(job=job_id, lease=lease):
                queues.release(session, job_id, lease, now)
            case Progress(job=job_id, lease=lease, progress=value):
                queues.progress(session, job_id, lease, value, now)
            case Extend(queue=queue):
                queues.extend(session, queue, now)
            case Subscribe(req=req, queue=queue, window=window, lease=lease):
                if self._valid_queue(session, req, queue):
                    queues.subscribe(session, queue, window, lease)
                    session.send(Ok(req=req))
            case SetWindow(req=req, queue=queue, window=window):
                consumer = queues.consumer(session, queue)
                if consumer is None:
                    session.refuse(ProtocolError(
                        ErrorCode.INVALID_QUEUE, f"not subscribed to queue {queue!r}", req=req))
                else:
                    queues.subscribe(session, queue, window, consumer.lease)
                    session.send(Ok(req=req))
            case Wait(req=req, job=job_id):
                self._wait(session, req, job_id)
            case Watch(req=req, queue=queue, watching=watching):
                if self._valid_queue(session, req, queue):
                    self._watch(session, queue, watching)
                    session.send(Ok(req=req))
            case Hello():
                session.refuse(ProtocolError(ErrorCode.INVALID_FIELD, "already greeted"))
            case _:
                reply = answer(queues, message, now)
                if isinstance(reply, ProtocolError):
                    session.refuse(reply)
                else:
                    session.send(reply)
        self.schedule_flush()

    def _watch(self, session: Session, queue: str, watching: bool) -> None:
        watchers = self._watchers.setdefault(queue, set())
        if watching:
            watchers.add(session)
            session.watching.add(queue)
            self.queues.watched.add(queue)
        else:
            watchers.discard(session)
            session.watching.discard(queue)
            if not watchers:
                del self._watchers[queue]
                self.queues.watched.discard(queue)

    def _valid_queue(self, session: Session, req: int, queue: str) -> bool:
        problem = check_queue_name(queue)
        if problem is not None:
            session.refuse(ProtocolError(ErrorCode.INVALID_QUEUE, problem, req=req))
        return problem is None

    def _wait(self, session: Session, req: int, job_id: int) -> None:
        job = self.queues.jobs.get(job_id)
        if job is None:
            session.refuse(ProtocolError(ErrorCode.UNKNOWN_JOB, f"no job {job_id}", req=req))
        elif job.finished_at is not None:
            session.send(Finished(req=req, job=job.info()))
        else:
            self._waiters.setdefault(job_id, []).append((session, req))
            session.waits.add(job_id)

    # The flush.

    def schedule_flush(self) -> None:
        """Run the flush once, at the start of the next loop pass."""
        if self._flush_handle is None and self._loop is not None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if self.status in (BrokerStatus.FAILED, BrokerStatus.CLOSED):
            return
        queues = self.queues
        out = queues.take_outbox()
        accepted, self._accepted = self._accepted, []
        # 1. The log write.
        if self.log is not None and (out.records or self._held_back):
            try:
                accepted = self._write_log(self.log, self._held_back + out.records, accepted)
            except LogError as exc:
                self._fail(exc)
                return
        # 2. Durable jobs join their queues; their producers learn they were accepted.
        if self._durable:
            accepted += self._durable
            self._durable = []
        for session, req, jobs in accepted:
            queues.enqueue(jobs)
            session.send(Added(req=req, ids=[job.id for job in jobs]))
        # 3. Dispatch.
        now = time.time()
        if self._dispatching:
            for consumer, leased in queues.dispatch(now):
                owner = consumer.owner
                assert isinstance(owner, Session)
                self._deliver(owner, consumer.queue.name, leased)
        # 4. Waiters of finished jobs, and watchers of events.
        out.extend(queues.take_outbox())
        if out.finished:
            self._notify(out.finished)
        if out.removed:
            self._notify_removed(out.removed)
        if out.events:
            self._publish(out.events)
        # 5. One write per connection.
        for session in self.dirty:
            session.flush()
        self.dirty.clear()
        # 6. The next deadline (a delayed job due, a lease running out).
        self._arm(queues.next_deadline(), now)

    def _deliver(self, session: Session, queue: str, jobs: list[Job]) -> None:
        """Send ``jobs`` in as few ``deliver`` messages as the frame limit allows."""
        budget = self.max_frame - _DELIVER_SLACK
        batch: list[Delivery] = []
        size = 0
        for job in jobs:
            job_size = len(job.data) + _DELIVERY_OVERHEAD
            if batch and size + job_size > budget:
                session.send(Deliver(queue=queue, jobs=batch))
                batch, size = [], 0
            options = job.options
            batch.append(Delivery(job=job.id, lease=job.lease, attempt=job.attempt, data=job.data,
                                  timeout=options.timeout, attempts=options.attempts,
                                  name=options.name))
            size += job_size
        session.send(Deliver(queue=queue, jobs=batch))

    def _write_log(self, log_: Log, records: list[Record],
                   accepted: list[_Accepted]) -> list[_Accepted]:
        """Write this pass's records; return the adds that are durable already."""
        self._held_back = []
        try:
            position = log_.append(records)
        except DiskFull as exc:
            # Adds are refused; every other change is kept and written once there is room.
            for session, req, jobs in accepted:
                self.queues.discard(jobs)
                session.refuse(ProtocolError(ErrorCode.DISK_FULL, str(exc), req=req))
            kept: list[Record] = [r for r in records
                                  if not isinstance(r, JobsAdded | JobsAddedWithOptions)]
            if kept:
                try:
                    log_.append(kept)
                except DiskFull:
                    self._held_back = kept
                    self._retry_disk()
            return []
        if log_.policy is FsyncPolicy.ALWAYS and accepted:
            log_.when_synced(position, functools.partial(self._synced, accepted))
            return []
        return accepted

    def _synced(self, accepted: list[_Accepted]) -> None:
        self._durable += accepted
        self.schedule_flush()

    def _retry_disk(self) -> None:
        if self._disk_retry is None and self._loop is not None:
            def retry() -> None:
                self._disk_retry = None
                self.schedule_flush()
            self._disk_retry = self._loop.call_later(_DISK_RETRY, retry)

    def _publish(self, events: list[tuple[str, Event]]) -> None:
        by_queue: dict[str, list[Event]] = {}
        for queue, event in events:
            by_queue.setdefault(queue, []).append(event)
        for queue, batch in by_queue.items():
            for session in list(self._watchers.get(queue, ())):
                transport = session.transport
                if transport is not None and transport.get_write_buffer_size() > _EVENT_BACKLOG:
                    self._watch(session, queue, False)
                    session.abort(ProtocolError(
                        ErrorCode.SLOW_CONSUMER,
                        f"watcher of queue {queue!r} fell over {_EVENT_BACKLOG} bytes behind",
                    ))
                else:
                    session.send(Events(queue=queue, events=batch))

    def _arm(self, deadline: float | None, now: float) -> None:
        """Have ``_tick`` run at ``deadline`` (Unix seconds), unless it runs sooner already."""
        if deadline is None or self._loop is None:
            return
        if self._tick_handle is not None:
            if self._tick_at <= deadline:
                return
            self._tick_handle.cancel()
        self._tick_at = deadline
        self._tick_handle = self._loop.call_at(self._loop.time() + max(0.0, deadline - now),
                                               self._tick)

    def _tick(self) -> None:
        self._tick_handle = None
        if self.status is BrokerStatus.SERVING:
            self.queues.tick(time.time())
        self.schedule_flush()

    def _notify_removed(self, job_ids: list[int]) -> None:
        for job_id in job_ids:
            for session, req in self._waiters.pop(job_id, ()):
                session.waits.discard(job_id)
                session.refuse(ProtocolError(
                    ErrorCode.UNKNOWN_JOB, f"job {job_id} was removed before it finished",
                    req=req))

    def _notify(self, jobs: list[Job]) -> None:
        waiters = self._waiters
        if not waiters:
            return
        for job in jobs:
            for session, req in waiters.pop(job.id, ()):
                session.waits.discard(job.id)
                session.send(Finished(req=req, job=job.info()))
