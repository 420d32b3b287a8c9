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
from collections.abc import Iterable
from typing import Final, Protocol

import msgspec

from conveyor.protocol import (
    BrokerStats,
    Histogram,
    QueueStats,
    Rates,
    Stats,
    WorkerInfo,
)

from ._jobs import Queue
from ._queues import Queues
from ._rates import Rate
from ._users import Permission, User

__all__ = ["UNKNOWN_VERSION", "Observed", "Unobserved", "collect", "memory", "version"]

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


def collect(queues: Queues, observed: Observed, user: User | None, queue: str | None,
            now: float, req: int) -> Stats:
    """The ``stats`` reply to ``user``: the queues (and workers' subscriptions) it may read,
    narrowed to ``queue`` when one is given."""

    def visible(name: str) -> bool:
        return ((queue is None or name == queue)
                and (user is None or user.may(Permission.READ, name)))

    at = queues.timeline.monotonic(now)
    summaries = [_queue_stats(q, at, timed=queues.stats)
                 for q in sorted(queues.queues.values(), key=lambda q: q.name)
                 if visible(q.name)]
    workers = []
    for worker in observed.workers():
        subscriptions = [s for s in worker.subscriptions if visible(s.queue)]
        if subscriptions:
            workers.append(msgspec.structs.replace(worker, subscriptions=subscriptions))
    return Stats(req=req, broker=observed.broker_stats(queues), queues=summaries,
                 workers=workers)


def _queue_stats(queue: Queue, at: float, *, timed: bool) -> QueueStats:
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
        wait_time=wait_time, run_time=run_time)


_IDLE: Final = Rates()


def _rates(rate: Rate, at: float) -> Rates:
    m1, m5, m15 = rate.rates(at)
    return Rates(m1=m1, m5=m5, m15=m15) if m15 else _IDLE
