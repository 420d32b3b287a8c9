"""Statistics: what a ``get_stats`` request reads of the queues, the connections and the log.

Reading them changes nothing. The figures that must be counted as jobs move (rates, histograms)
are counted by the state machine as it moves them; this module only puts them together.
"""

from __future__ import annotations

import functools
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Iterable
from typing import Final, Protocol, TypeVar

import msgspec

from conveyor.protocol import (
    BrokerStats,
    Histogram,
    QueueStats,
    Rates,
    Stats,
    WorkerInfo,
    array_header_size,
)

from ._groups import GroupedLine
from ._jobs import NO_LIMITS, Queue
from ._queues import Queues
from ._rates import Rate
from ._users import Permission, User

__all__ = ["STATS_PAGE", "UNKNOWN_VERSION", "Observed", "Unobserved", "collect", "fitting",
           "memory", "version"]

UNKNOWN_VERSION: Final = "0+unknown"
"""The version reported when the package's metadata cannot be read (not installed)."""


class Observed(Protocol):
    """What the server tells the statistics about itself."""

    def broker_stats(self, queues: Queues) -> BrokerStats:
        """The broker's own figures."""

    def workers(self) -> Iterable[WorkerInfo]:
        """Every connection subscribed to a queue, by id."""


class Unobserved:
    """The figures of a broker core driven without a server (tests)."""

    def __init__(self) -> None:
        self.started_at = time.time()

    def broker_stats(self, queues: Queues) -> BrokerStats:
        now = time.time()
        return BrokerStats(version=version(), started_at=self.started_at,
                           uptime=now - self.started_at, connections=0,
                           queues=len(queues.queues), jobs=len(queues.jobs), memory=memory(),
                           live_bytes=queues.live_bytes)

    def workers(self) -> Iterable[WorkerInfo]:
        return ()


@functools.cache
def version() -> str:
    """The installed package's version (read once)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed
    try:
        return installed("conveyor")
    except PackageNotFoundError:
        return UNKNOWN_VERSION


_PAGE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def memory() -> int:
    """The process's resident memory now (bytes): from ``/proc`` where there is one, else the
    most it ever had (``getrusage``)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, else KiB


STATS_PAGE: Final = 1_000
"""Most queues in one ``stats`` reply: a page costs the event loop about 10 ms at most."""
_encoder: Final = msgspec.msgpack.Encoder()
T = TypeVar("T", bound=msgspec.Struct)


def collect(queues: Queues, observed: Observed, user: User | None, queue: str | None,
            now: float, req: int, *, after: str = "", max_frame: int) -> Stats:
    """The ``stats`` reply to ``user``: a page of the queues it may read, narrowed to
    ``queue`` when one is given: those named after ``after``, by name, at most ``STATS_PAGE``
    and no more than fit in a frame of ``max_frame`` bytes (but at least one). The first page
    (``after`` empty) carries the workers, with their subscriptions to those queues. A user
    who may not read every queue gets the broker's version and uptime only."""

    def visible(name: str) -> bool:
        return ((queue is None or name == queue)
                and (user is None or user.may(Permission.READ, name)))

    workers = []
    if not after:
        for worker in observed.workers():
            subscriptions = [s for s in worker.subscriptions if visible(s.queue)]
            if subscriptions:
                workers.append(msgspec.structs.replace(worker, subscriptions=subscriptions))
    names = sorted(name for name in queues.queues if name > after and visible(name))
    figures = observed.broker_stats(queues)
    if user is not None and "*" not in user.rules[Permission.READ]:
        # Jobs, connections, memory and the log move with every queue's work, the queues this
        # user may not read too: only what does not is shown.
        figures = BrokerStats(version=figures.version, started_at=figures.started_at,
                              uptime=figures.uptime, connections=0, queues=0, jobs=0, memory=0)
    reply = Stats(req=req, broker=figures, queues=[], workers=workers, more=True)
    room = max_frame - (len(_encoder.encode(reply)) - 1)  # less the empty list's header
    at = queues.timeline.monotonic(now)
    scheduled = Counter(state.schedule.queue for state in queues.schedules.values())
    summaries = fitting((_queue_stats(queues.queues[name], at, timed=queues.stats,
                                      schedules=scheduled[name])
                         for name in names[:STATS_PAGE]), room)
    return msgspec.structs.replace(reply, queues=summaries, more=len(summaries) < len(names))


def fitting(items: Iterable[T], room: int) -> list[T]:
    """The first of ``items`` that fit, with an array header, in ``room`` bytes of MessagePack
    (at least one, however large)."""
    taken: list[T] = []
    size = 0
    for item in items:
        size += len(_encoder.encode(item))
        if taken and size + array_header_size(len(taken) + 1) > room:
            break
        taken.append(item)
    return taken


def _queue_stats(queue: Queue, at: float, *, timed: bool, schedules: int = 0) -> QueueStats:
    """One queue's figures at monotonic time ``at``; ``timed``: the statistics per try are
    kept (else its histograms are nil)."""
    wait_time: Histogram | None = None
    run_time: Histogram | None = None
    if timed:
        wait_time = queue.wait_time.read(at)
        run_time = queue.run_time.read(at)
    return QueueStats(
        name=queue.name, waiting=len(queue.waiting), active=queue.active,
        delayed=len(queue.delayed), completed=queue.completed, failed=queue.failed,
        workers=len(queue.consumers), paused=queue.paused, added=queue.added,
        started=queue.started, retried=queue.retried,
        added_rate=_rates(queue.added_rate, at), started_rate=_rates(queue.started_rate, at),
        completed_rate=_rates(queue.completed_rate, at),
        failed_rate=_rates(queue.failed_rate, at), retried_rate=_rates(queue.retried_rate, at),
        wait_time=wait_time, run_time=run_time,
        limits=None if queue.limits == NO_LIMITS else queue.limits,
        groups=queue.waiting.groups if isinstance(queue.waiting, GroupedLine) else 0,
        waiting_children=len(queue.parents), schedules=schedules)


_IDLE: Final = Rates()


def _rates(rate: Rate, at: float) -> Rates:
    m1, m5, m15 = rate.rates(at)
    return Rates(m1=m1, m5=m5, m15=m15) if m15 else _IDLE
