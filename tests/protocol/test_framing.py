"""Framing and strict decoding: streams cut anywhere, limits, garbage, error codes, queue names."""

from __future__ import annotations

import struct
import typing
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import conveyor.protocol as protocol
from conveyor.protocol import (
    HEADER_SIZE,
    MAX_QUEUE_NAME,
    BrokerMessage,
    ClientMessage,
    ErrorCode,
    FrameEncoder,
    FrameReader,
    MessageDecoder,
    ProtocolError,
    check_queue_name,
)

REQ_MAX = (1 << 63) - 1
_add_info = mi.type_info(protocol.Add)
assert isinstance(_add_info, mi.StructType)
_req_type = next(f.type for f in _add_info.fields if f.name == "req")
assert isinstance(_req_type, mi.IntType) and _req_type.le == REQ_MAX and _req_type.ge is not None
REQ_MIN: int = _req_type.ge
TAGS = sorted(
    cls.__struct_config__.tag
    for cls in typing.get_args(ClientMessage) + typing.get_args(BrokerMessage)
)

raw_values = st.one_of(
    st.none(), st.integers(-(1 << 63), (1 << 64) - 1), st.text(), st.binary(max_size=300)
).map(lambda value: msgspec.Raw(msgspec.msgpack.encode(value)))
requests = st.integers(REQ_MIN, REQ_MAX)
names = st.text(min_size=1, max_size=20)
job_errors = st.builds(protocol.JobError, type=st.text(), message=st.text(), traceback=st.text())

# A few client messages of very different sizes; test_messages covers every type.
client_messages = st.one_of(
    st.builds(protocol.Hello, version=st.integers(0, 10), client=st.text()),
    st.builds(
        protocol.Add,
        req=requests,
        queue=names,
        jobs=st.lists(st.builds(protocol.JobDef, data=raw_values), max_size=5),
    ),
    st.builds(protocol.Subscribe, req=requests, queue=names, window=st.integers(0, 1_000_000)),
    st.builds(protocol.Ack, job=st.integers(0, 1 << 40), lease=st.integers(0, 1 << 40),
              result=raw_values),
    st.builds(protocol.Fail, job=st.integers(0, 1 << 40), lease=st.integers(0, 1 << 40),
              error=job_errors),
)


def _split(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def _decode_error(body: bytes, message_type: Any = ClientMessage) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        MessageDecoder(message_type).decode(body)
    return caught.value


# Framing.


@settings(max_examples=150, deadline=None)
@given(messages=st.lists(client_messages, min_size=1, max_size=8), data=st.data())
def test_stream_cut_anywhere_decodes_in_order(messages: list[Any], data: st.DataObject) -> None:
    encoder = FrameEncoder()
    stream = b"".join(encoder.frame(m) for m in messages)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts")
    reader = FrameReader()
    decoder: MessageDecoder[Any] = MessageDecoder(ClientMessage)
    received: list[Any] = []
    fed = consumed = 0
    for chunk in _split(stream, cuts):
        bodies = reader.feed(chunk)
        fed += len(chunk)
        consumed += sum(HEADER_SIZE + len(body) for body in bodies)
        # Whole frames are handed over at once and not kept: memory holds only the partial tail.
        assert reader.buffered == fed - consumed
        received += [decoder.decode(body) for body in bodies]
    assert received == messages
    assert reader.buffered == 0


@settings(max_examples=50, deadline=None)
@given(messages=st.lists(client_messages, max_size=6))
def test_appending_many_messages_equals_one_frame_each(messages: list[Any]) -> None:
    # What a loop pass writes in one go is exactly the frames one by one, in order.
    encoder = FrameEncoder()
    buffer = bytearray()
    for message in messages:
        encoder.append(buffer, message)
    assert bytes(buffer) == b"".join(encoder.frame(m) for m in messages)


@settings(max_examples=100, deadline=None)
@given(max_frame=st.integers(0, 1 << 24), excess=st.integers(1, 1 << 31), split=st.booleans())
def test_oversized_length_prefix_is_refused_before_the_body(
    max_frame: int, excess: int, split: bool
) -> None:
    reader = FrameReader(max_frame=max_frame)
    header = struct.pack(">I", max_frame + excess)
    if split:
        assert reader.feed(header[:3]) == []
        header = header[3:]
    with pytest.raises(ProtocolError) as caught:
        reader.feed(header)
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE
    assert str(max_frame) in caught.value.message


def test_oversized_frame_after_good_frames_is_refused() -> None:
    reader = FrameReader(max_frame=100)
    good = FrameEncoder().frame(protocol.Ok(req=1))
    assert len(reader.feed(good)) == 1
    with pytest.raises(ProtocolError) as caught:
        reader.feed(struct.pack(">I", 101))
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE


@settings(max_examples=30, deadline=None)
@given(max_frame=st.integers(0, 4096))
def test_frame_exactly_at_the_limit_is_accepted(max_frame: int) -> None:
    reader = FrameReader(max_frame=max_frame)
    body = b"\xc0" * max_frame
    assert reader.feed(struct.pack(">I", max_frame)) == ([b""] if max_frame == 0 else [])
    if max_frame:
        assert reader.feed(body) == [body]
    assert reader.buffered == 0


def test_default_limit_is_one_mebibyte() -> None:
    reader = FrameReader()
    assert reader.feed(struct.pack(">I", 1 << 20)) == []
    with pytest.raises(ProtocolError):
        FrameReader().feed(struct.pack(">I", (1 << 20) + 1))


# Garbage never escapes as anything but ProtocolError.


def _decode_or_refuse(body: bytes, message_type: Any) -> ProtocolError | None:
    try:
        MessageDecoder(message_type).decode(body)
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
        assert type(exc.req) is int and 0 <= exc.req <= REQ_MAX
        return exc
    return None


@settings(max_examples=200, deadline=None)
@given(stream=st.binary(max_size=300), data=st.data())
def test_garbage_stream_raises_only_protocol_errors(stream: bytes, data: st.DataObject) -> None:
    reader = FrameReader(max_frame=data.draw(st.sampled_from([16, 256, 1 << 20])))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=5))
    for chunk in _split(stream, cuts):
        try:
            bodies = reader.feed(chunk)
        except ProtocolError as exc:
            assert exc.code is ErrorCode.FRAME_TOO_LARGE
            return
        for body in bodies:
            _decode_or_refuse(body, ClientMessage)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=64), direction=st.sampled_from([ClientMessage, BrokerMessage]))
def test_garbage_body_raises_only_protocol_errors(body: bytes, direction: Any) -> None:
    _decode_or_refuse(body, direction)


@settings(max_examples=300, deadline=None)
@given(
    message=client_messages,
    edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_corrupted_message_raises_only_protocol_errors(
    message: Any, edits: list[tuple[int, int]]
) -> None:
    body = bytearray(msgspec.msgpack.encode(message))
    for position, value in edits:
        body[position % len(body)] = value
    _decode_or_refuse(bytes(body), ClientMessage)


_any_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.floats()
    | st.text(max_size=10) | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=6,
)
_field_names = st.sampled_from(
    ["req", "queue", "jobs", "window", "job", "lease", "result", "error", "version", "data"]
)


@settings(max_examples=300, deadline=None)
@given(
    tag=st.none() | st.sampled_from(TAGS) | _any_value,
    fields=st.dictionaries(_field_names, _any_value, max_size=5),
)
def test_ill_typed_message_is_refused_with_its_request_id(
    tag: object, fields: dict[str, object]
) -> None:
    if tag is not None:
        fields = {"t": tag, **fields}
    body = msgspec.msgpack.encode(fields)
    for direction in (ClientMessage, BrokerMessage):
        error = _decode_or_refuse(body, direction)
        if error is None:
            continue
        assert error.code in (ErrorCode.UNKNOWN_MESSAGE, ErrorCode.INVALID_FIELD)
        req = fields.get("req")
        readable = type(req) is int and 0 <= req <= REQ_MAX
        assert error.req == (req if readable else 0)


@settings(max_examples=100, deadline=None)
@given(message=client_messages, data=st.data())
def test_truncated_body_is_malformed(message: Any, data: st.DataObject) -> None:
    body = msgspec.msgpack.encode(message)
    cut = data.draw(st.integers(0, len(body) - 1), label="cut")
    assert _decode_error(body[:cut]).code is ErrorCode.MALFORMED_FRAME


@settings(max_examples=100, deadline=None)
@given(message=client_messages, trailing=st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_malformed(message: Any, trailing: bytes) -> None:
    body = msgspec.msgpack.encode(message) + trailing
    assert _decode_error(body).code is ErrorCode.MALFORMED_FRAME


# Error codes for specific mistakes.

_enc = msgspec.msgpack.encode


@pytest.mark.parametrize(
    ("body", "code", "req", "mentions"),
    [
        pytest.param(_enc({"t": "nope", "req": 3}), ErrorCode.UNKNOWN_MESSAGE, 3, "nope",
                     id="unknown-tag"),
        pytest.param(_enc({"t": "ok", "req": 3}), ErrorCode.UNKNOWN_MESSAGE, 3, "ok",
                     id="broker-tag-sent-to-broker"),
        pytest.param(_enc({"t": 7, "req": 3}), ErrorCode.UNKNOWN_MESSAGE, 3, "$.t",
                     id="tag-not-a-string"),
        pytest.param(_enc({"req": 4, "queue": "q"}), ErrorCode.UNKNOWN_MESSAGE, 4, "`t`",
                     id="missing-tag"),
        pytest.param(_enc({"t": "add", "req": 5, "queue": 1, "jobs": []}),
                     ErrorCode.INVALID_FIELD, 5, "$.queue", id="wrong-type"),
        pytest.param(_enc({"t": "add", "req": 6, "queue": "q", "jobs": [{}]}),
                     ErrorCode.INVALID_FIELD, 6, "$.jobs[0]", id="nested-missing-field"),
        pytest.param(_enc({"t": "add", "req": 6, "queue": "q", "jobs": 3}),
                     ErrorCode.INVALID_FIELD, 6, "$.jobs", id="list-expected"),
        pytest.param(_enc({"t": "subscribe", "req": 7, "queue": "q"}),
                     ErrorCode.INVALID_FIELD, 7, "window", id="missing-field"),
        pytest.param(_enc({"t": "subscribe", "req": 8, "queue": "q", "window": 1_000_001}),
                     ErrorCode.INVALID_FIELD, 8, "$.window", id="window-out-of-range"),
        pytest.param(_enc({"t": "fail", "job": 1, "lease": 1, "error": {"type": 1,
                                                                        "message": "m"}}),
                     ErrorCode.INVALID_FIELD, 0, "$.error.type", id="deep-path-no-req"),
        pytest.param(_enc({"t": "add", "req": -1, "queue": "q", "jobs": []}),
                     ErrorCode.INVALID_FIELD, 0, "$.req", id="negative-req-unreadable"),
        pytest.param(_enc({"t": "add", "req": 1 << 63, "queue": "q", "jobs": []}),
                     ErrorCode.INVALID_FIELD, 0, "$.req", id="huge-req-unreadable"),
        pytest.param(_enc({"t": "add", "req": True, "queue": "q", "jobs": []}),
                     ErrorCode.INVALID_FIELD, 0, "$.req", id="bool-req-unreadable"),
        pytest.param(_enc({"t": "nope", "req": "9"}), ErrorCode.UNKNOWN_MESSAGE, 0, "nope",
                     id="string-req-unreadable"),
        pytest.param(b"\xc1", ErrorCode.MALFORMED_FRAME, 0, "", id="invalid-opcode"),
        pytest.param(b"", ErrorCode.MALFORMED_FRAME, 0, "", id="empty"),
        pytest.param(b"\x92", ErrorCode.MALFORMED_FRAME, 0, "", id="truncated-array"),
        pytest.param(b"\x81\xa1t\xa3add\x00", ErrorCode.MALFORMED_FRAME, 0, "",
                     id="trailing-byte-after-bad-message"),
        pytest.param(b"\x83\xa1t\xa3add\xa3req\x05\xa5queue\xa2\xff\xfe",
                     ErrorCode.MALFORMED_FRAME, 0, "UTF-8", id="string-not-utf8"),
        pytest.param(b"\x81\xa1t\xa2\xff\xfe", ErrorCode.MALFORMED_FRAME, 0, "UTF-8",
                     id="tag-not-utf8"),
    ],
)
def test_decode_error_codes(body: bytes, code: ErrorCode, req: int, mentions: str) -> None:
    error = _decode_error(body)
    assert error.code is code
    assert error.req == req and type(error.req) is int
    assert mentions in error.message


def test_error_reply_for_refused_request_is_encodable() -> None:
    # The session answers a refused request with Error(req=exc.req); the client must decode it.
    error = _decode_error(_enc({"t": "add", "req": 41, "queue": None, "jobs": []}))
    reply = protocol.Error(req=error.req, code=int(error.code), message=error.message)
    decoded: Any = MessageDecoder(BrokerMessage).decode(FrameEncoder().frame(reply)[HEADER_SIZE:])
    assert decoded == reply
    assert decoded.req == 41


# Queue names.


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("a" * (MAX_QUEUE_NAME + 1), id="256-ascii"),
        pytest.param("é" * 128, id="128-chars-256-bytes"),
        pytest.param("€" * 86, id="86-chars-258-bytes"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("line\n", id="newline"),
        pytest.param("\ttab", id="tab"),
        pytest.param("del\x7f", id="del"),
        pytest.param(b"emails", id="bytes"),
        pytest.param(5, id="int"),
        pytest.param(None, id="none"),
    ],
)
def test_invalid_queue_names_are_explained(name: object) -> None:
    reason = check_queue_name(name)
    assert isinstance(reason, str) and reason


def test_too_long_name_reason_counts_bytes() -> None:
    reason = check_queue_name("é" * 128)
    assert reason is not None and "256" in reason


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("emails", id="plain"),
        pytest.param("a" * MAX_QUEUE_NAME, id="255-ascii"),
        pytest.param("é" * 127 + "a", id="255-bytes-two-byte-chars"),
        pytest.param("€" * 85, id="255-bytes-three-byte-chars"),
        pytest.param("队列:邮件 🚀", id="cjk-space-emoji"),
        pytest.param("a.b-c_d/e:f", id="punctuation"),
    ],
)
def test_valid_queue_names_pass(name: str) -> None:
    assert check_queue_name(name) is None


_name_chars = st.characters(exclude_categories=("Cc", "Cs"))
# protocol.md, "Queue names": U+0000 to U+001F and U+007F.
_control_chars = st.sampled_from([chr(code) for code in range(0x20)] + ["\x7f"])


@settings(max_examples=200, deadline=None)
@given(name=st.text(_name_chars, min_size=1, max_size=140))
def test_queue_name_validity_is_decided_by_utf8_bytes(name: str) -> None:
    fits = len(name.encode("utf-8")) <= MAX_QUEUE_NAME
    assert (check_queue_name(name) is None) == fits


@settings(max_examples=100, deadline=None)
@given(
    head=st.text(_name_chars, max_size=10),
    control=_control_chars,
    tail=st.text(_name_chars, max_size=10),
)
def test_queue_name_with_control_character_is_invalid(head: str, control: str, tail: str) -> None:
    assert check_queue_name(head + control + tail) is not None


def test_a_message_that_cannot_be_encoded_leaves_the_buffer_as_it_was() -> None:
    encoder = FrameEncoder()
    buffer = bytearray(encoder.frame(protocol.GetJob(req=1, job=7)))
    before = bytes(buffer)
    with pytest.raises(OverflowError):
        encoder.append(buffer, protocol.GetJob(req=2, job=10**30))
    assert bytes(buffer) == before
    encoder.append(buffer, protocol.GetJob(req=3, job=8))
    reader = FrameReader()
    decoder: MessageDecoder[Any] = MessageDecoder(ClientMessage)
    assert [decoder.decode(body) for body in reader.feed(bytes(buffer))] == [
        protocol.GetJob(req=1, job=7), protocol.GetJob(req=3, job=8)]
