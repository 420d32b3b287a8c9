"""``/metrics``: after a known workload, every figure scraped over HTTP and read with
prometheus-client's own parser is the broker's (``stats()`` and ``counts()``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import pytest
from dashboard_support import Served, serve
from processes import eventually, running
from prometheus_client.parser import text_string_to_metric_families

from conveyor.broker import Broker
from conveyor.client import Client, Histogram, JobFailed, Stats
from conveyor.dashboard import metrics
from conveyor.worker import Job, Worker

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Every sample by (name, labels), and every family's type by name."""
    samples: Samples = {}
    types = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def scrape(dashboard: Served) -> str:
    response = await dashboard.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text


def check_histogram(samples: Samples, name: str, histogram: Histogram | None,
                    **labels: str) -> None:
    """The scraped histogram is the broker's: cumulative buckets, sum and count."""
    buckets = {dict(key)["le"]: count for (sample, key), count in samples.items()
               if sample == f"{name}_bucket" and all(dict(key).get(k) == v
                                                     for k, v in labels.items())}
    if histogram is None:  # a broker that does not measure it: nothing made up
        assert not buckets
        return
    running_total = 0
    for bound, count in zip(histogram.bounds, histogram.counts, strict=False):
        running_total += count
        assert buckets[repr(float(bound))] == running_total
    assert buckets["+Inf"] == histogram.count
    assert value(samples, f"{name}_count", **labels) == histogram.count
    assert abs(value(samples, f"{name}_sum", **labels) - histogram.sum) < 1e-9


async def test_metrics_match_the_broker_after_a_known_workload(
        url: str, dashboard: Served) -> None:
    async def handle(job: Job) -> int:
        if job.data % 2:
            raise ValueError(f"odd {job.data}")
        return int(job.data)

    async with Client(url) as client:
        await client.add_bulk("held", [1, 2, 3])
        await client.pause("held")
        await client.add("work", 99, delay=600)
        async with running(Worker("work", handle, url=url, concurrency=4)):
            ids = await client.add_bulk("work", list(range(10)), attempts=2)
            outcomes = await asyncio.gather(*(client.wait(job_id, timeout=30) for job_id in ids),
                                            return_exceptions=True)
            assert sum(isinstance(outcome, JobFailed) for outcome in outcomes) == 5
            await eventually(lambda: _idle(client), "the worker is idle")
            text = await scrape(dashboard)
            stats = await client.stats()
            counts = {name: await client.counts(name) for name in ("held", "work")}
    samples, types = parse(text)
    assert value(samples, "conveyor_up") == 1

    assert counts["work"]["completed"] == 5 and counts["work"]["failed"] == 5
    assert counts["held"]["waiting"] == 3 and counts["work"]["delayed"] == 1
    for queue, figures in counts.items():
        for state in ("waiting", "active", "delayed"):
            assert value(samples, "conveyor_queue_jobs", queue=queue, state=state) \
                == figures[state], (queue, state)
        for outcome in ("completed", "failed"):
            assert value(samples, "conveyor_jobs_finished_total", queue=queue,
                         outcome=outcome) == figures[outcome]
        assert value(samples, "conveyor_queue_workers", queue=queue) == figures["workers"]
    assert value(samples, "conveyor_queue_paused", queue="held") == 1
    assert value(samples, "conveyor_queue_paused", queue="work") == 0

    by_name = {queue.name: queue for queue in stats.queues}
    windows = {"held": 0, "work": 0}
    for worker in stats.workers:
        for subscription in worker.subscriptions:
            windows[subscription.queue] += subscription.window
    for name, measured in by_name.items():
        assert value(samples, "conveyor_jobs_added_total", queue=name) == measured.added
        assert value(samples, "conveyor_jobs_started_total", queue=name) == measured.started
        assert value(samples, "conveyor_jobs_retried_total", queue=name) == measured.retried
        assert value(samples, "conveyor_queue_capacity", queue=name) == windows[name]
        check_histogram(samples, "conveyor_job_wait_seconds", measured.wait_time, queue=name)
        check_histogram(samples, "conveyor_job_run_seconds", measured.run_time, queue=name)
    work = by_name["work"]
    assert work.added == 11 and work.retried == 5
    assert work.started == 15  # 10 first tries, 5 second ones
    assert windows["work"] == 4
    # Every try that ran was timed, and the scrape says so.
    assert work.wait_time is not None and work.wait_time.count == 15
    assert work.run_time is not None and work.run_time.count == 15
    assert value(samples, "conveyor_job_run_seconds_count", queue="work") == 15
    check_histogram(samples, "conveyor_log_fsync_seconds", stats.broker.fsync_time)

    broker = stats.broker
    assert value(samples, "conveyor_broker_info", version=broker.version) == 1
    assert value(samples, "conveyor_broker_queues") == broker.queues == 2
    assert value(samples, "conveyor_broker_jobs") == broker.jobs
    assert value(samples, "conveyor_workers") == len(stats.workers)
    assert value(samples, "conveyor_log_bytes") == broker.log_bytes
    assert value(samples, "conveyor_log_compactions_total") == broker.compactions
    for name in ("conveyor_connections", "conveyor_broker_uptime_seconds",
                 "conveyor_broker_memory_bytes", "conveyor_log_live_bytes"):
        assert value(samples, name) >= 0
    assert types["conveyor_jobs_finished"] == "counter"
    assert types["conveyor_job_run_seconds"] == "histogram"
    assert types["conveyor_queue_jobs"] == "gauge"
    assert types["conveyor_broker_info"] == "gauge"  # an info metric, in the text format


async def _idle(client: Client) -> bool:
    return (await client.counts("work"))["active"] == 0


async def test_metrics_say_the_broker_is_down_and_recover(
        make_broker: Callable[..., Awaitable[Broker]]) -> None:
    broker = await make_broker()
    port = broker.port
    async with Client(f"127.0.0.1:{port}") as client:
        await client.add("emails", 1)
    async with serve(f"127.0.0.1:{port}", timeout=0.5) as dashboard:
        assert value(parse(await scrape(dashboard))[0], "conveyor_up") == 1
        await broker.close()
        samples, _ = parse(await scrape(dashboard))
        assert samples == {("conveyor_up", frozenset()): 0}
        page = await dashboard.page("/", status=503)
        assert "hidden" not in page.find(id="banner").attrs
        assert "Broker unreachable" in page.find(id="banner").text
        # Back: the dashboard's client reconnects by itself.
        again = Broker(host="127.0.0.1", port=port)
        await again.start()
        try:
            async def up() -> bool:
                return value(parse(await scrape(dashboard))[0], "conveyor_up") == 1
            await eventually(up, "the dashboard reached the broker again")
            async with Client(f"127.0.0.1:{port}") as client:
                await client.add("after", 1)
            page = await dashboard.page("/")
            assert page.find("tr", data_queue="after").find(data_count="waiting").text == "1"
            assert "hidden" in page.find(id="banner").attrs
        finally:
            await again.close()


async def test_pages_are_served_while_a_scrape_renders(
        dashboard: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    # Rendering thousands of queues takes prometheus-client seconds: it must not hold up the
    # pages meanwhile. This render waits until a page was served during it (at most 5 s).
    rendering, page_served = threading.Event(), threading.Event()
    real_render = metrics.render

    def slow_render(stats: Stats | None) -> bytes:
        rendering.set()
        page_served.wait(5)
        return real_render(stats)

    monkeypatch.setattr(metrics, "render", slow_render)
    scrape = asyncio.ensure_future(dashboard.http.get("/metrics"))
    assert await asyncio.to_thread(rendering.wait, 5)
    page = await dashboard.http.get("/")
    assert page.status_code == 200
    assert not scrape.done(), "the page waited for the scrape to finish"
    page_served.set()
    assert (await scrape).status_code == 200
