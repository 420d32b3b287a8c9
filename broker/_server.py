"""The broker: accepts connections, runs the flush once per loop pass and the deadline timer,
and steps through its lifecycle.

What requests do is ``handle``'s (``_requests``) and what goes out at the end of a pass is
``flush``'s (``_flush``); both work on the broker's ``Core`` and do no I/O. The server owns the
sockets, the loop's handles and the log's background task.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import ssl as _ssl
import time
from typing import Final

from conveyor.protocol import (
    DEFAULT_MAX_FRAME,
    BrokerStats,
    ClientMessage,
    Closing,
    ErrorCode,
    ProtocolError,
    Subscription,
    WorkerInfo,
)

from ._auth import DEFAULT_FAILURE_DELAY, Gate
from ._clock import SYSTEM_CLOCK, Clock
from ._compaction import DEFAULT_COMPACT_FLOOR, DEFAULT_COMPACT_RATIO
from ._core import Core
from ._errors import LogError
from ._exposure import binding_problem, insecure_warning, peer_allowed
from ._flush import flush
from ._jobs import DEFAULT_KEEP, DEFAULT_MAX_REDELIVERIES
from ._log import DEFAULT_DISK_RESERVE, FsyncPolicy, Log
from ._queues import Queues
from ._recovery import Recovery
from ._requests import handle
from ._session import Session
from ._stats import memory, version
from ._users import Users, UsersError
from ._watchers import DEFAULT_MAX_WAITS

__all__ = [
    "DEFAULT_FRAME_TIMEOUT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
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
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
"""Seconds a new connection has to send its ``hello``."""
DEFAULT_FRAME_TIMEOUT: Final = 30.0
"""Seconds a connection may sit in the middle of a frame."""
_DISK_RETRY: Final = 0.5
"""Seconds between attempts to write records held back by a full disk."""
_LONGEST_SLEEP: Final = 3600.0
"""Seconds the timer sleeps at most: a deadline further off is looked at again then."""

log = logging.getLogger("broker")


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
    ``start()``; without it, queues live in memory only. ``clock`` is where the broker reads
    the wall time (kept and shown) and the monotonic time (leases and timers); tests give their
    own.

    ``ssl``: a server context (``conveyor broker --tls-cert ...``) to speak TLS with. Without
    ``users`` the broker serves this machine only: it refuses to bind to an address other than
    loopback and turns away connections from other addresses, unless ``insecure`` (logged as a
    warning at every start).

    ``stats=False`` (``--no-stats``) leaves out the statistics counted per try: the tries
    started and retried, and how long they waited and ran (``get_stats`` then reports them as 0
    and nil). Counts, rates of jobs added, completed and failed, workers and the broker's own
    figures remain.
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
        disk_reserve: int = DEFAULT_DISK_RESERVE,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_redeliveries: int = DEFAULT_MAX_REDELIVERIES,
        keep_completed: int = DEFAULT_KEEP,
        keep_failed: int = DEFAULT_KEEP,
        keep_age: float | None = None,
        shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        frame_timeout: float = DEFAULT_FRAME_TIMEOUT,
        max_waits: int = DEFAULT_MAX_WAITS,
        users: str | os.PathLike[str] | Users | None = None,
        auth_failure_delay: float = DEFAULT_FAILURE_DELAY,
        clock: Clock = SYSTEM_CLOCK,
        ssl: _ssl.SSLContext | None = None,
        insecure: bool = False,
        stats: bool = True,
    ) -> None:
        """Raises ``ValueError`` for a ``host`` other than loopback without ``users`` or
        ``insecure``."""
        problem = binding_problem(host, users=users, insecure=insecure)
        if problem is not None:
            raise ValueError(problem)
        self.host = host
        self.port = port
        """The bound port once started (useful with ``port=0``)."""
        self.max_frame = max_frame
        self.max_connections = max_connections
        self.shutdown_grace = shutdown_grace
        self.handshake_timeout = handshake_timeout
        """Seconds a new connection has to send its ``hello`` before it is closed."""
        self.frame_timeout = frame_timeout
        """Seconds a connection may sit in the middle of a frame before it is closed (and a
        connection the broker closed may take to read what it was sent before it is dropped)."""
        self.users_path = None if users is None or isinstance(users, Users) else users
        """The users file, read again by ``reload_users`` (SIGHUP)."""
        if users is not None and not isinstance(users, Users):
            users = Users.load(users)
        self.gate = Gate(users, failure_delay=auth_failure_delay)
        """Who may connect: without users, anyone who reaches the port (loopback only unless
        the operator says ``--insecure``)."""
        self.ssl = ssl
        """The TLS context connections are served with, or None for plain TCP."""
        self.insecure = insecure
        """Whether a broker without users may serve other machines."""
        self.status = BrokerStatus.NEW
        self.log = None if data_dir is None else Log(
            data_dir, fsync=FsyncPolicy(fsync), salvage=salvage,
            compact_floor=compact_floor, compact_ratio=compact_ratio, disk_reserve=disk_reserve,
        )
        self.clock = clock
        """Wall time for what is kept and shown, monotonic time for leases and timers."""
        self.queues = Queues(max_redeliveries=max_redeliveries, keep_completed=keep_completed,
                             keep_failed=keep_failed, keep_age=keep_age,
                             logged=self.log is not None, clock=clock, stats=stats)
        self.core = Core(self.queues, self.log, max_frame=max_frame, max_waits=max_waits)
        self.core.observed = self
        self.started_at = 0.0
        """When the broker started (Unix seconds)."""
        self._started_mono = 0.0
        self._connections = 0
        """Connections accepted so far: the number of the last one."""
        self._now = self.queues.timeline.now
        """The wall time now (``Queues.now``), looked up once."""
        self._pass_now: float | None = None
        """The wall time of this loop pass, read by its first request (or its timer) and
        forgotten by the flush that ends the pass: requests read together are applied at one
        time, and the clocks (~0.2 us, as much as the rest of an ack) are not read once per
        job."""
        self.recovery: Recovery | None = None
        """What replaying the log found, once started with a ``data_dir``."""
        self.failure: LogError | None = None
        """Why the broker stopped, when the log failed."""
        self.sessions: set[Session] = set()
        self._deferred: list[tuple[Session, ClientMessage | None]] = []
        """What arrived while requests were held back (``_held``; None: the connection closed):
        applied, in order, once the log has room."""
        self._paused: set[Session] = set()
        """Connections not read from meanwhile."""
        self._flush_handle: asyncio.Handle | None = None
        self._disk_retry: asyncio.TimerHandle | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._tick_at = 0.0
        self._sweep_handle: asyncio.TimerHandle | None = None
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
        self.started_at = self.clock.wall()
        self._started_mono = self.clock.monotonic()
        if self.log is not None:
            self.queues.now()  # replay arms the deadlines of delayed jobs against the clock now
            self.recovery = self.log.open(self.queues)
            # The log remembers queues that were in use once; the unused ones are forgotten.
            self.queues.forget_unused()
        try:
            self._server = await loop.create_server(
                lambda: Session(self), self.host, self.port, reuse_address=True, ssl=self.ssl
            )
        except BaseException:
            if self.log is not None:
                await self.log.close()
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        if self.insecure and self.gate.users is None:
            log.warning("%s", insecure_warning(self.host, self.port))
        self.status = BrokerStatus.SERVING
        self._sweep()
        if self.log is not None:
            self.log.on_room = self.schedule_flush
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
        4. Write and fsync the log: adds waiting for an fsync get their ``added``.
        5. Close every connection; jobs still active go back to their queues. Write and fsync
           that too, and release the data directory.
        """
        if self.status is not BrokerStatus.SERVING:
            if self.status is BrokerStatus.FAILED:
                await self._release_log()
            return
        self.status = BrokerStatus.CLOSING
        self.core.accepting = False
        assert self._server is not None
        self._server.close()
        self.core.dispatching = False
        for session in list(self.sessions):
            session.send(Closing(reason="broker shutting down"))
        self._flush()
        deadline = time.monotonic() + self.shutdown_grace
        while self._active_jobs() and time.monotonic() < deadline and self.failure is None:
            await asyncio.sleep(0.02)
        self._flush()
        if self.log is not None and self.failure is None:
            try:
                await self.log.sync()
            except LogError as exc:
                self._fail(exc)
            self._flush()
        for session in list(self.sessions):
            session.close()
        # Closed connections give their jobs back (re-queue records) as their callbacks run.
        deadline = time.monotonic() + 1.0
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        self._flush()
        for timer in (self._disk_retry, self._tick_handle, self._sweep_handle):
            if timer is not None:
                timer.cancel()
        self._disk_retry = self._tick_handle = self._sweep_handle = None
        if self.core.held_back:
            log.error("%d changes could not be written to the log (disk full); after a restart "
                      "their jobs are as they were before them", len(self.core.held_back))
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
        self.core.accepting = False
        self.core.accepted.clear()
        self.core.durable.clear()
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            session.kill()
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_exception(error)

    def _active_jobs(self) -> int:
        return sum(queue.active for queue in self.queues.queues.values())

    # Sessions (the ``Host`` of each).

    def reload_users(self) -> bool:
        """Read the users file again (SIGHUP). Connections whose user still has every right it
        had, and may still log in the way it did, stay as they are; the others are closed. A
        file that cannot be read changes nothing. Return whether the file was taken."""
        if self.users_path is None:
            log.warning("no users file to reload (the broker was started without --users)")
            return False
        try:
            users = Users.load(self.users_path)
        except UsersError as exc:
            log.error("kept the users as they were: %s", exc)
            return False
        self.gate.users = users
        closed = 0
        for session in list(self.sessions):
            old = session.user
            if old is None or session.closing:
                continue
            new = users.get(old.name)
            if new is None:
                why = f"user {old.name!r} was removed from the users file"
            elif not new.keeps_rights_of(old):
                why = f"the rights of user {old.name!r} were reduced; connect again"
            elif not new.may_log_in(by_certificate=session.by_certificate):
                way = "a client certificate" if session.by_certificate else "a secret"
                why = f"user {old.name!r} may no longer log in with {way}"
            else:
                session.user = new
                continue
            closed += 1
            session.abort(ProtocolError(ErrorCode.FORBIDDEN, why))
        log.warning("reloaded the users file %s: %d users, %d connections closed",
                    self.users_path, len(users.users), closed)
        return True

    def connected(self, session: Session) -> None:
        """A connection was accepted."""
        if self.status is not BrokerStatus.SERVING:
            session.abort(ProtocolError(ErrorCode.SHUTTING_DOWN, "broker is shutting down"))
        elif not self._may_serve(session):
            session.abort(ProtocolError(
                ErrorCode.AUTH_REQUIRED,
                "this broker has no users file and serves connections from this machine only",
            ))
        elif len(self.sessions) >= self.max_connections:
            session.abort(ProtocolError(
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"connection limit of {self.max_connections} reached",
            ))
        else:
            self._connections += 1
            session.number = self._connections
            self.sessions.add(session)

    def _may_serve(self, session: Session) -> bool:
        transport = session.transport
        peer = None if transport is None else transport.get_extra_info("peername")
        if not isinstance(peer, tuple):
            return True  # not an IP connection (a Unix socket): this machine's
        return peer_allowed(str(peer[0]), users=self.gate.users, insecure=self.insecure)

    def disconnected(self, session: Session) -> None:
        """A connection closed: its jobs go back to their queues, its waits are dropped."""
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        self.core.waiters.drop(session)
        self.core.watchers.drop(session)
        self._paused.discard(session)
        if self.status is BrokerStatus.FAILED:
            return
        if self._held():
            self._deferred.append((session, None))
        else:
            self.queues.drop(session, self.queues.now())
            self.schedule_flush()

    def received(self, session: Session, message: ClientMessage) -> None:
        """Apply one request from ``session``; what it causes goes out in the pass's flush."""
        core = self.core
        if core.held_back or (self.log is not None and self.log.exhausted):  # ``_held()``
            self._defer(session, message)
            return
        now = self._pass_now
        if now is None:
            now = self._pass_now = self._now()
        handle(core, session, message, now)
        if self._flush_handle is None:
            self.schedule_flush()

    def _held(self) -> bool:
        """Whether requests are held back: the log's disk is full and its reserve used up, so
        no change may be made that the log might not get."""
        return bool(self.core.held_back) or (self.log is not None and self.log.exhausted)

    def _defer(self, session: Session, message: ClientMessage) -> None:
        """Apply nothing more (and read no more from this connection) until the log has room
        again: no change is ever made that the log does not get."""
        self._deferred.append((session, message))
        if session.transport is not None:
            # Again each time: the session resumes reading on its own when its output drains.
            session.transport.pause_reading()
            self._paused.add(session)

    def _apply_deferred(self) -> None:
        deferred, self._deferred = self._deferred, []
        now = self._now()
        for session, message in deferred:
            if message is None:
                self.queues.drop(session, now)
            else:
                handle(self.core, session, message, now)
        for session in self._paused:
            if not session.closing and session.transport is not None:
                session.transport.resume_reading()
        self._paused.clear()
        self.schedule_flush()

    def wrote(self, session: Session) -> None:
        """``session`` has output for this pass."""
        self.core.dirty.append(session)
        self.schedule_flush()

    # Statistics (the ``Observed`` of the core).

    def broker_stats(self, queues: Queues) -> BrokerStats:
        """The broker's own figures, for ``get_stats``."""
        log_ = self.log
        return BrokerStats(
            version=version(), started_at=self.started_at,
            uptime=max(0.0, self.clock.monotonic() - self._started_mono),
            connections=len(self.sessions), queues=len(queues.queues), jobs=len(queues.jobs),
            memory=memory(), log_bytes=0 if log_ is None else log_.size,
            live_bytes=queues.live_bytes, compactions=0 if log_ is None else log_.compactions,
            fsync_time=None if log_ is None else log_.fsync_time.read(time.monotonic()))

    def workers(self) -> list[WorkerInfo]:
        """Every connection subscribed to at least one queue, by number."""
        assert self._loop is not None
        # Sessions keep event loop times: shown as wall times, as of now.
        since = self.clock.wall() - self._loop.time()
        subscriptions = self.queues.dispatcher.subscriptions
        workers = []
        for session in sorted(self.sessions, key=lambda session: session.number):
            consumers = subscriptions(session)
            if not consumers:
                continue
            workers.append(WorkerInfo(
                id=session.number, name=session.client, host=session.client_host,
                pid=session.client_pid, address=session.peer,
                user="" if session.user is None else session.user.name,
                connected_at=since + session.opened_at, last_heard=since + session.heard_at,
                subscriptions=[Subscription(queue=c.queue.name, window=c.window,
                                            held=len(c.held)) for c in consumers]))
        return workers

    # The flush and the timer.

    def schedule_flush(self) -> None:
        """Run the flush once, at the start of the next loop pass."""
        if self._flush_handle is None and self._loop is not None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        now, self._pass_now = self._pass_now, None
        if self.status in (BrokerStatus.FAILED, BrokerStatus.CLOSED):
            return
        try:
            flush(self.core, self._now() if now is None else now, self.schedule_flush)
        except LogError as exc:
            self._fail(exc)
            return
        if self.core.held_back:
            self._retry_disk()
        if self._held():
            # Nothing more is applied, the timer's changes neither, until the log has room.
            return
        if self._deferred:
            self._apply_deferred()
        self._arm(self.queues.next_deadline())

    def _retry_disk(self) -> None:
        if self._disk_retry is None and self._loop is not None:
            def retry() -> None:
                self._disk_retry = None
                self.schedule_flush()
            self._disk_retry = self._loop.call_later(_DISK_RETRY, retry)

    def _arm(self, deadline: float | None) -> None:
        """Have ``_tick`` run at ``deadline`` (on the clock's monotonic time), unless it runs
        sooner already."""
        if deadline is None or self._loop is None:
            return
        if self._tick_handle is not None:
            if self._tick_at <= deadline:
                return
            self._tick_handle.cancel()
        self._tick_at = deadline
        sleep = min(max(0.0, deadline - self.clock.monotonic()), _LONGEST_SLEEP)
        self._tick_handle = self._loop.call_at(self._loop.time() + sleep, self._tick)

    def _sweep(self) -> None:
        """Close the connections that overran the handshake or frame timeout; then again, a
        few times per timeout (one timer for every connection, not one per connection)."""
        self._sweep_handle = None
        if self._loop is None or self.status not in (BrokerStatus.SERVING,
                                                     BrokerStatus.CLOSING):
            return
        now = self._loop.time()
        handshake, frame = self.handshake_timeout, self.frame_timeout
        for session in list(self.sessions):
            session.expire(now, handshake_timeout=handshake, frame_timeout=frame)
        every = min(1.0, max(0.01, min(handshake, frame) / 4))
        self._sweep_handle = self._loop.call_later(every, self._sweep)

    def _tick(self) -> None:
        self._tick_handle = None
        if self._held():
            return  # armed again once the log has room (``_flush``)
        if self.status is BrokerStatus.SERVING:
            # The pass's time: the flush this asks for (and requests read meanwhile) use it too.
            now = self._pass_now = self._now()
            self.queues.tick(now)
        self.schedule_flush()
