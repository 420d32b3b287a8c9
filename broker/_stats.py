"""Statistics: what a ``get_stats`` request reads of the queues, the connections and the log.

Reading them changes nothing. The figures that must be counted as jobs move (rates, histograms)
are counted by the state machine as it moves them; this module only puts them together.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Protocol

import msgspec

from conveyor.protocol import BrokerStats, QueueStats, Rates, Stats, WorkerInfo

from ._queues import Queues
from ._users import Permission, User

__all__ = ["Observed", "Unobserved", "collect"]


class Observed(Protocol):
    """What the server tells the statistics about itself."""

    def broker_stats(self, queues: Queues) -> BrokerStats:
        """The broker's own figures."""

    def workers(self) -> Iterable[WorkerInfo]:
        """Every connection subscribed to a queue."""


class Unobserved:
    """The figures of a broker core driven without a server (tests)."""

    def __init__(self) -> None:
        self.started_at = time.time()

    def broker_stats(self, queues: Queues) -> BrokerStats:
        now = time.time()
        return BrokerStats(version="", started_at=self.started_at, uptime=now - self.started_at,
                           connections=0, queues=len(queues.queues), jobs=len(queues.jobs),
                           memory=0, live_bytes=queues.live_bytes)

    def workers(self) -> Iterable[WorkerInfo]:
        return ()


def collect(queues: Queues, observed: Observed, user: User | None, queue: str | None,
            now: float, req: int) -> Stats:
    """The ``stats`` reply to ``user``: the queues (and workers' subscriptions) it may read,
    narrowed to ``queue`` when one is given."""

    def visible(name: str) -> bool:
        return ((queue is None or name == queue)
                and (user is None or user.may(Permission.READ, name)))

    summaries = [
        QueueStats(name=s.name, waiting=s.waiting, active=s.active, delayed=s.delayed,
                   completed=s.completed, failed=s.failed, workers=s.workers, paused=s.paused,
                   added_rate=Rates(m1=s.added_rate), completed_rate=Rates(m1=s.completed_rate),
                   failed_rate=Rates(m1=s.failed_rate))
        for s in queues.summaries(now) if visible(s.name)
    ]
    workers = []
    for worker in observed.workers():
        subscriptions = [s for s in worker.subscriptions if visible(s.queue)]
        if subscriptions:
            workers.append(msgspec.structs.replace(worker, subscriptions=subscriptions))
    return Stats(req=req, broker=observed.broker_stats(queues), queues=summaries,
                 workers=workers)

