"""Flows through a real broker: a parent waits for its children (nested, on other queues), then
runs and reads their results; the failure policies; atomic adds; restarts in the middle (with a
compaction too); and who may add them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from integration_support import compacted
from processes import eventually, running
from rawwire import Raw

from conveyor.broker import Broker, Permission, User, Users, make_secret
from conveyor.client import Client, Flow, Forbidden, UnknownJob
from conveyor.protocol import ErrorCode, JobState
from conveyor.worker import Job, RateLimited, Worker

MakeBroker = Callable[..., Awaitable[Broker]]


async def test_a_parent_runs_after_its_children_and_reads_their_results(url: str) -> None:
    seen: dict[int, Any] = {}
    order: list[str] = []

    async def child(job: Job) -> int:
        order.append(f"child {job.data}")
        return int(job.data) * 10

    async def parent(job: Job) -> int:
        order.append("parent")
        results = await job.children_results()
        seen.update(results)
        return sum(results.values())

    async with Client(url) as client:
        added = await client.add_flow(Flow("reports", "sum", children=[
            Flow("pages", 1), Flow("pages", 2), Flow("other", 3)]))
        assert len(added.children) == 3
        info = await client.get_job(added.id)
        assert info is not None
        assert (info.state, info.children, info.children_left) == (
            JobState.WAITING_CHILDREN, 3, 3)
        assert (await client.counts("reports"))["waiting-children"] == 1
        async with running(Worker("reports", parent, url=url)), \
                running(Worker("pages", child, url=url)):
            await client.wait(added.children[0].id, timeout=10)
            await client.wait(added.children[1].id, timeout=10)
            # One child left: the parent, whose worker is free, is not delivered.
            info = await client.get_job(added.id)
            assert info is not None
            assert (info.state, info.children_left) == (JobState.WAITING_CHILDREN, 1)
            assert "parent" not in order
            async with running(Worker("other", child, url=url)):
                assert await client.wait(added.id, timeout=10) == 60
    assert order[-1] == "parent"
    assert seen == {added.children[0].id: 10, added.children[1].id: 20,
                    added.children[2].id: 30}
    child_info = await _job(url, added.children[0].id)
    assert child_info.parent == added.id


async def _job(url: str, job_id: int) -> Any:
    async with Client(url) as client:
        info = await client.get_job(job_id)
        assert info is not None
        return info


async def test_nested_flows_finish_from_the_leaves_up(url: str) -> None:
    async def handle(job: Job) -> int:
        results = await job.children_results()
        assert len(results) == (0 if job.data == depth else 1)
        return 1 + sum(int(value) for value in results.values())

    # A chain deeper than Python's recursion limit would allow if either side recursed.
    depth = 1500
    leaf = Flow("chain", depth)
    for level in range(depth - 1, -1, -1):
        leaf = Flow("chain", level, children=[leaf])
    async with Client(url) as client:
        added = await client.add_flow(leaf)
        assert (await client.counts("chain"))["waiting-children"] == depth
        async with running(Worker("chain", handle, url=url, concurrency=4)):
            # Each level counts the levels below it: every one ran after its child.
            assert await client.wait(added.id, timeout=60) == depth + 1


async def test_a_child_failing_for_good_fails_its_parent_and_grandparent(url: str) -> None:
    async def handle(job: Job) -> None:
        if job.data == "bad":
            raise RuntimeError("boom")

    async with Client(url) as client:
        added = await client.add_flow(Flow("top", "root", children=[
            Flow("mid", "mid", children=[Flow("leaf", "bad", attempts=2), Flow("leaf", "ok")])]))
        mid = added.children[0]
        async with running(Worker("leaf", handle, url=url)):
            await eventually(lambda: _state(url, added.id, JobState.FAILED),
                             "the root failed")
        info = await client.get_job(mid.id)
        assert info is not None and info.state is JobState.FAILED and info.error is not None
        assert info.error.type == "ChildFailed"
        assert f"child job {mid.children[0].id}" in info.error.message
        assert "RuntimeError: boom" in info.error.message
        root = await client.get_job(added.id)
        assert root is not None and root.error is not None
        assert root.error.type == "ChildFailed" and f"child job {mid.id}" in root.error.message
        assert (await client.children_errors(mid.id)).keys() == {mid.children[0].id}


async def _state(url: str, job_id: int, state: JobState) -> bool:
    async with Client(url) as client:
        info = await client.get_job(job_id)
        return info is not None and info.state is state


async def test_an_ignored_failure_lets_the_parent_run_and_a_removing_one_removes_it(
        url: str) -> None:
    ran: list[Any] = []

    async def handle(job: Job) -> None:
        if job.data == "bad":
            raise RuntimeError("boom")
        if job.queue == "parents":
            ran.append((job.data, await job.children_results(), await job.children_errors()))

    async with Client(url) as client:
        ignoring = await client.add_flow(Flow("parents", "ignoring", children=[
            Flow("kids", "bad", on_failure="ignore"), Flow("kids", "ok")]))
        removing = await client.add_flow(Flow("parents", "removing", children=[
            Flow("kids", "bad", on_failure="remove"), Flow("kids", "ok")]))
        async with running(Worker("kids", handle, url=url)), \
                running(Worker("parents", handle, url=url)):
            await client.wait(ignoring.id, timeout=10)
            await eventually(lambda: _gone(client, removing.id), "the parent removed")
        assert len(ran) == 1
        name, results, errors = ran[0]
        assert name == "ignoring"
        assert results == {ignoring.children[1].id: None}
        assert list(errors) == [ignoring.children[0].id]
        assert errors[ignoring.children[0].id].message == "boom"


async def _gone(client: Client, job_id: int) -> bool:
    return await client.get_job(job_id) is None


async def test_removing_a_waiting_child_counts_as_its_failure(url: str) -> None:
    async with Client(url) as client:
        added = await client.add_flow(Flow("p", "x", children=[
            Flow("c", 1, on_failure="ignore"), Flow("c", 2)]))
        await client.remove(added.children[0].id)
        info = await client.get_job(added.id)
        assert info is not None and info.children_left == 1
        errors = await client.children_errors(added.id)
        assert errors[added.children[0].id].type == "Removed"
        await client.remove(added.children[1].id)  # "fail": the parent fails
        info = await client.get_job(added.id)
        assert info is not None and info.state is JobState.FAILED


async def test_a_flow_is_checked_whole_before_anything_is_added(url: str) -> None:
    async with Client(url) as client:
        with pytest.raises(ValueError, match="only the root"):
            await client.add_flow(Flow("p", 1, children=[Flow("c", 2, id="key")]))
        with pytest.raises(TypeError, match="job 2 of the flow"):
            await client.add_flow(Flow("p", 1, children=[Flow("c", 2), Flow("c", object())]))
        with pytest.raises(ValueError, match="frame limit"):
            await client.add_flow(Flow("p", 1, children=[Flow("c", "x" * 1000)
                                                          for _ in range(2000)]))
        assert await client.queues() == []
        # The root's idempotency key: a second add returns the first flow's root, adds nothing.
        first = await client.add_flow(Flow("p", 1, id="monthly", children=[Flow("c", 2)]))
        again = await client.add_flow(Flow("p", 1, id="monthly", children=[Flow("c", 2)]))
        assert (again.id, again.children) == (first.id, [])
        assert (await client.counts("c"))["waiting"] == 1


async def test_children_complete_across_restarts_and_a_compaction(tmp_path: Path) -> None:
    data = tmp_path / "data"

    def broker() -> Broker:
        return Broker(port=0, data_dir=data, fsync="always", compact_floor=8192,
                      compact_ratio=1.5)

    first = broker()
    await first.start()
    try:
        async with Client(url_of(first)) as client:
            added = await client.add_flow(Flow("parent", "p", delay=0.0, children=[
                Flow("kids", i, on_failure="ignore" if i == 0 else "fail")
                for i in range(6)]))
            kids = [node.id for node in added.children]

            blocked = {2, 3, 4, 5}

            async def twice(job: Job) -> int:
                if job.data == 0:
                    raise RuntimeError("ignored")
                if job.data in blocked:
                    raise RateLimited(60)  # back in line, and the queue held, for this broker
                return int(job.data) * 2

            # Two children finish (one failing, ignored), then the broker goes down.
            worker = Worker("kids", twice, url=url_of(first), concurrency=1)
            async with running(worker):
                await eventually(lambda: _finished(client, kids[:2]), "two children done")
    finally:
        await first.close()
    second = broker()
    await second.start()
    try:
        async with Client(url_of(second)) as client:
            info = await client.get_job(added.id)
            assert info is not None
            assert (info.state, info.children_left) == (JobState.WAITING_CHILDREN, 4)
            assert await client.children_results(added.id) == {kids[1]: 2}
            await compacted(client, second)
            blocked.intersection_update({5})
            async with running(Worker("kids", twice, url=url_of(second), concurrency=1)):
                await eventually(lambda: _finished(client, kids[:5]), "five children done")
    finally:
        await second.close()
    third = broker()
    await third.start()
    try:
        async with Client(url_of(third)) as client:
            info = await client.get_job(added.id)
            assert info is not None and info.children_left == 1
            results: dict[int, Any] = {}

            async def parent(job: Job) -> None:
                results.update(await job.children_results())

            blocked.clear()
            async with running(Worker("kids", twice, url=url_of(third))), \
                    running(Worker("parent", parent, url=url_of(third))):
                await client.wait(added.id, timeout=10)
            assert results == {kid: index * 2 for index, kid in enumerate(kids) if index}
            assert list(await client.children_errors(added.id)) == [kids[0]]
    finally:
        await third.close()


def url_of(broker: Broker) -> str:
    return f"conveyor://127.0.0.1:{broker.port}"


async def _finished(client: Client, ids: list[int]) -> bool:
    for job_id in ids:
        info = await client.get_job(job_id)
        if info is None or info.finished_at is None:
            return False
    return True


async def test_every_queue_of_a_flow_needs_the_produce_permission(
        make_broker: MakeBroker) -> None:
    secret = make_secret("pw-Quokka-1")
    users = Users({"app": User(name="app", secret=secret, rules={
        Permission.PRODUCE: ("app.*",), Permission.READ: ("app.*",)})})
    broker = await make_broker(users=users)
    url = f"conveyor://app:pw-Quokka-1@127.0.0.1:{broker.port}"
    async with Client(url) as client:
        with pytest.raises(Forbidden, match="produce"):
            await client.add_flow(Flow("app.a", 1, children=[Flow("other", 2)]))
        added = await client.add_flow(Flow("app.a", 1, children=[Flow("app.b", 2)]))
        assert await client.children_results(added.id) == {}
        with pytest.raises(UnknownJob):
            await client.children_results(10**6)


async def test_a_parents_worker_with_only_consume_reads_its_childrens_results_in_pages(
        make_broker: MakeBroker) -> None:
    secret = make_secret("pw-Quokka-1")
    users = Users({
        "app": User(name="app", secret=secret, rules={Permission.PRODUCE: ("*",),
                                                      Permission.READ: ("*",)}),
        "worker": User(name="worker", secret=secret, rules={Permission.CONSUME: ("*",)}),
    })
    broker = await make_broker(users=users)
    app = f"conveyor://app:pw-Quokka-1@127.0.0.1:{broker.port}"
    worker = f"conveyor://worker:pw-Quokka-1@127.0.0.1:{broker.port}"
    sizes: list[int] = []

    async def handle(job: Job) -> str | int:
        if job.queue == "parts":
            return "x" * 200_000  # twelve of them take several frames of 1 MiB
        results = await job.children_results()
        sizes.extend(len(value) for value in results.values())
        return len(results)

    async with Client(app) as client:
        added = await client.add_flow(Flow("whole", None, children=[
            Flow("parts", n) for n in range(12)]))
        async with running(Worker("parts", handle, url=worker)), \
                running(Worker("whole", handle, url=worker)):
            assert await client.wait(added.id, timeout=30) == 12
        assert sizes == [200_000] * 12
        assert len(await client.children_results(added.id)) == 12


async def test_a_malformed_flow_is_refused_whole_naming_the_job(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    raw = await Raw.open(broker.port)
    try:
        cases = [
            ([{"queue": "p", "job": {"data": 1}, "parent": 0}], ErrorCode.INVALID_FIELD,
             "$.jobs[0]"),
            ([{"queue": "p", "job": {"data": 1}}, {"queue": "c", "job": {"data": 2},
                                                    "parent": 1}],
             ErrorCode.INVALID_FIELD, "$.jobs[1].parent"),
            ([{"queue": "p", "job": {"data": 1}}, {"queue": "c", "job": {"data": 2, "id": "k"},
                                                    "parent": 0}],
             ErrorCode.INVALID_FIELD, "$.jobs[1].job.id"),
            ([{"queue": "p", "job": {"data": 1}}, {"queue": "", "job": {"data": 2},
                                                    "parent": 0}],
             ErrorCode.INVALID_QUEUE, "$.jobs[1].queue"),
        ]
        for req, (jobs, code, where) in enumerate(cases, start=1):
            raw.send({"t": "add_flow", "req": req, "jobs": jobs})
            assert where in await raw.receive_error(code, req)
        assert (await raw.counts("p"))["waiting_children"] == 0
        assert (await raw.counts("c"))["waiting"] == 0
    finally:
        await raw.close()


async def test_children_in_groups_take_turns_and_their_parent_runs_after_them(url: str) -> None:
    started: list[str] = []

    async def handle(job: Job) -> str | None:
        if job.queue == "parts":
            started.append(str(job.group))
            return str(job.data)
        return None

    async with Client(url) as client:
        await client.set_limits("parts", group_concurrency=1)
        added = await client.add_flow(Flow("whole", None, children=[
            *(Flow("parts", f"a{n}", group="a") for n in range(6)),
            *(Flow("parts", f"b{n}", group="b") for n in range(2))]))
        async with running(Worker("parts", handle, url=url, concurrency=1)), \
                running(Worker("whole", handle, url=url)):
            await client.wait(added.id, timeout=10)
        results = await client.children_results(added.id)
    assert sorted(results.values()) == sorted([*(f"a{n}" for n in range(6)), "b0", "b1"])
    # Group b's two jobs start within the first four, not after group a's six.
    assert started[:4].count("b") == 2


async def test_a_flow_made_its_own_descendant_is_refused_not_looped_over(url: str) -> None:
    root = Flow("p", 1)
    child = Flow("c", 2, children=[root])
    root.children = (child,)  # a cycle: it would never end
    async with Client(url) as client:
        with pytest.raises(ValueError, match="frame limit"):
            await client.add_flow(root)
        assert await client.queues() == []
