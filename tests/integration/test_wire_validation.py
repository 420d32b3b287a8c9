"""Values outside the wire's domain, sent to a real broker over a raw socket, get a precise
``error`` and leave the connection usable: floats that are not finite numbers, integers out of
their ranges, MessagePack nested a thousand deep. What the broker logs of a bad message is
escaped, and no frame the broker sends exceeds the limit it announced."""

from __future__ import annotations

import logging
import math
from typing import Any

import msgspec
import pytest
from rawwire import Raw

from conveyor.protocol import ErrorCode

MAX_OFFSET = (1 << 63) - 1
"""The last offset `get_jobs` takes (int64)."""


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("field", ["delay", "run_at", "timeout", "keep_result"])
async def test_a_job_option_that_is_not_a_finite_number_is_refused(
    raw: Raw, field: str, value: float
) -> None:
    raw.send({"t": "add", "req": 3, "queue": "q", "jobs": [{"data": 1}, {"data": 2, field: value}]})
    text = await raw.receive_error(ErrorCode.INVALID_ARGUMENT, req=3)
    assert f"$.jobs[1].{field}" in text
    # Nothing was added, and the connection goes on.
    assert (await raw.counts("q"))["waiting"] == 0
    raw.send({"t": "add", "req": 4, "queue": "q", "jobs": [{"data": 1, field: 1.0}]})
    assert (await raw.receive())["t"] == "added"


async def test_a_backoff_or_fail_delay_that_is_not_finite_is_refused(raw: Raw) -> None:
    raw.send({"t": "add", "req": 3, "queue": "q",
              "jobs": [{"data": 1, "backoff": {"type": "exponential", "delay": 1.0,
                                                "cap": math.inf}}]})
    assert "$.jobs[0].backoff.cap" in await raw.receive_error(ErrorCode.INVALID_ARGUMENT, req=3)
    raw.send({"t": "subscribe", "req": 4, "queue": "q", "window": 1, "lease": math.nan})
    assert "$.lease" in await raw.receive_error(ErrorCode.INVALID_ARGUMENT, req=4)
    raw.send({"t": "fail", "job": 1, "lease": 1, "error": {"type": "E", "message": "m"},
              "delay": -math.inf})
    assert "$.delay" in await raw.receive_error(ErrorCode.INVALID_ARGUMENT)
    assert (await raw.counts("q"))["waiting"] == 0


async def test_get_jobs_at_the_last_offset_answers_an_empty_page(raw: Raw) -> None:
    raw.send({"t": "add", "req": 2, "queue": "q", "jobs": [{"data": n} for n in range(3)]})
    assert (await raw.receive())["t"] == "added"
    raw.send({"t": "get_jobs", "req": 3, "queue": "q", "state": "waiting", "offset": MAX_OFFSET,
              "limit": 10_000})
    reply = await raw.receive()
    assert reply == {"t": "jobs", "req": 3, "jobs": [], "total": 3}
    raw.send({"t": "get_jobs", "req": 4, "queue": "q", "state": "waiting",
              "offset": MAX_OFFSET + 1})
    assert "$.offset" in await raw.receive_error(ErrorCode.INVALID_FIELD, req=4)
    assert (await raw.counts("q"))["waiting"] == 3


@pytest.mark.parametrize("priority", [1 << 31, -(1 << 31) - 1, 1 << 63])
async def test_a_priority_out_of_its_range_is_refused(raw: Raw, priority: int) -> None:
    raw.send({"t": "add", "req": 3, "queue": "q", "jobs": [{"data": 1, "priority": priority}]})
    assert "$.jobs[0].priority" in await raw.receive_error(ErrorCode.INVALID_FIELD, req=3)
    assert (await raw.counts("q"))["waiting"] == 0


@pytest.mark.parametrize("depth", [1000, 100_000])
async def test_deeply_nested_messagepack_is_answered_not_dropped(raw: Raw, depth: int) -> None:
    nested = b"\x91" * depth + b"\xc0"
    raw.send_body(b"\x84\xa1t\xa3add\xa3req\x03\xa5queue\xa1q\xa4jobs\x91\x81\xa4data" + nested)
    assert "nested" in await raw.receive_error(ErrorCode.MALFORMED_FRAME)
    assert (await raw.counts("q"))["waiting"] == 0
    # A payload nested 500 deep is still a payload.
    raw.send_body(b"\x84\xa1t\xa3add\xa3req\x04\xa5queue\xa1q\xa4jobs\x91\x81\xa4data"
                  + b"\x91" * 500 + b"\xc0")
    assert (await raw.receive())["t"] == "added"


@pytest.mark.parametrize(("tag", "escaped"), [
    ("ex\nplode 2024-01-01 broker INFO all is well", "ex\\x0aplode 2024-01-01 broker INFO"),
    ("\x1b[2J\r\u2028x", "\\x1b[2J\\x0d\\u2028x"),
])
async def test_what_the_broker_logs_of_a_bad_message_is_escaped(
    raw: Raw, tag: str, escaped: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="broker"):
        raw.send({"t": tag, "req": 7})
        text = await raw.receive_error(ErrorCode.UNKNOWN_MESSAGE, req=7)
        assert tag in text  # the client is told exactly what it sent
    logged = [record.getMessage() for record in caplog.records if record.name == "broker"]
    assert len(logged) == 1, logged
    line = logged[0]
    assert "UNKNOWN_MESSAGE" in line
    assert not any(char in line for char in "\n\r\x1b\u2028"), line
    assert escaped in line, line


# The broker's own frames stay within the limit it announced.

MAX_FRAME = 65536


async def test_no_deliver_frame_exceeds_the_announced_limit(make_broker: Any) -> None:
    broker = await make_broker(max_frame=MAX_FRAME)
    worker = await Raw.open(broker.port)
    producer = await Raw.open(broker.port)
    try:
        # Jobs whose deliveries carry much besides their payload: a 128-character name of 4-byte
        # characters, a timeout, a large attempts.
        job = {"data": "x" * 10, "name": "\U0001f600" * 128, "timeout": 5.0,
               "attempts": 1_000_000}
        worker.send({"t": "subscribe", "req": 1, "queue": "q", "window": 0})
        assert (await worker.receive())["t"] == "ok"
        for req in range(1, 21):
            producer.send({"t": "add", "req": req, "queue": "q", "jobs": [job] * 100})
            assert (await producer.receive())["t"] == "added"
        # Open the window: 2,000 jobs are leased in one flush.
        worker.send({"t": "window", "req": 2, "queue": "q", "window": 2000})
        assert (await worker.receive())["t"] == "ok"
        frames: list[bytes] = []
        delivered = 0
        while delivered < 2000:
            frames.append(await worker.receive_frame())
            delivered += len(msgspec.msgpack.decode(frames[-1])["jobs"])
        assert delivered == 2000
        assert max(len(frame) for frame in frames) <= MAX_FRAME
        # Packed tight: the first job of each frame would not have fit in the one before.
        for frame, after in zip(frames, frames[1:], strict=False):
            message = msgspec.msgpack.decode(frame)
            message["jobs"].append(msgspec.msgpack.decode(after)["jobs"][0])
            assert len(msgspec.msgpack.encode(message)) > MAX_FRAME
    finally:
        await worker.close()
        await producer.close()


async def test_a_payload_that_could_not_be_delivered_within_the_limit_is_refused(
    make_broker: Any
) -> None:
    broker = await make_broker(max_frame=MAX_FRAME)
    raw = await Raw.open(broker.port)
    try:
        raw.send({"t": "subscribe", "req": 1, "queue": "q", "window": 5})
        assert (await raw.receive())["t"] == "ok"
        # This add fits the limit, but the deliver of its payload would not.
        payload = msgspec.msgpack.encode(b"x" * (MAX_FRAME - 50))
        add = {"t": "add", "req": 2, "queue": "q",
               "jobs": [{"data": 1}, {"data": msgspec.Raw(payload)}]}
        assert len(msgspec.msgpack.encode(add)) <= MAX_FRAME
        raw.send(add)
        text = await raw.receive_error(ErrorCode.INVALID_ARGUMENT, req=2)
        assert "$.jobs[1].data" in text and str(MAX_FRAME) in text
        assert (await raw.counts("q"))["waiting"] == 0
        # The largest payload the broker takes is delivered in a frame within the limit.
        most = int(text.rsplit("may take ", 1)[1].split()[0])
        raw.send({"t": "add", "req": 3, "queue": "q",
                  "jobs": [{"data": msgspec.Raw(b"\xc5" + (most - 3).to_bytes(2, "big")
                                                + b"x" * (most - 3))}]})
        replies = [await raw.receive_frame(), await raw.receive_frame()]
        deliver = next(frame for frame in replies if msgspec.msgpack.decode(frame)["t"]
                       == "deliver")
        assert MAX_FRAME - 64 < len(deliver) <= MAX_FRAME
    finally:
        await raw.close()
