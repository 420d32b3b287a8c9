"""A ``Tasks`` registry: registering functions, adding their jobs with ``Task.add``, and an
in-process ``Worker(tasks)`` running them by name, one window per queue."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from processes import eventually, running
from worker_support import subscribers

from conveyor.broker import Broker
from conveyor.client import Client, JobFailed, SyncClient
from conveyor.worker import Tasks, Worker, current_job


def make_tasks() -> Tasks:
    """Two queues: ``mail`` (async tasks, the worker's default window) and ``media`` (a plain
    task, a window of 3)."""
    tasks = Tasks()
    tasks.queue("media", concurrency=3)

    @tasks.job(queue="mail")
    async def greet(who: str, greeting: str = "hello") -> dict[str, Any]:
        job = current_job()
        await job.progress(10)
        return {"text": f"{greeting} {who}", "job": job.id, "attempt": job.attempt}

    @tasks.job(queue="media", name="thumb")
    def make_thumbnail(path: str, size: int = 64, **extra: Any) -> dict[str, Any]:
        return {"path": path, "size": size, "extra": extra, "job": current_job().id,
                "in_thread": threading.current_thread() is not threading.main_thread()}

    return tasks


def test_a_task_runs_as_the_function_and_its_payload_binds_positional_arguments() -> None:
    tasks = make_tasks()
    thumb = tasks["thumb"]
    assert (thumb.queue, thumb.name, thumb.__name__) == ("media", "thumb", "make_thumbnail")
    assert tasks["greet"].queue == "mail"
    assert tasks.queues == ["mail", "media"]
    assert thumb.payload("a.png", 32) == {"path": "a.png", "size": 32}
    assert thumb.payload(path="b.png", dpi=300) == {"path": "b.png", "dpi": 300}
    with pytest.raises(TypeError, match="missing a required argument: 'path'"):
        thumb.payload(size=3)
    with pytest.raises(TypeError, match="too many positional arguments"):
        thumb.payload("a", 1, 2)
    with pytest.raises(RuntimeError, match="outside a job"):
        thumb("a.png")  # called directly: no job is running, and it asks for one


def test_registering_refuses_what_cannot_travel_or_be_found() -> None:
    tasks = Tasks()

    @tasks.job(queue="q")
    def once(x: int) -> int:
        return x

    assert once(2) == 2  # the decorated function is still callable as itself
    with pytest.raises(ValueError, match="'once' is registered already"):
        tasks.job(queue="other", name="once")(lambda: None)
    with pytest.raises(ValueError, match="positional-only"):
        tasks.job(queue="q")(lambda x, /: x)
    with pytest.raises(ValueError, match="variadic positional"):
        tasks.job(queue="q", name="star")(lambda *values: values)
    with pytest.raises(ValueError, match="queue name"):
        tasks.job(queue="")
    with pytest.raises(ValueError, match="concurrency"):
        tasks.queue("q", concurrency=0)
    with pytest.raises(ValueError, match="no tasks on queue 'nope'"):
        Worker(tasks, queues=["nope"])
    with pytest.raises(ValueError, match="no tasks"):
        Worker(Tasks())


def test_using_sets_job_options_but_not_the_name() -> None:
    greet = make_tasks()["greet"]
    urgent = greet.using(priority=5, attempts=3)
    later = urgent.using(delay=60, priority=1)
    assert urgent.options == {"priority": 5, "attempts": 3}
    assert later.options == {"priority": 1, "attempts": 3, "delay": 60}
    assert greet.options == {}
    with pytest.raises(ValueError, match="named 'greet'"):
        greet.using(name="other")


async def test_a_worker_serves_every_queue_of_a_registry_by_name(url: str,
                                                                 broker: Broker) -> None:
    tasks = make_tasks()
    greet, thumb = tasks["greet"], tasks["thumb"]
    worker = Worker(tasks, url=url, concurrency=2)
    assert worker.queues == {"mail": 2, "media": 3}
    async with Client(url) as client, running(worker):
        first = await greet.add(client, "ada")
        second = await greet.using(priority=7, attempts=2).add(client, who="bob", greeting="hi")
        third = await thumb.add(client, "c.png", dpi=300)
        assert await client.wait(first, timeout=10) == {"text": "hello ada", "job": first,
                                                         "attempt": 1}
        assert (await client.wait(second, timeout=10))["text"] == "hi bob"
        assert await client.wait(third, timeout=10) == {
            "path": "c.png", "size": 64, "extra": {"dpi": 300}, "job": third, "in_thread": True}
        info = await client.get_job(second)
        assert info is not None
        assert (info.name, info.queue, info.data) == ("greet", "mail",
                                                      {"who": "bob", "greeting": "hi"})
        assert (info.priority, info.attempts) == (7, 2)
        progress = await client.get_job(first)
        assert progress is not None and progress.progress == 10
        # One connection, one subscription per queue, each with the queue's own window.
        consumers = {queue: list(broker.queues.queues[queue].consumers.values())
                     for queue in ("mail", "media")}
        assert {queue: [c.window for c in found] for queue, found in consumers.items()} == {
            "mail": [2], "media": [3]}
        assert consumers["mail"][0].owner is consumers["media"][0].owner

        def produce() -> int:
            with SyncClient(url) as sync:
                return thumb.add(sync, path="d.png")

        fourth = await asyncio.to_thread(produce)
        assert (await client.wait(fourth, timeout=10))["path"] == "d.png"
    assert subscribers(broker, "mail") == subscribers(broker, "media") == 0


@pytest.mark.parametrize(("name", "data", "error_type", "words"), [
    pytest.param("nope", {"who": "x"}, "UnknownTask",
                 ["named 'nope'", "not a task of queue 'mail'", "greet"], id="unknown-name"),
    pytest.param(None, {"who": "x"}, "UnknownTask", ["has no name", "greet"], id="no-name"),
    pytest.param("thumb", {"path": "x"}, "UnknownTask",
                 ["named 'thumb'", "registered on queue 'media'"], id="another-queue"),
    pytest.param("greet", ["x"], "InvalidArguments",
                 ["payload of type list", "dict of its keyword arguments"], id="not-a-dict"),
    pytest.param("greet", {"greeting": "hi"}, "InvalidArguments",
                 ["greet(who, greeting='hello')", "missing a required argument: 'who'"],
                 id="missing"),
    pytest.param("greet", {"who": "x", "shout": True}, "InvalidArguments",
                 ["unexpected keyword argument 'shout'"], id="unexpected"),
])
async def test_a_job_no_task_can_run_fails_once_with_a_clear_error(
    url: str, name: str | None, data: Any, error_type: str, words: list[str]
) -> None:
    async with Client(url) as client, running(Worker(make_tasks(), url=url)):
        job_id = await client.add("mail", data, name=name, attempts=3)
        with pytest.raises(JobFailed) as failure:
            await client.wait(job_id, timeout=10)
        info = await client.get_job(job_id)
    assert failure.value.error_type == error_type
    for word in words:
        assert word in failure.value.error_message, failure.value.error_message
    assert info is not None and (info.state.value, info.attempt) == ("failed", 1)


async def test_closing_stops_credit_on_every_queue_before_running_jobs_finish(
    url: str, broker: Broker
) -> None:
    gate = asyncio.Event()
    started: list[int] = []
    tasks = Tasks()

    async def hold() -> int:
        started.append(current_job().id)
        await gate.wait()
        return current_job().id

    tasks.job(queue="first")(hold)
    tasks.job(queue="second", name="hold_too")(hold)
    worker = Worker(tasks, url=url, grace=10)
    async with Client(url) as client:
        running_run = asyncio.create_task(worker.run())
        first = [await tasks["hold"].add(client) for _ in range(2)]
        second = [await tasks["hold_too"].add(client) for _ in range(2)]
        await eventually(lambda: len(started) == 2, "a job of each queue running")
        closing = asyncio.create_task(worker.close())  # returns once the jobs are done

        def windows() -> list[int]:
            return [consumer.window for queue in ("first", "second")
                    for consumer in broker.queues.queues[queue].consumers.values()]

        await eventually(lambda: windows() == [0, 0], "both windows closed", timeout=10)
        gate.set()  # the running jobs finish within the grace period; nothing new starts
        async with asyncio.timeout(15):
            await closing
            await running_run
        assert sorted(started) == sorted([first[0], second[0]])
        assert [await client.wait(job_id, timeout=5) for job_id in (first[0], second[0])] == [
            first[0], second[0]]
        assert (await client.counts("first"))["waiting"] == 1
        assert (await client.counts("second"))["waiting"] == 1


async def test_leases_are_kept_alive_on_every_queue(url: str) -> None:
    tasks = Tasks()

    async def slow() -> int:
        await asyncio.sleep(3.5)  # over three leases of 1 s, the shortest the broker allows
        return current_job().attempt

    tasks.job(queue="first")(slow)
    tasks.job(queue="second", name="slow_too")(slow)
    async with Client(url) as client, running(Worker(tasks, url=url, lease=1.0)):
        ids = [await tasks["slow"].add(client), await tasks["slow_too"].add(client)]
        assert [await client.wait(job_id, timeout=10) for job_id in ids] == [1, 1]
