"""Clients waiting for a job to finish (``wait``), and clients watching a queue's events
(``watch``): who they are, and what the flush sends them."""

from __future__ import annotations

from typing import Final

import msgspec

from conveyor.protocol import (
    HEADER_SIZE,
    Error,
    ErrorCode,
    Event,
    Events,
    Finished,
    ProtocolError,
)

from ._jobs import Job
from ._peer import Peer

__all__ = ["DEFAULT_MAX_WAITS", "EVENT_BACKLOG", "Waiters", "Watchers"]

EVENT_BACKLOG: Final = 16 * 1024 * 1024
"""Bytes of unsent output past which an event watcher is cut off."""

DEFAULT_MAX_WAITS: Final = 10_000
"""The most ``wait`` requests one connection may have pending."""

_encoder: Final = msgspec.msgpack.Encoder()


class Waiters:
    """Pending ``wait`` requests, by job and by connection.

    The waits of one connection on one job share one entry (their request ids, in the order
    asked), and a connection has at most ``limit`` pending. When a job finishes, one ``JobInfo``
    answers every wait on it, and many replies owed to one connection are produced only as it
    reads them (``Peer.send_later``), so 5,000 waits on one large job do not queue 5,000 copies.
    """

    __slots__ = ("_by_peer", "_counts", "_waiting", "limit")

    def __init__(self, *, limit: int = DEFAULT_MAX_WAITS) -> None:
        self.limit = limit
        """The most waits one connection may have pending."""
        self._waiting: dict[int, dict[Peer, list[int]]] = {}
        """For each job waited on: each waiting peer's request ids, in the order asked."""
        self._by_peer: dict[Peer, dict[int, int]] = {}
        """For each peer: the jobs it waits on, and how many waits on each."""
        self._counts: dict[Peer, int] = {}
        """For each peer: how many waits it has pending."""

    def pending(self, peer: Peer) -> int:
        """How many waits ``peer`` has pending."""
        return self._counts.get(peer, 0)

    def add(self, peer: Peer, req: int, job_id: int) -> bool:
        """``peer`` waits (request ``req``) for job ``job_id`` to finish; False, and nothing
        changes, when ``peer`` has ``limit`` waits pending already."""
        count = self._counts.get(peer, 0)
        if count >= self.limit:
            return False
        self._counts[peer] = count + 1
        self._waiting.setdefault(job_id, {}).setdefault(peer, []).append(req)
        jobs = self._by_peer.setdefault(peer, {})
        jobs[job_id] = jobs.get(job_id, 0) + 1
        return True

    def withdraw(self, peer: Peer, job_id: int, req: int) -> None:
        """Forget ``peer``'s wait ``req`` on job ``job_id``, if it is pending (``unwait``)."""
        waiting = self._waiting.get(job_id)
        reqs = None if waiting is None else waiting.get(peer)
        if reqs is None or req not in reqs:
            return
        reqs.remove(req)
        if not reqs:
            del self._waiting[job_id][peer]
            if not self._waiting[job_id]:
                del self._waiting[job_id]
        self._forget(peer, job_id, 1)

    def drop(self, peer: Peer) -> None:
        """Forget every wait of ``peer`` (its connection is gone)."""
        self._counts.pop(peer, None)
        for job_id in self._by_peer.pop(peer, {}):
            waiting = self._waiting.get(job_id)
            if waiting is not None:
                waiting.pop(peer, None)
                if not waiting:
                    del self._waiting[job_id]

    def finished(self, jobs: list[Job]) -> None:
        """``jobs`` completed or failed: their waiters get ``finished``."""
        if not self._waiting:
            return
        for job in jobs:
            waiting = self._take(job.id)
            if waiting:
                info = job.info()
                for peer, reqs in waiting.items():
                    if len(reqs) == 1:
                        peer.send(Finished(req=reqs[0], job=info))
                    else:
                        peer.send_later(Finished(req=req, job=info) for req in reqs)

    def removed(self, job_ids: list[int]) -> None:
        """The jobs were removed before they finished: their waiters get an error."""
        if not self._waiting:
            return
        for job_id in job_ids:
            waiting = self._take(job_id)
            if waiting is None:
                continue
            text = f"job {job_id} was removed before it finished"
            for peer, reqs in waiting.items():
                peer.send_later(Error(req=req, code=ErrorCode.UNKNOWN_JOB, message=text)
                                for req in reqs)

    def _take(self, job_id: int) -> dict[Peer, list[int]] | None:
        """The waiters of ``job_id``, no longer waiting; None if it had none."""
        waiting = self._waiting.pop(job_id, None)
        if waiting is not None:
            for peer, reqs in waiting.items():
                self._forget(peer, job_id, len(reqs))
        return waiting

    def _forget(self, peer: Peer, job_id: int, count: int) -> None:
        left = self._counts[peer] - count
        if left:
            self._counts[peer] = left
        else:
            del self._counts[peer]
        jobs = self._by_peer[peer]
        left = jobs[job_id] - count
        if left:
            jobs[job_id] = left
        else:
            del jobs[job_id]
            if not jobs:
                del self._by_peer[peer]


class Watchers:
    """Peers watching queues; a watcher that falls too far behind is cut off."""

    __slots__ = ("_by_peer", "_watchers", "backlog_limit", "watched")

    def __init__(self, watched: set[str], *, backlog_limit: int = EVENT_BACKLOG) -> None:
        self.watched = watched
        """The queues with at least one watcher: the state machine collects their events."""
        self.backlog_limit = backlog_limit
        """Bytes of unsent output past which a watcher is cut off."""
        self._watchers: dict[str, set[Peer]] = {}
        self._by_peer: dict[Peer, set[str]] = {}

    def watch(self, peer: Peer, queue: str, watching: bool) -> None:
        """Start (or stop) sending ``queue``'s events to ``peer``."""
        if watching:
            self._watchers.setdefault(queue, set()).add(peer)
            self._by_peer.setdefault(peer, set()).add(queue)
            self.watched.add(queue)
            return
        watchers = self._watchers.get(queue)
        if watchers is not None:
            watchers.discard(peer)
            if not watchers:
                del self._watchers[queue]
                self.watched.discard(queue)
        queues = self._by_peer.get(peer)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._by_peer[peer]

    def drop(self, peer: Peer) -> None:
        """Stop every watch of ``peer`` (its connection is gone)."""
        for queue in list(self._by_peer.get(peer, ())):
            self.watch(peer, queue, False)

    def publish(self, events: list[tuple[str, Event]]) -> None:
        """Send ``events`` to their queues' watchers, one ``events`` message per queue.

        A watcher that would then owe more than ``backlog_limit`` bytes is cut off: its
        connection is dropped at once, with everything queued for it, rather than closed after
        what it cannot read (which would hold that memory for as long as it does not read). A
        watcher that owes nothing gets the batch whatever its size.
        """
        by_queue: dict[str, list[Event]] = {}
        for queue, event in events:
            by_queue.setdefault(queue, []).append(event)
        for queue, batch in by_queue.items():
            watchers = self._watchers.get(queue)
            if not watchers:
                continue
            message = Events(queue=queue, events=batch)
            size: int | None = None  # measured only for a watcher that owes something already
            for peer in list(watchers):
                backlog = peer.backlog()
                if backlog:
                    if size is None:
                        size = HEADER_SIZE + len(_encoder.encode(message))
                    if backlog + size > self.backlog_limit:
                        self.drop(peer)
                        peer.cut_off(ProtocolError(
                            ErrorCode.SLOW_CONSUMER,
                            f"watcher of queue {queue!r} fell over {self.backlog_limit} bytes "
                            f"behind"))
                        continue
                peer.send(message)
