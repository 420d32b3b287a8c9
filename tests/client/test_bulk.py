"""How ``add_bulk`` splits a bulk add into frames and applies options."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from conveyor.broker import Broker
from conveyor.client import (
    BulkAddFailed,
    Client,
    ConnectionLost,
    JobInfo,
    JobSpec,
    ProtocolViolation,
    exponential,
)
from conveyor.client.frames import BULK_FRAME_JOBS, FIRST_FRAME_JOBS, chunks
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


def test_small_jobs_go_in_a_short_first_frame_then_full_ones() -> None:
    runs = list(chunks(5_000, None, 1 << 20))
    assert runs[0] == (0, FIRST_FRAME_JOBS)
    assert all(stop - start == BULK_FRAME_JOBS for start, stop in runs[1:-1])
    assert runs[-1][1] == 5_000
    assert [start for start, _ in runs[1:]] == [stop for _, stop in runs[:-1]]


def test_large_jobs_split_by_bytes() -> None:
    sizes = [300] * 100
    runs = list(chunks(len(sizes), sizes, 1_000))
    assert all(sum(sizes[start:stop]) <= 1_000 for start, stop in runs)
    assert runs[-1][1] == 100 and runs[0][0] == 0


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    broker = Broker(port=0, max_frame=64 * 1024)
    await broker.start()
    try:
        async with Client(f"127.0.0.1:{broker.port}") as connected:
            yield connected
    finally:
        await broker.close()


async def test_call_options_apply_to_every_payload_and_a_spec_keeps_its_own(
        client: Client) -> None:
    ids = await client.add_bulk(
        "bulk", [{"n": 0}, JobSpec({"n": 1}, priority=7, attempts=2), {"n": 2}],
        priority=3, attempts=4, backoff=exponential(1.0))
    jobs = [await client.get_job(job_id) for job_id in ids]
    assert [(job.priority, job.attempts) for job in jobs if job] == [(3, 4), (7, 2), (3, 4)]
    assert [job.data for job in jobs if job] == [{"n": 0}, {"n": 1}, {"n": 2}]


async def test_many_jobs_over_a_small_frame_limit_keep_their_order(client: Client) -> None:
    payloads = [{"n": n, "pad": "x" * 500} for n in range(3_000)]
    ids = await client.add_bulk("bulk", payloads)
    assert ids == sorted(ids) and len(set(ids)) == 3_000
    waiting: list[JobInfo] = []
    while len(waiting) < len(ids):  # pages are bounded by the frame limit as well as by count
        page = await client.get_jobs("bulk", "waiting", offset=len(waiting), limit=10_000)
        assert page, f"no page at offset {len(waiting)}"
        waiting += page
    assert [job.id for job in waiting] == ids  # they wait in the order given
    data = {job.id: job.data for job in waiting}
    assert [data[job_id] for job_id in ids] == payloads  # ids[i] is the job of payloads[i]


async def test_an_oversize_payload_is_refused_before_anything_is_sent(client: Client) -> None:
    with pytest.raises(ValueError, match="job 2 is .* bytes encoded .its payload 70,005.; the "
                                         "broker's frame limit is 65,536 bytes"):
        await client.add_bulk("bulk", [{"n": 0}, {"n": 1}, "x" * 70_000])
    with pytest.raises(ValueError, match="attempts"):
        await client.add_bulk("bulk", [{"n": 0}], attempts=0)
    assert (await client.counts("bulk"))["waiting"] == 0


async def test_a_bulk_add_names_its_first_job_that_cannot_be_sent(client: Client) -> None:
    # Job 0 fits in an add frame but not, delivered, in a deliver frame; job 1 fits in neither.
    undeliverable = "x" * (deliverable_payload("bulk", client.connection.max_frame) - 2)
    with pytest.raises(ValueError, match="payload 0 is .*; delivered, it would not fit"):
        await client.add_bulk("bulk", [undeliverable, "x" * 70_000])
    with pytest.raises(ValueError, match="payload is .*; delivered, it would not fit"):
        await client.add("bulk", undeliverable)
    assert (await client.counts("bulk"))["waiting"] == 0


async def test_a_bulk_add_refused_after_some_frames_were_added_carries_their_ids(
        client: Client) -> None:
    # The broker checks a backoff policy's fields; the client does not, so the frame holding
    # this job is refused after the first frame was added, and the frames after it are added.
    bad = FIRST_FRAME_JOBS + 36
    count = FIRST_FRAME_JOBS + BULK_FRAME_JOBS + 10
    payloads: list[object] = [{"n": n} for n in range(count)]
    payloads[bad] = JobSpec({"n": bad}, backoff=exponential(1.0, jitter=2.0))
    with pytest.raises(BulkAddFailed) as failed:
        await client.add_bulk("partial", payloads)
    error = failed.value
    assert isinstance(error.error, ProtocolViolation) and error.__cause__ is error.error
    assert "jitter" in str(error.error)
    assert len(error.ids) == count and error.ids[bad] is None
    assert error.ids[0] is not None and error.ids[-1] is not None
    assert error.added_ids == [job_id for job_id in error.ids if job_id is not None]
    assert f"{len(error.added_ids)} of {count} jobs were added" in str(error)
    waiting = await client.get_jobs("partial", "waiting", limit=10_000)
    assert sorted(job.id for job in waiting) == sorted(error.added_ids)
    data = {job.id: job.data for job in waiting}
    assert all(data[job_id] == {"n": n} for n, job_id in enumerate(error.ids)
               if job_id is not None)


async def test_a_bulk_add_refused_in_its_first_frame_adds_nothing_and_says_why(
        client: Client) -> None:
    with pytest.raises(ProtocolViolation, match="jitter"):
        await client.add_bulk("nothing", [1, JobSpec(2, backoff=exponential(1.0, jitter=2.0))])
    assert (await client.counts("nothing"))["waiting"] == 0


async def test_a_connection_lost_after_the_first_frame_was_added_carries_its_ids() -> None:
    # A stand-in broker that adds the first frame, then drops the connection on the second.
    decoder: MessageDecoder[ClientMessage] = MessageDecoder(ClientMessage)
    encoder = FrameEncoder()
    next_id = 100

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal next_id
        frames = FrameReader()
        adds = 0
        while data := await reader.read(65536):
            for body in frames.feed(data):
                message = decoder.decode(body)
                if isinstance(message, Hello):
                    writer.write(encoder.frame(Welcome(version=PROTOCOL_VERSION, server="fake",
                                                       max_frame=DEFAULT_MAX_FRAME)))
                elif isinstance(message, Add):
                    adds += 1
                    if adds == 2:
                        writer.close()
                        return
                    ids = list(range(next_id, next_id + len(message.jobs)))
                    next_id += len(ids)
                    writer.write(encoder.frame(Added(req=message.req, ids=ids)))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with Client(f"127.0.0.1:{port}", reconnect=False) as client:
            with pytest.raises(BulkAddFailed) as failed:
                await client.add_bulk("lost", range(FIRST_FRAME_JOBS + 100))
    finally:
        server.close()
        await server.wait_closed()
    error = failed.value
    assert isinstance(error.error, ConnectionLost)
    assert error.added_ids == list(range(100, 100 + FIRST_FRAME_JOBS))
    assert error.ids == [*error.added_ids, *[None] * 100]
