"""The flush: everything the requests of one loop pass caused goes out at the end of the pass.

1. The pass's log records are written, in one write (after any a full disk held back).
2. Jobs whose records are durable (written; under ``--fsync always``, fsynced) join their
   queues, and their producers get ``added``.
3. Dispatch: waiting jobs are leased to subscribers with free credit, in ``deliver`` messages.
4. Waiters of jobs that finished (or were removed) are answered; watchers get the events.
5. One write per connection.
6. Unused queues are forgotten, once there are many (``Queues.sweep``).

The server runs it once per pass; the tests call it to drive a ``Core`` as the server does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Final, cast

from conveyor.protocol import Added, Deliver, Delivery, ErrorCode, ProtocolError

from ._core import Accepted, Core
from ._errors import DiskFull
from ._jobs import Job
from ._log import FsyncPolicy, Log
from ._peer import Peer
from ._records import JobsAdded, JobsAddedWithOptions, Record

__all__ = ["flush"]

_DELIVER_SLACK: Final = 1024
"""Room kept in a ``deliver`` frame for its envelope and queue name (bytes)."""
_DELIVERY_OVERHEAD: Final = 48
"""Most bytes one delivery adds to a ``deliver`` frame beyond its payload."""


def _nothing() -> None:
    pass


def flush(core: Core, now: float, wake: Callable[[], None] = _nothing) -> None:
    """Run the flush at time ``now``. ``wake`` asks for another flush soon (an fsync covered
    adds). Raises ``LogError`` when the log fails: the broker must stop."""
    queues = core.queues
    outbox = queues.take_outbox()
    accepted, core.accepted = core.accepted, []
    # 1. The log write.
    if core.log is not None and (outbox.records or core.held_back):
        accepted = _write(core, core.log, core.held_back + outbox.records, accepted, wake)
    # 2. Durable jobs join their queues; their producers learn they were accepted.
    if core.durable:
        accepted += core.durable
        core.durable = []
    for peer, req, jobs in accepted:
        queues.enqueue(jobs)
        peer.send(Added(req=req, ids=[job.id for job in jobs]))
    # 3. Dispatch.
    if core.dispatching:
        for consumer, leased in queues.dispatch(now):
            # Subscriptions are made by ``handle``, for its peer.
            _deliver(cast(Peer, consumer.owner), consumer.queue.name, leased, core.max_frame)
    # 4. Waiters of finished jobs, and watchers of events (enqueue and dispatch made more).
    outbox.extend(queues.take_outbox())
    if outbox.finished:
        core.waiters.finished(outbox.finished)
    if outbox.removed:
        core.waiters.removed(outbox.removed)
    if outbox.events:
        core.watchers.publish(outbox.events)
    # 5. One write per connection.
    for peer in core.dirty:
        peer.flush()
    core.dirty.clear()
    # 6. Unused queues.
    queues.sweep()


def _write(core: Core, log: Log, records: list[Record], accepted: list[Accepted],
           wake: Callable[[], None]) -> list[Accepted]:
    """Write the pass's records; return the adds that are durable already."""
    core.held_back = []
    try:
        position = log.append(records)
    except DiskFull as exc:
        # Adds are refused; every other change is kept and written once there is room.
        for peer, req, jobs in accepted:
            core.queues.discard(jobs)
            peer.refuse(ProtocolError(ErrorCode.DISK_FULL, str(exc), req=req))
        kept: list[Record] = [r for r in records
                              if not isinstance(r, JobsAdded | JobsAddedWithOptions)]
        if kept:
            try:
                log.append(kept)
            except DiskFull:
                core.held_back = kept
        return []
    if log.policy is FsyncPolicy.ALWAYS and accepted:
        core.unsynced += len(accepted)
        log.when_synced(position, functools.partial(_synced, core, accepted, wake))
        return []
    return accepted


def _synced(core: Core, accepted: list[Accepted], wake: Callable[[], None]) -> None:
    core.unsynced -= len(accepted)
    core.durable += accepted
    wake()


def _deliver(peer: Peer, queue: str, jobs: list[Job], max_frame: int) -> None:
    """Send ``jobs`` in as few ``deliver`` messages as the frame limit allows."""
    budget = max_frame - _DELIVER_SLACK
    batch: list[Delivery] = []
    size = 0
    for job in jobs:
        job_size = len(job.data) + _DELIVERY_OVERHEAD
        if batch and size + job_size > budget:
            peer.send(Deliver(queue=queue, jobs=batch))
            batch, size = [], 0
        options = job.options
        batch.append(Delivery(job=job.id, lease=job.lease, attempt=job.attempt, data=job.data,
                              timeout=options.timeout, attempts=options.attempts,
                              name=options.name))
        size += job_size
    peer.send(Deliver(queue=queue, jobs=batch))
