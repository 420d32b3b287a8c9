"""A frame over the broker's limit whose length can still be read is skipped and answered with
``FRAME_TOO_LARGE``; the connection stays open, so a worker that sends one oversize result does
not lose every other job it holds."""

from __future__ import annotations

import struct
from typing import Any

import msgspec
from processes import eventually
from rawwire import Raw

from conveyor.broker import Broker
from conveyor.client import Client, JobState
from conveyor.protocol import ErrorCode

MAX_FRAME = 4096


async def _deliveries(worker: Raw, count: int) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    while len(jobs) < count:
        message = await worker.receive()
        assert message["t"] == "deliver", message
        jobs += message["jobs"]
    return jobs


async def test_an_oversize_result_is_answered_and_costs_no_other_job(make_broker: Any) -> None:
    broker: Broker = await make_broker(max_frame=MAX_FRAME)
    url = f"127.0.0.1:{broker.port}"
    worker = await Raw.open(broker.port)
    try:
        worker.send({"t": "subscribe", "req": 1, "queue": "q", "window": 4})
        assert (await worker.receive())["t"] == "ok"
        async with Client(url) as client:
            ids = await client.add_bulk("q", ["a", "b", "c", "d"])
            held = await _deliveries(worker, 4)
            big, *others = held
            # A result over the limit, written in pieces as a real socket would.
            body = msgspec.msgpack.encode({"t": "ack", "job": big["job"], "lease": big["lease"],
                                           "result": "x" * 10 * MAX_FRAME})
            frame = struct.pack(">I", len(body)) + body
            for at in range(0, len(frame), 3000):
                worker.write(frame[at:at + 3000])
                await worker.writer.drain()
            text = await worker.receive_error(ErrorCode.FRAME_TOO_LARGE)
            assert "'ack'" in text and f"job {big['job']}" in text and str(MAX_FRAME) in text
            # The connection is still the worker's: its other jobs complete as usual.
            for job in others:
                worker.send({"t": "ack", "job": job["job"], "lease": job["lease"],
                             "result": f"done {job['job']}"})
            for job in others:
                assert await client.wait(job["job"], timeout=5) == f"done {job['job']}"
            counts = await client.counts("q")
            assert (counts["completed"], counts["active"], counts["failed"]) == (3, 1, 0)
            info = await client.get_job(big["job"])
            assert info is not None and info.state is JobState.ACTIVE and info.attempt == 1
            # The worker can still report the job it could not ack.
            worker.send({"t": "fail", "job": big["job"], "lease": big["lease"], "retry": False,
                         "error": {"type": "ResultTooLarge", "message": "result too large"}})

            async def settled() -> bool:
                info = await client.get_job(big["job"])
                return info is None or info.state is not JobState.ACTIVE

            await eventually(settled, "the job is no longer active")
            info = await client.get_job(big["job"])
            assert info is not None and info.state is JobState.FAILED
            assert info.error is not None and info.error.type == "ResultTooLarge"
            assert sorted(ids) == sorted(job["job"] for job in held)
    finally:
        await worker.close()


async def test_an_oversize_request_is_answered_with_its_request_id(make_broker: Any) -> None:
    broker: Broker = await make_broker(max_frame=MAX_FRAME)
    raw = await Raw.open(broker.port)
    try:
        big = {"t": "add", "req": 9, "queue": "q", "jobs": [{"data": "x" * 3 * MAX_FRAME}]}
        raw.send(big)
        raw.send({"t": "add", "req": 10, "queue": "q", "jobs": [{"data": "fits"}]})
        assert "'add'" in await raw.receive_error(ErrorCode.FRAME_TOO_LARGE, req=9)
        added = await raw.receive()
        assert added["t"] == "added" and added["req"] == 10, added
        assert (await raw.counts("q"))["waiting"] == 1
        # A body being skipped is not held: only its first bytes are.
        raw.write(struct.pack(">I", 2 << 20) + b"\x84" + b"\0" * (1 << 20))
        await raw.writer.drain()
        session = next(iter(broker.sessions))
        await eventually(lambda: session.reader.partial, "the broker skips the body",
                         timeout=5)
        assert session.reader.buffered == 0
        raw.write(b"\0" * ((1 << 20) - 1))
        await raw.receive_error(ErrorCode.FRAME_TOO_LARGE)
        assert (await raw.counts("q"))["waiting"] == 1
    finally:
        await raw.close()
