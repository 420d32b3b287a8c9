"""The live streams behind the pages: ``/events`` (the statistics, for the overview, queue and
workers pages) and ``/jobs/{id}/events`` (one job's record and events)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from dashboard_support import Served, serve, sse
from processes import eventually, running

from conveyor.broker import Broker
from conveyor.client import Client, EventStream, Stats
from conveyor.worker import Job, Worker

STREAM_TIMEOUT = 30.0


async def until(messages: AsyncIterator[dict[str, Any]],
                condition: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """The first message of ``messages`` for which ``condition`` holds."""
    try:
        async with asyncio.timeout(STREAM_TIMEOUT):
            async for message in messages:
                if condition(message):
                    return message
    except TimeoutError:
        raise AssertionError(f"no message with {what} within {STREAM_TIMEOUT} s") from None
    raise AssertionError(f"the stream ended before a message with {what}")


def queue_of(message: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((q for q in message.get("queues", ()) if q["name"] == name), None)


async def test_the_events_stream_shows_new_queues_and_changing_counts(
        url: str, dashboard: Served) -> None:
    async with Client(url) as client:
        await client.add("first", 1)
        async with contextlib.aclosing(sse(dashboard.http, "/events")) as messages:
            opening = await until(messages, lambda m: True, "anything")
            assert opening["up"] is True
            # A browser's first message has the throughput history, the next ones a point.
            assert all("history" in queue for queue in opening["queues"])
            seen = await until(messages, lambda m: queue_of(m, "first") is not None,
                               "the first queue")
            first = queue_of(seen, "first")
            assert first is not None and first["counts"]["waiting"] == 1
            assert "point" in first or "history" in first
            assert seen["broker"]["queues"] == "1"
            await client.add_bulk("second", [1, 2])
            await client.pause("second")
            later = await until(
                messages, lambda m: bool((queue_of(m, "second") or {}).get("paused")),
                "the new queue, paused")
            second = queue_of(later, "second")
            assert second is not None and second["counts"]["waiting"] == 2
            assert set(second["latency"]) == {"wait_p50", "wait_p95", "run_p50", "run_p95"}


async def test_the_job_stream_follows_the_job_to_its_result(url: str, dashboard: Served) -> None:
    gate = asyncio.Event()

    async def handle(job: Job) -> str:
        await job.progress(50)
        await gate.wait()
        return "done"

    async with Client(url) as client:
        job_id = await client.add("work", {"n": 1})
        await client.add("work", {"other": True})
        async with contextlib.aclosing(sse(dashboard.http, f"/jobs/{job_id}/events")) as messages:
            first = await until(messages, lambda m: True, "anything")
            assert first["type"] == "job" and first["job"]["state"] == "waiting"
            async with running(Worker("work", handle, url=url)):
                progress = await until(messages, lambda m: m["type"] == "job"
                                       and m["job"]["progress"] == "50", "the progress")
                assert progress["job"]["state"] == "active"
                assert progress["job"]["progress_percent"] == 50
                gate.set()
                done = await until(messages, lambda m: m["type"] == "job"
                                   and m["job"]["state"] == "completed", "the result")
                assert done["job"]["result"] == '"done"'


async def test_the_job_stream_lists_each_event_of_the_job_only(
        url: str, dashboard: Served) -> None:
    async with Client(url) as client:
        job_id = await client.add("work", 1)
        kinds: list[str] = []
        async with contextlib.aclosing(sse(dashboard.http, f"/jobs/{job_id}/events")) as messages:
            await until(messages, lambda m: m["type"] == "job", "the record")
            async with running(Worker("work", lambda job: None, url=url)):
                others = await client.add_bulk("work", [2, 3])  # other jobs' events: not shown
                while not kinds or kinds[-1] != "completed":
                    message = await until(messages, lambda m: m["type"] == "event", "an event")
                    kinds.append(message["event"]["kind"])
                for other in others:
                    await client.wait(other, timeout=30)
        assert kinds == ["active", "completed"]


async def test_job_pages_on_one_queue_share_one_event_stream(
        url: str, dashboard: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stream per page would decode every event of the queue once per open page.
    watched: list[str] = []
    events = dashboard.client.events

    def counted(queue: str) -> EventStream:
        watched.append(queue)
        return events(queue)

    monkeypatch.setattr(dashboard.client, "events", counted)
    async with Client(url) as client, contextlib.AsyncExitStack() as pages:
        ids = await client.add_bulk("work", list(range(12)))
        streams = [await pages.enter_async_context(
            contextlib.aclosing(sse(dashboard.http, f"/jobs/{job_id}/events"))) for job_id in ids]
        for stream in streams:
            await until(stream, lambda m: m["type"] == "job", "the record")
        assert watched == ["work"]
        async with running(Worker("work", lambda job: job.data * 10, url=url)):
            for job_id, stream in zip(ids, streams, strict=True):
                done = await until(stream, lambda m: m["type"] == "job"
                                   and m["job"]["state"] == "completed", "the result")
                assert (done["job"]["id"], done["job"]["result"]) \
                    == (job_id, str((job_id - ids[0]) * 10))
    shared = dashboard.server.app.state.dashboard.watches
    await eventually(lambda: len(shared) == 0, "the watch given back with the last page")
    assert watched == ["work"]


async def test_the_streams_say_when_the_broker_is_down_and_when_it_is_back(
        make_broker: Callable[..., Awaitable[Broker]]) -> None:
    broker = await make_broker()
    port = broker.port
    async with Client(f"127.0.0.1:{port}") as client:
        *_, job_id = await client.add_bulk("emails", [1, 2, 3])
    async with serve(f"127.0.0.1:{port}", timeout=0.5) as dashboard, \
            contextlib.aclosing(sse(dashboard.http, "/events")) as stats, \
            contextlib.aclosing(sse(dashboard.http, f"/jobs/{job_id}/events")) as job:
        await until(stats, lambda m: m["up"], "the broker up")
        await until(job, lambda m: m["type"] == "job", "the record")
        await broker.close()
        down = await until(stats, lambda m: not m["up"], "the broker down")
        assert down["error"]
        await until(job, lambda m: m["type"] == "down", "the broker down")
        again = Broker(host="127.0.0.1", port=port)
        await again.start()
        try:
            async with Client(f"127.0.0.1:{port}") as client:
                await client.add("after", 1)
            back = await until(stats, lambda m: m["up"] and queue_of(m, "after") is not None,
                               "the broker back")
            assert back["error"] is None
            # The new broker has no such job (it numbers from 1 again, and has one job): the job
            # page says it is gone.
            await until(job, lambda m: m["type"] == "gone", "the job gone")
        finally:
            await again.close()


async def test_stopping_the_dashboard_ends_open_streams(url: str) -> None:
    async with Client(url) as client:
        job_id = await client.add("q", 1)
    async with serve(url) as dashboard, \
            contextlib.aclosing(sse(dashboard.http, "/events")) as stats, \
            contextlib.aclosing(sse(dashboard.http, f"/jobs/{job_id}/events")) as job:
        await until(stats, lambda m: True, "anything")
        await until(job, lambda m: True, "anything")
        stopping = asyncio.get_running_loop().time()
        await dashboard.server.stop()
        # Well within the server's grace for open responses: the streams were ended.
        assert asyncio.get_running_loop().time() - stopping < 4
        for stream in (stats, job):
            async with asyncio.timeout(10):
                async for _ in stream:
                    pass  # what was sent before the end; then the stream ends


async def test_the_feed_asks_the_broker_only_while_a_browser_follows_it(
        url: str, dashboard: Served) -> None:
    feed = dashboard.server.app.state.dashboard.feed
    polls: list[float] = []
    fetch = feed.fetch

    async def counted() -> Stats:
        polls.append(asyncio.get_running_loop().time())
        stats: Stats = await fetch()
        return stats

    feed.fetch = counted
    async with contextlib.aclosing(sse(dashboard.http, "/events")) as stats:
        for _ in range(3):
            await until(stats, lambda m: m["up"], "a snapshot")
    await eventually(lambda: feed.readers == 0, "the browser gone")
    seen = len(polls)
    # Nothing to wait for: ten refresh periods pass without a poll (100 polls of a broker of
    # 10,000 queues a second, each a second of work, when it polled for nobody).
    await asyncio.sleep(10 * 0.1)
    assert len(polls) <= seen + 1  # one may have started as the browser left
