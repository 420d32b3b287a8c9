"""What the client puts in ``add`` frames: never a frame over the broker's limit, whatever the
jobs' options and payloads, and no option left at its default."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conveyor.broker import Broker
from conveyor.client import Client, JobOptions, JobSpec, exponential
from conveyor.client.options import job_def
from conveyor.protocol import (
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    Add,
    Added,
    ClientMessage,
    FrameEncoder,
    FrameReader,
    Hello,
    MessageDecoder,
    Welcome,
    deliverable_payload,
)

MAX_FRAME = 4096
"""The broker's frame limit here: the smallest the broker's command line allows."""
MAX_REQ = (1 << 63) - 1

seconds = st.floats(min_value=0, max_value=1e300, allow_nan=False)
options: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries({}, optional={
    "id": st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=255),
    "name": st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=128),
    "priority": st.integers(-(1 << 31), (1 << 31) - 1),
    "attempts": st.integers(1, 1_000_000),
    "backoff": st.one_of(seconds, st.builds(
        exponential, seconds, cap=st.none() | seconds,
        jitter=st.floats(min_value=0, max_value=1))),
    "timeout": st.floats(min_value=0, max_value=1e300, exclude_min=True),
    "delay": seconds,
    "run_at": st.floats(allow_nan=False, allow_infinity=False),
    "keep_result": seconds,
})
sizes = st.one_of(st.integers(0, 200), st.integers(0, MAX_FRAME + 64),
                  st.integers(MAX_FRAME - 400, MAX_FRAME + 64))
"""Payload sizes: small ones (frames of many jobs), any, and ones at the frame limit."""
payloads = st.one_of(sizes.map(bytes), sizes.map(lambda size: "é" * (size // 2)),
                     st.integers(-(1 << 63), (1 << 64) - 1), st.none())


@st.composite
def bulks(draw: st.DrawFn) -> list[object]:
    """Many payloads of one size, with a few ``JobSpec`` of their own among them."""
    count = draw(st.integers(1, 300))
    given: list[object] = [bytes(draw(sizes))] * count
    for index, data, spec_options in draw(st.lists(
            st.tuples(st.integers(0, count - 1), payloads, options), max_size=5)):
        given[index] = JobSpec(data, **spec_options)
    return given


queues = st.text(st.characters(exclude_categories=["Cc", "Cs"]), min_size=1, max_size=80)


def job_options(job: object, call: JobOptions) -> JobOptions:
    return job.options() if isinstance(job, JobSpec) else call


def frame_of_one(queue: str, job: object, call: JobOptions) -> int:
    """Bytes of an ``add`` frame holding ``job`` alone, with the largest request id."""
    data = job.data if isinstance(job, JobSpec) else job
    wire = job_def(msgspec.Raw(msgspec.msgpack.encode(data)), **job_options(job, call))
    return len(msgspec.msgpack.encode(Add(req=MAX_REQ, queue=queue, jobs=[wire])))


def sendable(queue: str, job: object, call: JobOptions) -> bool:
    """Whether ``job`` fits in an ``add`` frame, and its delivery in a ``deliver`` frame."""
    data = job.data if isinstance(job, JobSpec) else job
    wire = job_def(msgspec.Raw(msgspec.msgpack.encode(data)), **job_options(job, call))
    return (frame_of_one(queue, job, call) <= MAX_FRAME
            and len(wire.data) <= deliverable_payload(queue, MAX_FRAME, attempts=wire.attempts,
                                                      timeout=wire.timeout, name=wire.name))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(queue=queues.filter(lambda queue: len(queue.encode()) <= 255), given_jobs=bulks(),
       call=options)
@example(queue="q", given_jobs=[bytes(120)] * 300, call={})  # 64 of them over 4,096 bytes
# A payload deliverable without options but not with the call's attempts (a 2-byte int).
@example(queue="\xa0" * 6 + "\U00010000", given_jobs=[bytes(3999), b"", b"", b""],
         call={"attempts": 128})
def test_every_frame_of_a_bulk_add_is_within_the_brokers_limit(
        queue: str, given_jobs: list[object], call: dict[str, Any]) -> None:
    call_options: JobOptions = call  # type: ignore[assignment]
    fits = [sendable(queue, job, call_options) for job in given_jobs]

    async def run() -> None:
        broker = Broker(port=0, max_frame=MAX_FRAME)
        await broker.start()
        try:
            async with Client(f"127.0.0.1:{broker.port}", reconnect=False) as client:
                if all(fits):
                    ids = await client.add_bulk(queue, given_jobs, **call_options)
                    assert len(ids) == len(given_jobs)
                else:
                    with pytest.raises(ValueError,
                                       match=f"(job|payload) {fits.index(False)} is"):
                        await client.add_bulk(queue, given_jobs, **call_options)
                first = given_jobs[0]
                data = first.data if isinstance(first, JobSpec) else first
                if fits[0]:
                    await client.add(queue, data, **job_options(first, call_options))
                else:
                    with pytest.raises(ValueError, match="(job|payload) is"):
                        await client.add(queue, data, **job_options(first, call_options))
                counts = await client.counts(queue)
                added = all(fits) or fits[0]
                assert (counts["waiting"] + counts["delayed"] > 0) == added
                assert client.connection.failure is None  # no frame made the broker hang up
        finally:
            await broker.close()

    asyncio.run(run())


# What goes on the wire, seen by a stand-in broker.


@pytest.fixture
async def sent() -> AsyncIterator[tuple[str, list[list[dict[str, Any]]]]]:
    """A stand-in broker's address, and the jobs of every ``add`` it received, as plain maps."""
    decoder: MessageDecoder[ClientMessage] = MessageDecoder(ClientMessage)
    encoder = FrameEncoder()
    received: list[list[dict[str, Any]]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = FrameReader()
        while data := await reader.read(65536):
            for body in frames.feed(data):
                message = decoder.decode(body)
                if isinstance(message, Hello):
                    writer.write(encoder.frame(Welcome(version=PROTOCOL_VERSION, server="fake",
                                                       max_frame=DEFAULT_MAX_FRAME)))
                elif isinstance(message, Add):
                    received.append(msgspec.msgpack.decode(body)["jobs"])
                    ids = list(range(1, len(message.jobs) + 1))
                    writer.write(encoder.frame(Added(req=message.req, ids=ids)))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}", received
    finally:
        server.close()
        await server.wait_closed()


async def test_options_at_their_defaults_are_not_sent(
        sent: tuple[str, list[list[dict[str, Any]]]]) -> None:
    url, received = sent
    async with Client(url) as client:
        await client.add("q", 1)
        await client.add("q", 2, delay=0, priority=0, attempts=1, id=None, backoff=exponential(2))
        await client.add("q", 3, delay=0.0, backoff=exponential(1.0, cap=None, jitter=0.0))
        await client.add_bulk("q", [4, JobSpec(5, delay=0.0, priority=0)], delay=0.0)
        await client.add("q", 6, delay=1.5, backoff=2.0)
    assert received == [
        [{"data": 1}],
        [{"data": 2, "backoff": {"type": "exponential", "delay": 2}}],
        [{"data": 3, "backoff": {"type": "exponential", "delay": 1.0}}],
        [{"data": 4}, {"data": 5}],
        [{"data": 6, "backoff": {"type": "fixed", "delay": 2.0}, "delay": 1.5}],
    ]



async def test_a_bulk_add_checks_each_payload_against_its_own_options(make_broker: Any) -> None:
    broker = await make_broker(max_frame=MAX_FRAME)
    async with Client(f"127.0.0.1:{broker.port}", reconnect=False) as client:
        most = deliverable_payload("q", MAX_FRAME)  # for a job without options
        payload = bytes(most - 3)  # encoded with its 3-byte header: exactly that
        assert len(msgspec.msgpack.encode(payload)) == most
        cases: list[tuple[dict[str, Any], list[object], int]] = [
            ({"attempts": 1000}, [payload, b""], 0),
            ({}, [b"", JobSpec(payload, name="resize")], 1),
        ]
        for call, jobs, index in cases:
            with pytest.raises(ValueError, match=f"payload {index} is"):
                await client.add_bulk("q", jobs, **call)
        assert (await client.counts("q"))["waiting"] == 0  # nothing was sent
        assert client.connection.failure is None
        assert len(await client.add_bulk("q", [payload, b""])) == 2  # without options it fits
