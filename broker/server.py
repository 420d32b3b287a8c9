"""The broker: accepts connections, applies requests to the queue state, and flushes once per pass.

Every request is applied as it is read; everything it causes (replies, deliveries, notifications)
goes out in the *flush* that runs once per event-loop pass:

1. producers' ``added`` replies, now that their jobs are accepted;
2. dispatch: waiting jobs are leased to subscribers with free credit;
3. ``finished`` replies to the waiters of jobs that completed or failed;
4. one write per connection.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import Final

from protocol import (
    DEFAULT_MAX_FRAME,
    Ack,
    Add,
    Added,
    ClientMessage,
    Counts,
    Deliver,
    Delivery,
    ErrorCode,
    Fail,
    Finished,
    GetCounts,
    GetJob,
    Hello,
    JobReply,
    Ok,
    Progress,
    ProtocolError,
    Release,
    SetWindow,
    Subscribe,
    Wait,
    check_queue_name,
)

from .queues import DEFAULT_KEEP, DEFAULT_MAX_REDELIVERIES, Job, Queues
from .session import Session

__all__ = ["DEFAULT_MAX_CONNECTIONS", "DEFAULT_PORT", "Broker", "BrokerStatus"]

DEFAULT_PORT: Final = 7400
DEFAULT_MAX_CONNECTIONS: Final = 10_000

log = logging.getLogger("broker")


class BrokerStatus(enum.Enum):
    """Lifecycle of a ``Broker``."""

    NEW = "new"
    SERVING = "serving"
    CLOSING = "closing"
    CLOSED = "closed"


class Broker:
    """A Conveyor broker, embeddable in any asyncio program."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_redeliveries: int = DEFAULT_MAX_REDELIVERIES,
        keep_completed: int = DEFAULT_KEEP,
        keep_failed: int = DEFAULT_KEEP,
    ) -> None:
        self.host = host
        self.port = port
        """The bound port once started (useful with ``port=0``)."""
        self.max_frame = max_frame
        self.max_connections = max_connections
        self.status = BrokerStatus.NEW
        self.queues = Queues(max_redeliveries=max_redeliveries, keep_completed=keep_completed,
                             keep_failed=keep_failed)
        self.sessions: set[Session] = set()
        self.dirty: list[Session] = []
        """Sessions with output queued for this pass's flush."""
        self._accepted: list[tuple[Session, Added]] = []
        self._waiters: dict[int, list[tuple[Session, int]]] = {}
        self._flush_handle: asyncio.Handle | None = None
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # Lifecycle.

    async def start(self) -> None:
        """Bind and start accepting connections."""
        if self.status is not BrokerStatus.NEW:
            raise RuntimeError(f"broker is {self.status.value}")
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: Session(self), self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.status = BrokerStatus.SERVING
        log.debug("listening on %s:%d", self.host, self.port)

    async def serve_forever(self) -> None:
        """Serve until ``close()``."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        try:
            await self._server.serve_forever()
        except asyncio.CancelledError:
            if self.status is BrokerStatus.SERVING:
                raise

    async def close(self) -> None:
        """Stop accepting, close every connection and wait until they are gone. Idempotent."""
        if self.status in (BrokerStatus.CLOSING, BrokerStatus.CLOSED):
            return
        self.status = BrokerStatus.CLOSING
        if self._server is not None:
            # 1. Stop accepting.
            self._server.close()
            # 2. Send what is owed, then close every connection.
            self._flush()
            for session in list(self.sessions):
                if session.transport is not None:
                    session.transport.close()
            # 3. Wait for the listening socket and the connections to be released.
            await self._server.wait_closed()
        self.status = BrokerStatus.CLOSED

    # Sessions.

    def connected(self, session: Session) -> None:
        """A connection was accepted."""
        if len(self.sessions) >= self.max_connections or self.status is not BrokerStatus.SERVING:
            session.abort(ProtocolError(
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"connection limit of {self.max_connections} reached",
            ))
            return
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
                if self._valid_queue(session, req, queue):
                    ids = queues.add(queue, [job.data for job in jobs], now)
                    self._accepted.append((session, Added(req=req, ids=ids)))
            case Fail(job=job_id, lease=lease, error=error):
                queues.fail(session, job_id, lease, error, now)
            case Release(job=job_id, lease=lease):
                queues.release(session, job_id, lease)
            case Progress(job=job_id, lease=lease, progress=value):
                queues.progress(session, job_id, lease, value)
            case Subscribe(req=req, queue=queue, window=window):
                if self._valid_queue(session, req, queue):
                    queues.subscribe(session, queue, window)
                    session.send(Ok(req=req))
            case SetWindow(req=req, queue=queue, window=window):
                if queues.consumer(session, queue) is None:
                    session.refuse(ProtocolError(
                        ErrorCode.INVALID_QUEUE, f"not subscribed to queue {queue!r}", req=req))
                else:
                    queues.subscribe(session, queue, window)
                    session.send(Ok(req=req))
            case GetJob(req=req, job=job_id):
                job = queues.jobs.get(job_id)
                session.send(JobReply(req=req, job=None if job is None else job.info()))
            case Wait(req=req, job=job_id):
                self._wait(session, req, job_id)
            case GetCounts(req=req, queue=queue):
                if self._valid_queue(session, req, queue):
                    session.send(Counts(req=req, **queues.counts(queue)))
            case Hello():
                session.refuse(ProtocolError(ErrorCode.INVALID_FIELD, "already greeted"))
        self.schedule_flush()

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
        # 1. Producers learn their jobs were accepted.
        for session, reply in self._accepted:
            session.send(reply)
        self._accepted.clear()
        # 2. Dispatch.
        for consumer, jobs in self.queues.dispatch():
            owner = consumer.owner
            assert isinstance(owner, Session)
            owner.send(Deliver(
                queue=consumer.queue.name,
                jobs=[Delivery(job=j.id, lease=j.lease, attempt=j.attempt, data=j.data)
                      for j in jobs],
            ))
        # 3. Waiters of finished jobs.
        if self.queues.finished:
            self._notify(self.queues.finished)
            self.queues.finished.clear()
        # 4. One write per connection.
        for session in self.dirty:
            session.flush()
        self.dirty.clear()

    def _notify(self, jobs: list[Job]) -> None:
        waiters = self._waiters
        if not waiters:
            return
        for job in jobs:
            for session, req in waiters.pop(job.id, ()):
                session.waits.discard(job.id)
                session.send(Finished(req=req, job=job.info()))
