"""The decoder refuses values outside the wire's documented domain with a precise error: floats that
are not finite numbers, integers outside their ranges, values nested too deeply."""

from __future__ import annotations

import math
import struct
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.protocol import (
    MAX_OFFSET,
    MAX_PRIORITY,
    MIN_PRIORITY,
    ClientMessage,
    ErrorCode,
    FrameEncoder,
    FrameReader,
    GetCounts,
    GetJobs,
    MessageDecoder,
    ProtocolError,
)

decoder: MessageDecoder[Any] = MessageDecoder(ClientMessage)

ERROR = {"type": "E", "message": "m"}


def _add(**job: Any) -> dict[str, Any]:
    return {"t": "add", "req": 5, "queue": "q", "jobs": [{"data": 1}, {"data": 2, **job}]}


# Every float field a client sends, as (message with the float at the path, path).
FLOAT_FIELDS: list[tuple[Any, str]] = [
    (lambda x: _add(delay=x), "$.jobs[1].delay"),
    (lambda x: _add(run_at=x), "$.jobs[1].run_at"),
    (lambda x: _add(timeout=x), "$.jobs[1].timeout"),
    (lambda x: _add(keep_result=x), "$.jobs[1].keep_result"),
    (lambda x: _add(backoff={"type": "fixed", "delay": x}), "$.jobs[1].backoff.delay"),
    (lambda x: _add(backoff={"type": "exponential", "delay": 1.0, "cap": x}),
     "$.jobs[1].backoff.cap"),
    (lambda x: _add(backoff={"type": "exponential", "delay": 1.0, "jitter": x}),
     "$.jobs[1].backoff.jitter"),
    (lambda x: {"t": "subscribe", "req": 5, "queue": "q", "window": 1, "lease": x}, "$.lease"),
    (lambda x: {"t": "fail", "req": 5, "job": 1, "lease": 1, "error": ERROR, "delay": x},
     "$.delay"),
    (lambda x: {"t": "clean", "req": 5, "queue": "q", "state": "failed", "older_than": x},
     "$.older_than"),
]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(("build", "path"), FLOAT_FIELDS, ids=[p for _, p in FLOAT_FIELDS])
def test_a_float_that_is_not_a_finite_number_is_an_invalid_argument(
    build: Any, path: str, value: float
) -> None:
    body = msgspec.msgpack.encode(build(value))
    with pytest.raises(ProtocolError) as caught:
        decoder.decode(body)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    assert f"`{path}`" in caught.value.message and "finite" in caught.value.message
    assert caught.value.req == 5


@pytest.mark.parametrize(("build", "path"), FLOAT_FIELDS, ids=[p for _, p in FLOAT_FIELDS])
def test_a_large_finite_float_is_not_an_invalid_argument(build: Any, path: str) -> None:
    body = msgspec.msgpack.encode(build(1e300))
    try:
        decoder.decode(body)
    except ProtocolError as exc:
        # Jitter is at most 1: that is a range, reported as such.
        assert exc.code is ErrorCode.INVALID_FIELD and path.endswith("jitter"), exc


def test_an_out_of_range_float_is_still_an_invalid_field() -> None:
    with pytest.raises(ProtocolError) as caught:
        decoder.decode(msgspec.msgpack.encode(_add(delay=-1.0)))
    assert caught.value.code is ErrorCode.INVALID_FIELD
    assert "$.jobs[1].delay" in caught.value.message


@pytest.mark.parametrize(("priority", "ok"), [
    (MIN_PRIORITY, True), (MAX_PRIORITY, True), (MIN_PRIORITY - 1, False),
    (MAX_PRIORITY + 1, False), (1 << 63, False),
])
def test_priority_is_a_32_bit_signed_integer(priority: int, ok: bool) -> None:
    body = msgspec.msgpack.encode(_add(priority=priority))
    if ok:
        assert decoder.decode(body).jobs[1].priority == priority
    else:
        with pytest.raises(ProtocolError) as caught:
            decoder.decode(body)
        assert caught.value.code is ErrorCode.INVALID_FIELD
        assert "$.jobs[1].priority" in caught.value.message


@pytest.mark.parametrize(("offset", "limit", "ok"), [
    (MAX_OFFSET, 10_000, True), (MAX_OFFSET + 1, 1, False), (0, 10_001, False), (-1, 1, False),
])
def test_get_jobs_offset_and_limit_ranges(offset: int, limit: int, ok: bool) -> None:
    message = {"t": "get_jobs", "req": 5, "queue": "q", "state": "waiting", "offset": offset,
               "limit": limit}
    body = msgspec.msgpack.encode(message)
    if ok:
        decoded = decoder.decode(body)
        assert isinstance(decoded, GetJobs)
        assert (decoded.offset, decoded.limit) == (offset, limit)
    else:
        with pytest.raises(ProtocolError) as caught:
            decoder.decode(body)
        assert caught.value.code is ErrorCode.INVALID_FIELD


def _nested(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"


@pytest.mark.parametrize("where", ["payload", "unknown-field", "field"])
def test_deeply_nested_messagepack_is_a_malformed_frame(where: str) -> None:
    head = b"\x84\xa1t\xa3add\xa3req\x07\xa5queue\xa1q\xa4jobs"
    if where == "payload":
        body = head + b"\x91\x81\xa4data" + _nested(100_000)
    elif where == "unknown-field":
        body = b"\x85\xa1t\xa3add\xa3req\x07\xa5queue\xa1q\xa4jobs\x90\xa5extra" + _nested(5000)
    else:
        body = head + _nested(5000)
    with pytest.raises(ProtocolError) as caught:
        decoder.decode(body)
    assert caught.value.code is ErrorCode.MALFORMED_FRAME
    assert "nested" in caught.value.message


def test_moderately_nested_payloads_decode() -> None:
    body = msgspec.msgpack.encode({"t": "add", "req": 7, "queue": "q", "jobs": []})
    body = body[:-1] + b"\x91\x81\xa4data" + _nested(200)
    assert decoder.decode(body).jobs[0].data == msgspec.Raw(_nested(200))


# Frames over the limit, skipped.

SKIP_MAX_FRAME = 64


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 400), min_size=1, max_size=8), data=st.data())
def test_frames_over_the_limit_are_skipped_and_reported_in_place(
    sizes: list[int], data: st.DataObject
) -> None:
    encoder = FrameEncoder()
    stream = b"".join(
        encoder.frame(GetCounts(req=n + 1, queue="q" * size)) for n, size in enumerate(sizes))
    reader = FrameReader(SKIP_MAX_FRAME, skip_limit=1000)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    items: list[bytes | ProtocolError] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        items += reader.read(stream[start:end])
        # Never more than one frame of the limit is held, however big the frame skipped.
        assert reader.buffered <= SKIP_MAX_FRAME + 4 + (end - start)
    assert not reader.partial and reader.buffered == 0
    assert len(items) == len(sizes)
    for n, (size, item) in enumerate(zip(sizes, items, strict=True)):
        body_size = len(encoder.frame(GetCounts(req=n + 1, queue="q" * size))) - 4
        if body_size <= SKIP_MAX_FRAME:
            assert isinstance(item, bytes) and decoder.decode(item) == GetCounts(
                req=n + 1, queue="q" * size)
        else:
            assert isinstance(item, ProtocolError), item
            assert item.code is ErrorCode.FRAME_TOO_LARGE
            assert f"of {body_size} bytes" in item.message
            # The request id is read from the body's first bytes when they hold it.
            assert item.req == n + 1 and "'get_counts'" in item.message


def test_a_frame_over_the_skip_limit_ends_the_stream() -> None:
    reader = FrameReader(SKIP_MAX_FRAME, skip_limit=1000)
    assert reader.read(struct.pack(">I", 1000) + b"\x80") == []
    assert reader.partial
    # The skipped frame is reported first; the next read raises.
    [skipped] = reader.read(b"\0" * 999 + struct.pack(">I", 1001))
    assert isinstance(skipped, ProtocolError) and "of 1000 bytes" in skipped.message
    with pytest.raises(ProtocolError) as caught:
        reader.read(b"")
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE and "1001" in caught.value.message


@pytest.mark.parametrize("head", [b"", b"\x93\x01\x02", b"\x82\xa1t", b"\x81\xa1t\xc4\x01x",
                                  b"\x82\xa1t\xa2\x0a\x0b\xa3req\x05", b"\xdf\xff\xff\xff\xff"])
def test_a_skipped_frame_whose_start_says_nothing_is_reported_with_request_id_0(
    head: bytes
) -> None:
    reader = FrameReader(2, skip_limit=1000)
    body = head + b"\0" * (100 - len(head))
    [item] = reader.read(struct.pack(">I", len(body)) + body)
    assert isinstance(item, ProtocolError) and item.code is ErrorCode.FRAME_TOO_LARGE
    assert item.req == (5 if head.endswith(b"req\x05") else 0)
    assert "\n" not in item.message and "\x0a" not in item.message
