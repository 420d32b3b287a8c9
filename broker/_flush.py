"""The flush: everything the requests of one loop pass caused goes out at the end of the pass.

1. The pass's log records are written, in one write (after any a full disk held back).
2. Jobs whose records are durable (written; under ``--fsync always``, fsynced) join their
   queues, and their producers get ``added``. An add whose idempotency key matched a job still
   waiting for its fsync waits for that fsync too.
3. Dispatch: waiting jobs are leased to subscribers with free credit, in ``deliver`` messages.
4. Waiters of jobs that finished (or were removed) are answered; watchers get the events.
5. One write per connection.
6. Unused queues are forgotten, once there are many (``Queues.sweep``).

The server runs it once per pass; the tests call it to drive a ``Core`` as the server does.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Final, cast

from conveyor.protocol import (
    DELIVERY_MAX_OVERHEAD,
    MAX_GROUP,
    Added,
    Deliver,
    Delivery,
    ErrorCode,
    ProtocolError,
    array_header_size,
    deliver_size,
    delivery_options_bound,
    delivery_size,
)

from ._core import Accepted, Core
from ._errors import DiskFull
from ._jobs import DEFAULT_OPTIONS, Job, JobOptions
from ._log import FsyncPolicy, Log
from ._peer import Peer
from ._records import FlowAdded, JobsAdded, JobsAddedWithOptions, Record

__all__ = ["flush"]


_ADDS: Final = (JobsAdded, JobsAddedWithOptions, FlowAdded)
"""The records that add jobs (refused when the disk is full)."""


def _nothing() -> None:
    pass


def flush(core: Core, now: float, wake: Callable[[], None] = _nothing) -> None:
    """Run the flush at time ``now``. ``wake`` asks for another flush soon (an fsync covered
    adds). Raises ``LogError`` when the log fails: the broker must stop."""
    queues = core.queues
    fired = queues.take_fired()
    if fired:
        # Jobs made by schedules go in line like an add's, once durable; nobody is told.
        core.accepted.append((None, 0, fired))
    outbox = queues.take_outbox()
    accepted, core.accepted = core.accepted, []
    # 1. The log write.
    if core.log is not None and (outbox.records or core.held_back or accepted):
        accepted = _write(core, core.log, outbox.records, accepted, wake)
    # 2. Durable jobs join their queues; their producers learn they were accepted.
    if core.durable:
        accepted += core.durable
        core.durable = []
    for peer, req, jobs in accepted:
        queues.enqueue(jobs)
        if peer is not None:
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
    """Write the pass's records; return the adds that are durable already.

    An add is durable once the records of all its jobs are: its own, and those of the earlier
    adds whose idempotency keys it matched (under ``--fsync always`` one of those may still wait
    for its fsync: the add then waits for that same fsync).

    A full disk refuses adds (until the log holds its reserve again); every other change is
    written into the reserve the log gives up for it. Only when nothing is left to give up are
    records held back, and the server applies nothing more until they are written.
    """
    held, core.held_back = core.held_back, []
    if log.full and accepted:
        accepted = _refuse_adds(core, records, accepted, DiskFull(
            f"no room for the log in {log.directory}: adds are refused until compaction or "
            f"freed space make room"))
        records = _not_adds(records)
    records = held + records
    if records:
        try:
            log.append(records)
        except DiskFull as exc:
            accepted = _refuse_adds(core, records, accepted, exc)
            core.held_back = _write_into_reserve(log, _not_adds(records))
    if log.policy is not FsyncPolicy.ALWAYS or not accepted:
        return accepted
    # Jobs join their queues once durable: an add with a job still pending waits for an fsync
    # of everything written so far, which covers that job's record wherever it was written.
    ready: list[Accepted] = []
    waiting: list[Accepted] = []
    for add in accepted:
        (waiting if any(job.pending for job in add[2]) else ready).append(add)
    if waiting:
        core.unsynced += len(waiting)
        log.when_synced(log.written, functools.partial(_synced, core, waiting, wake))
    return ready


def _not_adds(records: list[Record]) -> list[Record]:
    return [r for r in records if not isinstance(r, _ADDS)]


def _write_into_reserve(log: Log, records: list[Record]) -> list[Record]:
    """Write ``records`` into the room the log's reserve gives up (the log is full from now on);
    return them if even that had no room."""
    while True:
        room = log.make_room()
        if not records:
            return []
        try:
            log.append(records)
            return []
        except DiskFull:
            if not room:
                return records


def _refuse_adds(core: Core, records: list[Record], accepted: list[Accepted],
                 error: DiskFull) -> list[Accepted]:
    """The pass's records found no room: refuse the adds that created jobs in this pass, and
    forget those jobs (only those: a job an earlier pass wrote stays, even if an add of this
    pass matched its idempotency key). Return the adds that created nothing."""
    # Ids only grow: every job created in this pass has an id from its first add record on.
    first_new = min((r.first_id for r in records
                     if isinstance(r, _ADDS)),
                    default=core.queues.last_id + 1)
    kept: list[Accepted] = []
    doomed: dict[int, Job] = {}
    for add in accepted:
        peer, req, jobs = add
        new = [job for job in jobs if job.pending and job.id >= first_new]
        if not new:
            kept.append(add)
            continue
        for job in new:
            # A job appears twice when a bulk add repeats its idempotency key.
            doomed[job.id] = job
        if peer is not None:
            peer.refuse(ProtocolError(ErrorCode.DISK_FULL, str(error), req=req))
    core.queues.discard(list(doomed.values()))
    return kept


def _synced(core: Core, accepted: list[Accepted], wake: Callable[[], None]) -> None:
    core.unsynced -= len(accepted)
    core.durable += accepted
    wake()


def _deliver(peer: Peer, queue: str, jobs: list[Job], max_frame: int) -> None:
    """Send ``jobs`` in as few ``deliver`` messages as the frame limit allows, none over it.

    While a batch is far from the limit, each job counts as an upper bound of its delivery's
    size (cheap: this runs for every job); once the bound says the next job may not fit, the
    batch is sized exactly (``conveyor.protocol.delivery_size``) and filled exactly to the limit.
    ``add`` refused any job whose delivery alone could not fit. Mostly all the jobs fit by far
    (a credit window's worth of small jobs): a bound of the whole batch says so first.
    """
    budget = max_frame - deliver_size(queue, 0, 0) + 1  # room for the array: header and items
    count = len(jobs)
    # Jobs without a group (most) have no group to bound: a tighter bound, so that a large
    # window of small jobs still takes this path.
    overhead = DELIVERY_MAX_OVERHEAD if any(map(_GROUP, jobs)) else _UNGROUPED_OVERHEAD
    if (sum(map(len, map(_DATA, jobs))) + count * overhead
            + array_header_size(count) <= budget):
        peer.send(Deliver(queue=queue, jobs=[
            Delivery(job=job.id, lease=job.lease, attempt=job.attempt, data=job.data,
                     timeout=options.timeout, attempts=options.attempts, name=options.name,
                     group=options.group)
            for job in jobs for options in (job.options,)]))
        return
    batch: list[Delivery] = []
    size = 0
    exact = False
    for job in jobs:
        options = job.options
        delivery = Delivery(job=job.id, lease=job.lease, attempt=job.attempt, data=job.data,
                            timeout=options.timeout, attempts=options.attempts,
                            name=options.name, group=options.group)
        if exact:
            job_size = _size(delivery)
        elif options is DEFAULT_OPTIONS:
            job_size = len(job.data) + _BOUND
        else:
            job_size = len(job.data) + _BOUND + _options_bound(options)
        if batch and size + job_size + 5 > budget:
            if not exact:
                # Near the limit: from here on, count exactly.
                exact = True
                size = sum(map(_size, batch))
                job_size = _size(delivery)
            if size + job_size + array_header_size(len(batch) + 1) > budget:
                peer.send(Deliver(queue=queue, jobs=batch))
                batch, size, exact = [], 0, False
                job_size = len(job.data) + _BOUND + _options_bound(options)
        batch.append(delivery)
        size += job_size
    peer.send(Deliver(queue=queue, jobs=batch))


_DATA: Final = operator.attrgetter("data")
_GROUP: Final = operator.attrgetter("group")
_UNGROUPED_OVERHEAD: Final = DELIVERY_MAX_OVERHEAD - delivery_options_bound(
    group=chr(0x10FFFF) * MAX_GROUP)
"""``DELIVERY_MAX_OVERHEAD`` less the largest group: the most a delivery of a job of no group
adds beyond its payload."""

_BOUND: Final = delivery_size(1 << 62, 1 << 62, 1_000_000, 0)
"""The most bytes a delivery takes besides its payload and options (with the widest ints)."""


def _options_bound(options: JobOptions) -> int:
    """The most bytes a delivery's ``timeout``, ``attempts`` and ``name`` take, when set."""
    return delivery_options_bound(timeout=options.timeout, attempts=options.attempts,
                                  name=options.name, group=options.group)


def _size(delivery: Delivery) -> int:
    return delivery_size(delivery.job, delivery.lease, delivery.attempt, len(delivery.data),
                         timeout=delivery.timeout, attempts=delivery.attempts,
                         name=delivery.name, group=delivery.group)
