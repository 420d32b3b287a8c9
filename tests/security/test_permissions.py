"""Permissions per queue pattern: every message type after the handshake, for a user holding
each permission alone, one holding none, and one holding all of them on other queues."""

from __future__ import annotations

import asyncio
import fnmatch
from typing import Any

import pytest
from security_support import (
    Raw,
    RawConnections,
    SecureBroker,
    client_messages,
    client_tags,
    req_of,
    url_of,
)

from conveyor.broker import Broker
from conveyor.client import Client, Forbidden, JobState
from conveyor.protocol import ClientMessage, ErrorCode, GetQueues
from conveyor.worker import Job, Worker

ALL = ("produce", "consume", "read", "admin")
USERS: dict[str, dict[str, Any]] = {
    "producer": {"produce": ["q*"]},
    "consumer": {"consume": ["q*"]},
    "reader": {"read": ["q*"]},
    "admin": {"admin": ["q*"]},
    "nobody": {},
    "outsider": {permission: ["other*"] for permission in ALL},
    "root": {permission: ["*"] for permission in ALL},
    "worker_a": {"consume": ["a*"], "read": ["a*"]},
}
for _name, _spec in USERS.items():
    _spec["password"] = f"pw-{_name}-Quokka"

NEEDS: dict[str, str | None] = {  # "a|b": either will do
    "add": "produce",
    "subscribe": "consume",
    "window": "consume",
    "ack": "consume",
    "fail": "consume",
    "release": "consume",
    "progress": "consume",
    "extend": "consume",
    "get_job": "read",
    "wait": "read",
    "get_counts": "read",
    "get_jobs": "read",
    "watch": "read",
    "promote": "admin",
    "remove": "admin",
    "pause": "admin",
    "retry_failed": "admin",
    "retry_failed_job": "admin",
    "drain": "admin",
    "clean": "admin",
    "get_queues": None,
    "get_stats": "read",
    "get_stats_all": None,
    "find_job": None,
    "unwait": None,
    "set_limits": "admin",
    "throttle": "consume",
    "set_schedule": "admin",
    "remove_schedule": None,
    "get_schedules": None,
    "add_flow": "produce",
    "get_children": "read|consume",
}
"""The permission each message needs on ``q1`` (or on the queue of a job in ``q1``)."""
TESTED_USERS = ("producer", "consumer", "reader", "admin", "nobody", "outsider")
REQ = 5
BARRIER = 99


def _url(broker: Broker, user: str) -> str:
    return url_of(broker.port, user, USERS[user]["password"])


async def _state(root: Client, job_id: int) -> tuple[Any, ...]:
    """What a refused request must leave as it was: the counts of ``q1``, its job and whether
    it is paused."""
    job = await root.get_job(job_id)
    queues = {queue.name: queue.paused for queue in await root.queues()}
    return await root.counts("q1"), None if job is None else job.state, queues


def test_the_table_covers_every_client_message() -> None:
    messages = client_messages("q1", 1, REQ)
    covered = {messages[key].__struct_config__.tag for key in NEEDS}
    assert covered == client_tags() - {"hello", "authenticate"}


ALLOWED: dict[str, str | ErrorCode | None] = {
    "add": "added",
    "subscribe": "ok",
    # Past the check, the request reaches the broker's handler, which answers it as usual.
    "window": ErrorCode.INVALID_QUEUE,
    "get_job": "job",
    "get_counts": "counts",
    "get_jobs": "jobs",
    "watch": "ok",
    "promote": ErrorCode.INVALID_STATE,
    "remove": "ok",
    "pause": "ok",
    "retry_failed": "count",
    "retry_failed_job": ErrorCode.INVALID_STATE,
    "drain": "count",
    "clean": "count",
    "get_queues": "queues",
    "get_stats": "stats",
    "get_stats_all": "stats",
    "find_job": "job",
    "set_limits": "ok",
    "set_schedule": "ok",
    "remove_schedule": ErrorCode.UNKNOWN_JOB,
    "get_schedules": "schedules",
    "add_flow": "added",
    "get_children": "children",
}
"""The reply to each request on ``q1`` (holding one waiting job) when it is allowed: a tag, or
the code of an ``error`` that is not ``FORBIDDEN``."""
LEASED = {"ack": JobState.COMPLETED, "fail": JobState.FAILED, "release": JobState.ACTIVE,
          "progress": JobState.ACTIVE, "throttle": JobState.WAITING}
"""The state the job is in after each notification about its lease, when allowed (a released
job is pushed again, at once, to the subscriber that let it go)."""


def _may(user: str, permission: str, queue: str) -> bool:
    return any(fnmatch.fnmatchcase(queue, glob) for either in permission.split("|")
               for glob in USERS[user].get(either, ()))


async def _take(connection: Raw, queue: str) -> int:
    """Subscribe ``connection`` to ``queue`` (one job at a time); the lease of the job pushed."""
    connection.send({"t": "subscribe", "req": 1, "queue": queue, "window": 1})
    pushed = [await connection.receive(), await connection.receive()]
    assert {push["t"] for push in pushed} == {"ok", "deliver"}, pushed
    (deliver,) = [push for push in pushed if push["t"] == "deliver"]
    lease = deliver["jobs"][0]["lease"]
    assert isinstance(lease, int)
    return lease


@pytest.mark.parametrize("user", TESTED_USERS)
@pytest.mark.parametrize("tag", list(NEEDS))
async def test_each_message_is_forbidden_exactly_without_its_permission(
        secure_broker: SecureBroker, raw: RawConnections, tag: str, user: str) -> None:
    broker = await secure_broker(USERS)
    permission = NEEDS[tag]
    allowed = permission is None or _may(user, permission, "q1")
    async with Client(_url(broker, "root")) as root:
        job_id = await root.add("q1", {"n": 1})
        connection = await raw.login(broker.port, user, USERS[user]["password"])
        message = client_messages("q1", job_id, REQ)[tag]
        if tag in LEASED and allowed:
            # The user holds the job, so that its notification has an effect to check.
            message = _with_lease(message, await _take(connection, "q1"))
        before = await _state(root, job_id)
        connection.send(message)
        connection.send(GetQueues(req=BARRIER))
        replies: list[dict[str, Any]] = []
        while not replies or replies[-1].get("req") != BARRIER:
            replies.append(await connection.receive())
        # The connection is still usable: the request behind it was answered.
        assert replies[-1]["t"] == "queues", replies
        answers = [reply for reply in replies[:-1]
                   if reply["t"] == "error" or reply.get("req") == REQ]
        if not allowed:
            assert len(answers) == 1, answers
            (error,) = answers
            assert error["t"] == "error" and error["code"] == ErrorCode.FORBIDDEN, error
            assert error["req"] == req_of(message), error
            assert f"'{str(permission).split('|')[0]}'" in error["message"], error
            assert await _state(root, job_id) == before
        elif tag in ALLOWED:
            (answer,) = answers
            expected = ALLOWED[tag]
            if isinstance(expected, ErrorCode):
                assert answer["t"] == "error" and answer["code"] == expected, answer
            else:
                assert answer["t"] == expected, answer
            assert answer["req"] == REQ, answer
        elif tag == "wait":
            # The wait is pending until the job finishes, then answered.
            assert answers == [], answers
            holder = await raw.login(broker.port, "root", USERS["root"]["password"])
            holder.send({"t": "ack", "job": job_id, "lease": await _take(holder, "q1"),
                         "result": None})
            finished = await connection.receive()
            assert finished["t"] == "finished" and finished["req"] == REQ, finished
        else:
            assert answers == [], answers
            info = await root.get_job(job_id)
            assert info is not None
            if tag in LEASED:
                assert info.state is LEASED[tag], info
            if tag == "progress":
                assert info.progress == {"n": 1}, info
            if tag == "release":
                assert any(reply["t"] == "deliver" and reply["jobs"][0]["job"] == job_id
                           for reply in replies), replies


def _with_lease(message: ClientMessage, lease: int) -> ClientMessage:
    """``message`` (about a job's lease) under ``lease``."""
    fields = {field: getattr(message, field) for field in message.__struct_fields__}
    return type(message)(**{**fields, "lease": lease})


async def test_a_job_is_judged_by_its_queue(secure_broker: SecureBroker,
                                            raw: RawConnections) -> None:
    broker = await secure_broker(USERS)
    async with Client(_url(broker, "root")) as root:
        in_q1 = await root.add("q1", {"n": 1})
        in_other = await root.add("other1", {"n": 2})
    async with Client(_url(broker, "outsider")) as outsider:
        info = await outsider.get_job(in_other)
        assert info is not None and info.queue == "other1"
        with pytest.raises(Forbidden) as refused:
            await outsider.get_job(in_q1)
        # The refusal does not tell the outsider the name of the job's queue.
        assert "'read'" in str(refused.value) and "q1" not in str(refused.value)
        await outsider.remove(in_other)
        with pytest.raises(Forbidden):
            await outsider.remove(in_q1)
        assert await outsider.get_job(in_other) is None


async def test_a_worker_with_consume_on_a_star_cannot_subscribe_to_b(
        secure_broker: SecureBroker) -> None:
    broker = await secure_broker(USERS)
    worker = Worker("b", lambda job: None, url=_url(broker, "worker_a"), reconnect=False)
    # The refusal itself, not wrapped in an ExceptionGroup: ``except Forbidden`` catches it.
    with pytest.raises(Forbidden) as refused:
        await asyncio.wait_for(worker.run(), 10)
    assert "'consume'" in str(refused.value) and "'b'" in str(refused.value)
    async with Client(_url(broker, "root")) as root:
        assert (await root.counts("b"))["workers"] == 0


async def test_a_worker_cannot_take_ack_or_see_jobs_of_another_queue(
        secure_broker: SecureBroker, raw: RawConnections) -> None:
    broker = await secure_broker(USERS)
    ran: list[str] = []

    async def record(job: Job) -> str:
        ran.append(job.queue)
        return "done"

    async with Client(_url(broker, "root")) as root:
        in_b = await root.add("b", {"n": 1})
        in_a = await root.add("a1", {"n": 2})
        worker = Worker("a1", record, url=_url(broker, "worker_a"))
        running = asyncio.create_task(worker.run())
        try:
            assert await root.wait(in_a, timeout=10) == "done"
        finally:
            await worker.close()
            await running
        assert ran == ["a1"]
        info = await root.get_job(in_b)
        assert info is not None and info.state is JobState.WAITING

        # Another connection holds the job of ``b``; worker_a knows its id and lease.
        holder = await raw.login(broker.port, "root", USERS["root"]["password"])
        holder.send({"t": "subscribe", "req": 1, "queue": "b", "window": 1})
        pushed = [await holder.receive(), await holder.receive()]
        (deliver,) = [message for message in pushed if message["t"] == "deliver"]
        lease = deliver["jobs"][0]["lease"]
        assert deliver["jobs"][0]["job"] == in_b

        sneaky = await raw.login(broker.port, "worker_a", USERS["worker_a"]["password"])
        messages = client_messages("b", in_b, REQ)
        for tag in ("subscribe", "ack", "fail", "release", "progress", "get_job", "get_jobs",
                    "get_counts", "wait"):
            message = messages[tag]
            if hasattr(message, "lease"):
                message = _with_lease(message, lease)
            sneaky.send(message)
            error = await sneaky.receive()
            assert error["t"] == "error" and error["code"] == ErrorCode.FORBIDDEN, (tag, error)
            assert error["req"] == req_of(message), (tag, error)
        sneaky.send(GetQueues(req=BARRIER))
        queues = await sneaky.receive()
        assert [queue["name"] for queue in queues["queues"]] == ["a1"], queues
        info = await root.get_job(in_b)
        assert info is not None and info.state is JobState.ACTIVE
        assert (await root.counts("b"))["workers"] == 1


async def test_a_producer_cannot_drain(secure_broker: SecureBroker) -> None:
    broker = await secure_broker(USERS)
    async with Client(_url(broker, "producer")) as producer:
        await producer.add("q1", {"n": 1})
        with pytest.raises(Forbidden) as refused:
            await producer.drain("q1")
        assert "'admin'" in str(refused.value) and "'q1'" in str(refused.value)
        await producer.add("q1", {"n": 2})
    async with Client(_url(broker, "root")) as root:
        assert (await root.counts("q1"))["waiting"] == 2


async def test_get_queues_lists_only_queues_the_user_has_a_right_on(
        secure_broker: SecureBroker) -> None:
    broker = await secure_broker(USERS)
    names = ["a1", "other1", "q1", "q2", "zzz"]
    async with Client(_url(broker, "root")) as root:
        for name in names:
            await root.add(name, {"n": 1})
        assert sorted(queue.name for queue in await root.queues()) == names
    expected = {"producer": ["q1", "q2"], "consumer": ["q1", "q2"], "reader": ["q1", "q2"],
                "admin": ["q1", "q2"], "nobody": [], "outsider": ["other1"],
                "worker_a": ["a1"]}
    for user, visible in expected.items():
        async with Client(_url(broker, user)) as client:
            assert sorted(queue.name for queue in await client.queues()) == visible, user


async def test_a_schedule_is_removed_only_by_an_admin_of_its_queue_and_listed_to_its_readers(
        secure_broker: SecureBroker) -> None:
    broker = await secure_broker(USERS)
    async with Client(_url(broker, "root")) as root:
        await root.set_schedule("in-q", "q1", {"n": 1}, every=3600)
        await root.set_schedule("in-other", "other1", {"n": 2}, every=3600)
        for user in ("producer", "consumer", "reader", "outsider"):
            async with Client(_url(broker, user)) as client:
                with pytest.raises(Forbidden):
                    await client.remove_schedule("in-q")
        async with Client(_url(broker, "reader")) as reader:
            assert [info.schedule.id for info in await reader.schedules()] == ["in-q"]
        async with Client(_url(broker, "outsider")) as outsider:
            assert [info.schedule.id for info in await outsider.schedules()] == ["in-other"]
        async with Client(_url(broker, "nobody")) as nobody:
            assert await nobody.schedules() == []
        async with Client(_url(broker, "admin")) as admin:
            await admin.remove_schedule("in-q")
        assert [info.schedule.id for info in await root.schedules()] == ["in-other"]
