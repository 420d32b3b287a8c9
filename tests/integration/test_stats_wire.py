"""``Client.stats`` and ``Client.find_job`` against a real broker: the workers connected, the
broker's own figures, the statistics switch, and what a user who may read some queues sees."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
from processes import eventually, running, wait_for_workers
from rawwire import Raw

from conveyor.broker import Broker, Permission, User, Users, make_secret
from conveyor.client import Client, Stats, WorkerInfo
from conveyor.worker import Job, Tasks, Worker

MakeBroker = Callable[..., Awaitable[Broker]]


async def noop(job: Job) -> str:
    return "ok"



def worker_on(stats: Stats, queue: str) -> WorkerInfo:
    (found,) = [w for w in stats.workers if any(s.queue == queue for s in w.subscriptions)]
    return found


async def test_a_worker_is_listed_with_its_subscriptions_until_it_disconnects(
        broker: Broker, url: str) -> None:
    before = time.time()
    gate = asyncio.Event()
    tasks = Tasks()

    @tasks.job(queue="emails")
    async def send(n: int) -> str:
        await gate.wait()
        return "sent"

    @tasks.job(queue="reports")
    async def report() -> str:
        return "reported"

    async with Client(url) as client:
        async with running(Worker(tasks, url=url, concurrency=3, name="mailer")):
            await wait_for_workers(broker, "reports", 1)
            await send.add(client, 1)
            await send.add(client, 2)

            async def holding() -> Stats | None:
                stats = await client.stats()
                return stats if stats.queues[0].active == 2 else None

            stats = await eventually(holding, "two jobs held by the worker")
            (worker,) = stats.workers  # the asking client subscribes to nothing
            assert worker.name == "mailer"
            assert worker.host == socket.gethostname()
            assert worker.pid == os.getpid()
            assert worker.address.startswith("127.0.0.1:")
            assert worker.user == ""
            assert before - 1 <= worker.connected_at <= worker.last_heard <= time.time() + 1
            assert [(s.queue, s.window, s.held) for s in worker.subscriptions] == [
                ("emails", 3, 2), ("reports", 3, 0)]
            # Narrowed to one queue: the worker with that subscription only.
            (narrowed,) = (await client.stats("reports")).workers
            assert [s.queue for s in narrowed.subscriptions] == ["reports"]
            assert stats.broker.connections == 2
            gate.set()
        await eventually(lambda: broker.queues.counts("emails")["workers"] == 0,
                         "the worker gone")
        stats = await client.stats()
        assert stats.workers == []
        assert stats.broker.connections == 1


async def test_last_heard_moves_when_the_worker_sends_anything(broker: Broker,
                                                              url: str) -> None:
    raw = await Raw.open(broker.port)
    try:
        raw.send({"t": "subscribe", "req": 1, "queue": "q", "window": 1})
        assert (await raw.receive())["t"] == "ok"
        async with Client(url) as client:
            first = worker_on(await client.stats(), "q")
            assert first.name == "raw"
            assert first.last_heard >= first.connected_at

            async def heard_again() -> bool:
                raw.send({"t": "extend", "queue": "q"})
                await raw.counts("q")
                return worker_on(await client.stats(), "q").last_heard > first.last_heard

            await eventually(heard_again, "last_heard to move on")
    finally:
        await raw.close()


async def test_the_broker_reports_its_log_and_fsyncs(make_broker: MakeBroker,
                                                     tmp_path: Path) -> None:
    broker = await make_broker(data_dir=tmp_path / "data", fsync="always",
                               compact_floor=4096, compact_ratio=2.0)
    async with Client(f"127.0.0.1:{broker.port}") as client:
        await client.add_bulk("q", ["x" * 200] * 50)
        stats = await client.stats()
        figures = stats.broker
        assert figures.log_bytes > 50 * 200
        assert figures.live_bytes > 50 * 200
        assert figures.version and figures.version != "0+unknown"
        assert figures.memory > 1 << 20
        assert figures.started_at <= time.time() and figures.uptime >= 0
        assert (figures.queues, figures.jobs) == (1, 50)
        assert figures.fsync_time is not None
        # Every add was acknowledged after an fsync under --fsync always.
        assert figures.fsync_time.count >= 1
        assert figures.fsync_time.sum > 0
        assert sum(figures.fsync_time.recent) == figures.fsync_time.count
        assert figures.compactions == 0
        # Forgotten, the jobs leave a log that is mostly history: it gets compacted.
        assert await client.drain("q") == 50

        async def compacted() -> Stats | None:
            stats = await client.stats()
            return stats if stats.broker.compactions >= 1 else None

        after = await eventually(compacted, "a compaction", timeout=30)
        assert after.broker.log_bytes < figures.log_bytes


async def test_an_in_memory_broker_has_no_log_figures(broker: Broker, url: str) -> None:
    async with Client(url) as client:
        figures = (await client.stats()).broker
    assert (figures.log_bytes, figures.compactions, figures.fsync_time) == (0, 0, None)


async def test_with_stats_off_tries_are_neither_counted_nor_timed(make_broker: MakeBroker) -> None:
    broker = await make_broker(stats=False)
    url = f"127.0.0.1:{broker.port}"
    async with Client(url) as client, running(Worker("q", noop, url=url, concurrency=2)):
        ids = await client.add_bulk("q", [1, 2, 3])
        for job_id in ids:
            await client.wait(job_id, timeout=10)
        (queue,) = (await client.stats()).queues
        assert (queue.added, queue.completed, queue.started) == (3, 3, 0)
        assert queue.wait_time is None and queue.run_time is None
        assert queue.completed_rate.m1 > 0
        assert len((await client.stats()).workers) == 1


async def test_the_figures_of_a_workload(broker: Broker, url: str) -> None:
    async with Client(url) as client, running(Worker("q", noop, url=url, concurrency=4)):
        ids = await client.add_bulk("q", list(range(20)))
        for job_id in ids:
            await client.wait(job_id, timeout=10)
        (queue,) = (await client.stats()).queues
    assert (queue.added, queue.started, queue.completed, queue.retried) == (20, 20, 20, 0)
    assert queue.wait_time is not None and queue.wait_time.count == 20
    assert queue.run_time is not None and queue.run_time.count == 20
    assert queue.started_rate.m1 == queue.completed_rate.m1 == 20 / 60


async def test_the_queues_of_a_large_broker_come_in_frames_within_its_limit(
        make_broker: MakeBroker) -> None:
    broker = await make_broker(max_frame=8_192)
    url = f"127.0.0.1:{broker.port}"
    names = [f"queue-{n:03d}" for n in range(120)]
    async with Client(url) as client, running(Worker(names[-1], noop, url=url)):
        await wait_for_workers(broker, names[-1], 1)
        for name in names:
            await client.add(name, 1, delay=3600)
        stats = await client.stats()
        assert [q.name for q in stats.queues] == names
        assert [[s.queue for s in w.subscriptions] for w in stats.workers] == [[names[-1]]]
        assert not stats.more
        raw = await Raw.open(broker.port)
        try:
            raw.send({"t": "get_stats", "req": 1})
            body = await raw.receive_frame()
            assert len(body) <= 8_192
            first = msgspec.msgpack.decode(body)
            assert first["more"] and len(first["workers"]) == 1
            raw.send({"t": "get_stats", "req": 2, "after": first["queues"][-1]["name"]})
            second = msgspec.msgpack.decode(await raw.receive_frame())
            assert second["queues"][0]["name"] > first["queues"][-1]["name"]
            assert second["workers"] == []
        finally:
            await raw.close()


async def test_find_job_by_its_idempotency_key(broker: Broker, url: str) -> None:
    async with Client(url) as client:
        job_id = await client.add("q", {"to": "a@b"}, id="welcome-42")
        found = await client.find_job("welcome-42")
        assert found is not None
        assert (found.id, found.key, found.queue) == (job_id, "welcome-42", "q")
        assert await client.find_job("welcome-43") is None


async def test_a_user_sees_the_queues_and_subscriptions_it_may_read(
        make_broker: MakeBroker) -> None:
    secret = make_secret("pw-Quokka-1")
    users = Users({
        "root": User(name="root", secret=secret,
                     rules={p: ("*",) for p in Permission}),
        "a-reader": User(name="a-reader", secret=secret, rules={Permission.READ: ("a*",)}),
    })
    broker = await make_broker(users=users)
    root = f"conveyor://root:pw-Quokka-1@127.0.0.1:{broker.port}"
    reader = f"conveyor://a-reader:pw-Quokka-1@127.0.0.1:{broker.port}"
    tasks = Tasks()
    tasks.job(queue="a1", name="on_a")(noop)
    tasks.job(queue="b1", name="on_b")(noop)
    async with Client(root) as admin, running(Worker(tasks, url=root)):
        await wait_for_workers(broker, "b1", 1)
        await admin.add("a2", 1)
        assert [q.name for q in (await admin.stats()).queues] == ["a1", "a2", "b1"]
        async with Client(reader) as client:
            stats = await client.stats()
            assert [q.name for q in stats.queues] == ["a1", "a2"]
            (worker,) = stats.workers
            assert [s.queue for s in worker.subscriptions] == ["a1"]
            assert worker.user == "root"
            b_only = await client.find_job("nothing")
            assert b_only is None


async def test_the_list_of_queues_comes_in_pages_that_fit_the_frame(
        make_broker: MakeBroker) -> None:
    broker = await make_broker(max_frame=16 * 1024)
    names = [f"queue-{n:04}-{'x' * 40}" for n in range(600)]  # about 60 KB of summaries
    async with Client(f"conveyor://127.0.0.1:{broker.port}") as client:
        for chunk in range(0, len(names), 100):
            await asyncio.gather(*(client.add(name, n)
                                   for n, name in enumerate(names[chunk:chunk + 100])))
        listed = await client.queues()
    assert [summary.name for summary in listed] == names
    assert all(summary.waiting == 1 for summary in listed)
    raw = await Raw.open(broker.port)
    try:
        raw.send({"t": "get_queues", "req": 1})
        frame = await raw.receive_frame()  # the body: the 4-byte length is read already
        assert len(frame) + 4 <= 16 * 1024
        page = msgspec.msgpack.decode(frame)
        assert page["more"] and 0 < len(page["queues"]) < len(names)
        raw.send({"t": "get_queues", "req": 2, "after": names[-2]})
        last = await raw.receive()
        assert [queue["name"] for queue in last["queues"]] == names[-1:]
        assert not last.get("more", False)
    finally:
        await raw.close()
