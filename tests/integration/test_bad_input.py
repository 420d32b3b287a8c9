"""Bad input reaches a real broker over a raw socket and gets a precise ``error`` frame; the broker
keeps serving everyone else. Also the client's side of failures: a refused connection, a broker
that goes away, a payload that cannot be sent, and an ack under a lease that was taken back.

Raw frames are built by hand (4-byte big-endian length, MessagePack map with a ``t`` tag) and
replies are decoded as plain maps, so these tests do not lean on the code they check.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
from rawwire import Raw as RawConnection

from conveyor.broker import Broker
from conveyor.client import Client, ConnectionLost, JobState, RequestRefused, UnknownJob
from conveyor.protocol import PROTOCOL_VERSION, ErrorCode

if TYPE_CHECKING:
    from integration_support import BrokerProcess

MakeBroker = Callable[..., Awaitable[Broker]]
"""The ``make_broker`` fixture."""

REPLY_TIMEOUT = 5.0
"""Seconds to wait for a reply from the broker."""


def raw_port(connection: RawConnection) -> int:
    """The broker port ``connection`` is connected to."""
    return int(connection.writer.get_extra_info("peername")[1])


async def assert_still_serving(url: str) -> None:
    """A well-behaved client can still add a job and read the counts."""
    async with Client(url) as client:
        job = await client.add("after-bad-input", {"ok": True})
        assert job > 0
        counts = await client.counts("after-bad-input")
    assert counts["waiting"] + counts["active"] + counts["completed"] >= 1


# Malformed frames.


@pytest.mark.parametrize("body", [
    pytest.param(b"\xc1", id="reserved-byte"),
    pytest.param(b"\x83\xa1t\xa3add\xa3req", id="truncated"),
    pytest.param(msgspec.msgpack.encode({"t": "get_counts", "req": 1, "queue": "q"}) + b"\xff",
                 id="trailing-byte"),
])
async def test_a_malformed_messagepack_body_is_refused_and_the_connection_stays_usable(
    raw: RawConnection, url: str, body: bytes
) -> None:
    raw.send_body(body)
    text = await raw.receive_error(ErrorCode.MALFORMED_FRAME)
    assert "MessagePack" in text
    assert (await raw.counts("q"))["waiting"] == 0
    await assert_still_serving(url)


def add_of_size(size: int) -> bytes:
    """An ``add`` message body of exactly ``size`` bytes (padded with a field the broker skips:
    a payload that large could not be delivered within the limit)."""
    for padding in range(size):
        body = msgspec.msgpack.encode(
            {"t": "add", "req": 2, "queue": "q", "jobs": [{"data": "x"}], "pad": "x" * padding})
        if len(body) == size:
            return body
    raise AssertionError(f"no add body of {size} bytes")


async def test_an_oversize_length_prefix_is_refused_and_the_connection_closed(
    make_broker: MakeBroker
) -> None:
    broker = await make_broker(max_frame=4096)
    raw = await RawConnection.open(broker.port)
    try:
        # A frame of exactly the limit is fine.
        raw.send_body(add_of_size(4096))
        added = await raw.receive()
        assert added["t"] == "added" and added["req"] == 2, added
        # Only the prefix is sent: the broker must judge it before any of the body arrives. (A
        # length up to 64 MiB would be skipped and answered: see test_oversize_frames.py.)
        raw.writer.write(struct.pack(">I", (64 << 20) + 1))
        text = await raw.receive_error(ErrorCode.FRAME_TOO_LARGE)
        assert str((64 << 20) + 1) in text and "4096" in text
        assert await raw.is_closed_by_peer()
    finally:
        await raw.close()
    await assert_still_serving(f"127.0.0.1:{broker.port}")


# Undecodable messages.


@pytest.mark.parametrize(("message", "named"), [
    pytest.param({"t": "explode", "req": 7}, "explode", id="unknown-tag"),
    pytest.param({"req": 7, "queue": "q"}, "`t`", id="missing-tag"),
    pytest.param({"t": 5, "req": 7}, "$.t", id="tag-not-a-string"),
])
async def test_an_unknown_message_type_is_refused(
    raw: RawConnection, url: str, message: dict[str, Any], named: str
) -> None:
    raw.send(message)
    text = await raw.receive_error(ErrorCode.UNKNOWN_MESSAGE, req=7)
    assert named in text
    assert (await raw.counts("q"))["waiting"] == 0
    await assert_still_serving(url)


@pytest.mark.parametrize(("message", "path"), [
    pytest.param({"t": "add", "req": 3, "queue": 12, "jobs": []}, "$.queue", id="add-queue"),
    pytest.param({"t": "add", "req": 3, "queue": "q", "jobs": "x"}, "$.jobs", id="add-jobs"),
    pytest.param({"t": "add", "req": 3, "queue": "q", "jobs": [{"data": 1}, {"payload": 2}]},
                 "$.jobs[1]", id="add-job-without-data"),
    pytest.param({"t": "subscribe", "req": 3, "queue": "q", "window": "ten"}, "$.window",
                 id="subscribe-window"),
    pytest.param({"t": "subscribe", "req": 3, "queue": "q", "window": -1}, "$.window",
                 id="subscribe-negative-window"),
    pytest.param({"t": "get_job", "req": 3, "job": "one"}, "$.job", id="get-job-id"),
    pytest.param({"t": "get_counts", "req": 3}, "queue", id="get-counts-missing-queue"),
])
async def test_a_field_of_the_wrong_type_is_refused_naming_its_path(
    raw: RawConnection, url: str, message: dict[str, Any], path: str
) -> None:
    raw.send(message)
    text = await raw.receive_error(ErrorCode.INVALID_FIELD, req=3)
    assert path in text
    # Nothing happened: no job was added to "q".
    assert (await raw.counts("q"))["waiting"] == 0
    await assert_still_serving(url)


# Invalid queue names.


@pytest.mark.parametrize(("queue", "problem"), [
    pytest.param("", "empty", id="empty"),
    pytest.param("x" * 256, "256 bytes", id="256-bytes"),
    pytest.param("é" * 128, "256 bytes", id="256-utf8-bytes"),
    pytest.param("emails\nurgent", "control character", id="control-character"),
])
@pytest.mark.parametrize("request_type", ["add", "subscribe", "get_counts"])
async def test_an_invalid_queue_name_is_refused(
    raw: RawConnection, url: str, request_type: str, queue: str, problem: str
) -> None:
    message: dict[str, Any] = {"t": request_type, "req": 9, "queue": queue}
    if request_type == "add":
        message["jobs"] = [{"data": "payload"}]
    elif request_type == "subscribe":
        message["window"] = 1
    raw.send(message)
    text = await raw.receive_error(ErrorCode.INVALID_QUEUE, req=9)
    assert problem in text
    assert (await raw.counts("q"))["waiting"] == 0
    await assert_still_serving(url)


async def test_a_queue_name_of_255_bytes_is_accepted(url: str) -> None:
    async with Client(url) as client:
        await client.add("x" * 255, "payload")
        assert (await client.counts("x" * 255))["waiting"] == 1


# The handshake.


async def test_a_message_before_hello_is_refused_and_the_connection_closed(
    broker: Broker, url: str
) -> None:
    raw = await RawConnection.open(broker.port, hello=False)
    try:
        raw.send({"t": "get_counts", "req": 4, "queue": "q"})
        text = await raw.receive_error(ErrorCode.HANDSHAKE_REQUIRED, req=4)
        assert "hello" in text and "get_counts" in text
        assert await raw.is_closed_by_peer()
    finally:
        await raw.close()
    await assert_still_serving(url)


async def test_a_wrong_protocol_version_is_refused_and_the_connection_closed(
    broker: Broker, url: str
) -> None:
    raw = await RawConnection.open(broker.port, hello=False)
    try:
        raw.send({"t": "hello", "version": PROTOCOL_VERSION + 1, "client": "from the future"})
        text = await raw.receive_error(ErrorCode.VERSION_MISMATCH)
        assert str(PROTOCOL_VERSION + 1) in text and str(PROTOCOL_VERSION) in text
        assert await raw.is_closed_by_peer()
    finally:
        await raw.close()
    await assert_still_serving(url)


# Limits and failures, as a client sees them.


async def test_a_connection_over_the_limit_is_refused_with_too_many_connections(
    make_broker: MakeBroker
) -> None:
    broker = await make_broker(max_connections=2)
    url = f"127.0.0.1:{broker.port}"
    async with Client(url) as first, Client(url) as second:
        raw = await RawConnection.open(broker.port, hello=False)
        try:
            text = await raw.receive_error(ErrorCode.TOO_MANY_CONNECTIONS)
            assert "connection" in text and "2" in text
            assert await raw.is_closed_by_peer()
        finally:
            await raw.close()
        with pytest.raises(RequestRefused) as refused:
            await Client(url).connect()
        assert refused.value.code == ErrorCode.TOO_MANY_CONNECTIONS
        # The two connections within the limit are unaffected.
        await first.add("limited", 1)
        assert (await second.counts("limited"))["waiting"] == 1
    # Once they close, there is room again.
    deadline = time.monotonic() + REPLY_TIMEOUT
    while True:
        try:
            await assert_still_serving(url)
            break
        except RequestRefused:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


async def test_every_pending_call_fails_promptly_when_the_broker_process_dies(
    broker_process: BrokerProcess
) -> None:
    async with Client(broker_process.url, reconnect=False) as client:
        jobs = [await client.add("orphans", n) for n in range(3)]
        waits = [asyncio.ensure_future(client.wait(job)) for job in jobs]
        await asyncio.sleep(0.1)
        assert not any(wait.done() for wait in waits)
        broker_process.process.kill()
        async with asyncio.timeout(2):
            outcomes = await asyncio.gather(*waits, return_exceptions=True)
        assert all(isinstance(outcome, ConnectionLost) for outcome in outcomes), outcomes
        with pytest.raises(ConnectionLost):
            await client.counts("orphans")


async def test_every_pending_call_fails_promptly_when_the_broker_closes(
    broker: Broker, url: str
) -> None:
    async with Client(url, reconnect=False) as client:
        job = await client.add("orphans", "payload")
        waits = [asyncio.ensure_future(client.wait(job)) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert not any(wait.done() for wait in waits)
        async with asyncio.timeout(2):
            await broker.close()
            outcomes = await asyncio.gather(*waits, return_exceptions=True)
        assert all(isinstance(outcome, ConnectionLost) for outcome in outcomes), outcomes
        with pytest.raises(ConnectionLost):
            await client.add("orphans", "another")


async def test_an_unserializable_payload_raises_type_error_before_anything_is_sent(
    url: str
) -> None:
    async with Client(url) as client:
        with pytest.raises(TypeError, match="payload"):
            await client.add("strict", {"callback": object()})
        with pytest.raises(TypeError, match="payload 2"):
            await client.add_bulk("strict", [1, 2, {"callback": object()}, 4])
        counts = await client.counts("strict")
        assert counts["waiting"] + counts["active"] + counts["completed"] == 0
        # The connection is unharmed.
        await client.add("strict", "fine")
        assert (await client.counts("strict"))["waiting"] == 1


async def test_an_ack_under_a_stale_lease_changes_nothing(
    raw: RawConnection, url: str
) -> None:
    queue = "leases"
    raw.send({"t": "subscribe", "req": 1, "queue": queue, "window": 1})
    assert await raw.receive() == {"t": "ok", "req": 1}
    async with Client(url) as client:
        job = await client.add(queue, {"n": 1})
        first = await raw.receive()
        assert first["t"] == "deliver" and first["jobs"][0]["job"] == job, first
        old_lease = first["jobs"][0]["lease"]
        # Hand it back: it is delivered again, under a new lease.
        raw.send({"t": "release", "job": job, "lease": old_lease})
        second = await raw.receive()
        assert second["t"] == "deliver" and second["jobs"][0]["job"] == job, second
        new_lease = second["jobs"][0]["lease"]
        assert new_lease != old_lease
        # Acks under the old lease, and under a lease never given, are ignored...
        raw.send({"t": "ack", "job": job, "lease": old_lease, "result": "stale"})
        raw.send({"t": "ack", "job": job, "lease": new_lease + 1000, "result": "bogus"})
        counts = await raw.counts(queue)
        assert (counts["active"], counts["completed"]) == (1, 0), counts
        info = await client.get_job(job)
        assert info is not None and info.state is JobState.ACTIVE
        # An ack from a connection that does not hold the lease is ignored too.
        other = await RawConnection.open(raw_port(raw))
        try:
            other.send({"t": "ack", "job": job, "lease": new_lease, "result": "stolen"})
            assert (await other.counts(queue))["completed"] == 0
        finally:
            await other.close()
        # ...and the ack under the current lease completes the job with its result.
        raw.send({"t": "ack", "job": job, "lease": new_lease, "result": "fresh"})
        assert await client.wait(job, timeout=REPLY_TIMEOUT) == "fresh"


async def test_waiting_on_or_reading_an_unknown_job_says_so(url: str) -> None:
    async with Client(url) as client:
        with pytest.raises(UnknownJob) as unknown:
            await client.wait(987654321, timeout=REPLY_TIMEOUT)
        assert unknown.value.code == ErrorCode.UNKNOWN_JOB
        assert "987654321" in str(unknown.value)
        assert await client.get_job(987654321) is None
        await client.add("after-unknown", 1)
