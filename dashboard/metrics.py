"""``/metrics``: the broker's statistics in the Prometheus text format.

Every scrape asks the broker afresh (``get_stats``) and renders that one snapshot through a
custom collector on a registry made for the scrape, so that the figures of one scrape are
consistent with each other and nothing is kept between scrapes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from conveyor.client import Histogram, Stats

__all__ = ["CONTENT_TYPE", "StatsCollector", "render"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
LIVE_STATES: Final = ("waiting", "active", "delayed", "waiting-children")


class StatsCollector(Collector):
    """The metrics of one ``Stats`` snapshot; ``stats`` None: the broker could not be reached,
    and only ``conveyor_up 0`` is reported."""

    def __init__(self, stats: Stats | None) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("conveyor_up", "Whether this scrape reached the broker (1) or "
                               "not (0).")
        up.add_metric([], 0 if self.stats is None else 1)
        yield up
        if self.stats is not None:
            yield from _queue_metrics(self.stats)
            yield from _broker_metrics(self.stats)


def _queue_metrics(stats: Stats) -> Iterator[Metric]:
    queue = ["queue"]
    jobs = GaugeMetricFamily("conveyor_queue_jobs", "Jobs in the queue now, by state.",
                             labels=["queue", "state"])
    paused = GaugeMetricFamily("conveyor_queue_paused",
                               "Whether the queue's deliveries are paused (1) or not (0).",
                               labels=queue)
    workers = GaugeMetricFamily("conveyor_queue_workers",
                                "Worker subscriptions to the queue.", labels=queue)
    capacity = GaugeMetricFamily("conveyor_queue_capacity",
                                 "Jobs the queue's subscribers may hold at once (the sum of "
                                 "their credit windows).", labels=queue)
    added = CounterMetricFamily("conveyor_jobs_added",
                                "Jobs added to the queue since the broker started.",
                                labels=queue)
    started = CounterMetricFamily("conveyor_jobs_started",
                                  "Tries started (jobs delivered) since the broker started.",
                                  labels=queue)
    finished = CounterMetricFamily("conveyor_jobs_finished",
                                   "Jobs finished since the queue was created, by outcome.",
                                   labels=["queue", "outcome"])
    retried = CounterMetricFamily("conveyor_jobs_retried",
                                  "Failed tries followed by another since the broker started.",
                                  labels=queue)
    wait = HistogramMetricFamily("conveyor_job_wait_seconds",
                                 "Seconds a try waited, from waiting to its delivery.",
                                 labels=queue)
    run = HistogramMetricFamily("conveyor_job_run_seconds",
                                "Seconds a try ran, from its delivery to its outcome.",
                                labels=queue)
    windows: dict[str, int] = {}
    for worker in stats.workers:
        for subscription in worker.subscriptions:
            windows[subscription.queue] = windows.get(subscription.queue, 0) + subscription.window
    for q in stats.queues:
        name = [q.name]
        for state in LIVE_STATES:
            jobs.add_metric([q.name, state], getattr(q, state.replace("-", "_")))
        paused.add_metric(name, 1 if q.paused else 0)
        workers.add_metric(name, q.workers)
        capacity.add_metric(name, windows.get(q.name, 0))
        added.add_metric(name, q.added)
        started.add_metric(name, q.started)
        finished.add_metric([q.name, "completed"], q.completed)
        finished.add_metric([q.name, "failed"], q.failed)
        retried.add_metric(name, q.retried)
        _add_histogram(wait, name, q.wait_time)
        _add_histogram(run, name, q.run_time)
    yield from (jobs, paused, workers, capacity, added, started, finished, retried, wait, run)


def _add_histogram(family: HistogramMetricFamily, labels: Sequence[str],
                   histogram: Histogram | None) -> None:
    """Add ``histogram`` (the broker's per-bucket counts) as cumulative buckets; nothing for a
    broker that does not measure it."""
    if histogram is None:
        return
    buckets: list[tuple[str, float]] = []
    total = 0
    bounds: Iterable[float] = histogram.bounds
    for bound, count in zip(bounds, histogram.counts, strict=False):
        total += count
        buckets.append((_le(bound), total))
    buckets.append(("+Inf", histogram.count))
    family.add_metric(list(labels), buckets, histogram.sum)


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it (``0.005``, ``1.0``, ``60.0``)."""
    return repr(float(bound))


def _broker_metrics(stats: Stats) -> Iterator[Metric]:
    broker = stats.broker
    info = InfoMetricFamily("conveyor_broker", "The broker's software version.")
    info.add_metric([], {"version": broker.version})
    yield info
    gauges = (
        ("conveyor_workers", "Worker connections (subscribed to a queue the dashboard's user "
         "may read).", len(stats.workers)),
        ("conveyor_connections", "Open connections to the broker.", broker.connections),
        ("conveyor_broker_uptime_seconds", "Seconds since the broker started.", broker.uptime),
        ("conveyor_broker_memory_bytes", "The broker process's resident memory.", broker.memory),
        ("conveyor_broker_jobs", "Jobs the broker holds in memory, in every state.", broker.jobs),
        ("conveyor_broker_queues", "Queues the broker knows.", broker.queues),
        ("conveyor_log_bytes", "The log's size on disk.", broker.log_bytes),
        ("conveyor_log_live_bytes", "The estimated size of the live state (what a compaction "
         "keeps).", broker.live_bytes),
    )
    for name, documentation, value in gauges:
        yield GaugeMetricFamily(name, documentation, value=value)
    yield CounterMetricFamily("conveyor_log_compactions", "Log compactions since the broker "
                              "started.", value=broker.compactions)
    fsync = HistogramMetricFamily("conveyor_log_fsync_seconds",
                                  "Seconds each fsync of the log took.", labels=[])
    _add_histogram(fsync, [], broker.fsync_time)
    yield fsync


def render(stats: Stats | None) -> bytes:
    """The text exposition of ``stats`` (None: the broker is down)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats))
    return generate_latest(registry)
