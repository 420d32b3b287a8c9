"""Clients waiting for a job to finish (``wait``), and clients watching a queue's events
(``watch``): who they are, and what the flush sends them."""

from __future__ import annotations

from typing import Final

import msgspec

from conveyor.protocol import HEADER_SIZE, ErrorCode, Event, Events, Finished, ProtocolError

from ._jobs import Job
from ._peer import Peer

__all__ = ["EVENT_BACKLOG", "Waiters", "Watchers"]

EVENT_BACKLOG: Final = 16 * 1024 * 1024
"""Bytes of unsent output past which an event watcher is cut off."""

_encoder: Final = msgspec.msgpack.Encoder()


class Waiters:
    """Pending ``wait`` requests, by job."""

    __slots__ = ("_by_peer", "_waiting")

    def __init__(self) -> None:
        self._waiting: dict[int, list[tuple[Peer, int]]] = {}
        """For each job waited on: (peer, request id), in the order they asked."""
        self._by_peer: dict[Peer, set[int]] = {}
        """The jobs each peer waits on."""

    def add(self, peer: Peer, req: int, job_id: int) -> None:
        """``peer`` waits (request ``req``) for job ``job_id`` to finish."""
        self._waiting.setdefault(job_id, []).append((peer, req))
        self._by_peer.setdefault(peer, set()).add(job_id)

    def drop(self, peer: Peer) -> None:
        """Forget every wait of ``peer`` (its connection is gone)."""
        for job_id in self._by_peer.pop(peer, ()):
            waiters = self._waiting.get(job_id)
            if waiters is not None:
                waiters[:] = [w for w in waiters if w[0] is not peer]
                if not waiters:
                    del self._waiting[job_id]

    def finished(self, jobs: list[Job]) -> None:
        """``jobs`` completed or failed: their waiters get ``finished``."""
        if not self._waiting:
            return
        for job in jobs:
            for peer, req in self._take(job.id):
                peer.send(Finished(req=req, job=job.info()))

    def removed(self, job_ids: list[int]) -> None:
        """The jobs were removed before they finished: their waiters get an error."""
        for job_id in job_ids:
            for peer, req in self._take(job_id):
                peer.refuse(ProtocolError(
                    ErrorCode.UNKNOWN_JOB, f"job {job_id} was removed before it finished",
                    req=req))

    def _take(self, job_id: int) -> list[tuple[Peer, int]]:
        waiters = self._waiting.pop(job_id, [])
        for peer, _ in waiters:
            waits = self._by_peer.get(peer)
            if waits is not None:
                waits.discard(job_id)
                if not waits:
                    del self._by_peer[peer]
        return waiters


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
            size = HEADER_SIZE + len(_encoder.encode(message))
            for peer in list(watchers):
                backlog = peer.backlog()
                if backlog and backlog + size > self.backlog_limit:
                    self.drop(peer)
                    peer.cut_off(ProtocolError(
                        ErrorCode.SLOW_CONSUMER,
                        f"watcher of queue {queue!r} fell over {self.backlog_limit} bytes behind",
                    ))
                else:
                    peer.send(message)
