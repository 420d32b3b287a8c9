"""Every wire message survives encode -> frame -> decode, and its tag is pinned."""

from __future__ import annotations

import typing
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import conveyor.protocol as protocol
from conveyor.protocol import (
    BrokerMessage,
    ClientMessage,
    ErrorCode,
    FrameEncoder,
    FrameReader,
    JobState,
    MessageDecoder,
    ProtocolError,
)

CLIENT_TYPES: tuple[type[msgspec.Struct], ...] = typing.get_args(ClientMessage)
BROKER_TYPES: tuple[type[msgspec.Struct], ...] = typing.get_args(BrokerMessage)

# The wire names. Changing one breaks every deployed peer: edit this table only together with
# protocol.md and a protocol version bump.
EXPECTED_TAGS: dict[type[msgspec.Struct], str] = {
    protocol.Hello: "hello",
    protocol.Add: "add",
    protocol.Subscribe: "subscribe",
    protocol.SetWindow: "window",
    protocol.Ack: "ack",
    protocol.Fail: "fail",
    protocol.Release: "release",
    protocol.Progress: "progress",
    protocol.GetJob: "get_job",
    protocol.Wait: "wait",
    protocol.GetCounts: "get_counts",
    protocol.Welcome: "welcome",
    protocol.Ok: "ok",
    protocol.Error: "error",
    protocol.Added: "added",
    protocol.Deliver: "deliver",
    protocol.JobReply: "job",
    protocol.Finished: "finished",
    protocol.Counts: "counts",
    protocol.Closing: "closing",
    protocol.Extend: "extend",
    protocol.GetJobs: "get_jobs",
    protocol.Promote: "promote",
    protocol.Remove: "remove",
    protocol.Pause: "pause",
    protocol.RetryFailed: "retry_failed",
    protocol.Drain: "drain",
    protocol.Clean: "clean",
    protocol.Watch: "watch",
    protocol.Jobs: "jobs",
    protocol.Count: "count",
    protocol.Events: "events",
    protocol.GetQueues: "get_queues",
    protocol.QueueList: "queues",
    protocol.Unwait: "unwait",
    protocol.Authenticate: "authenticate",
    protocol.Challenge: "challenge",
    protocol.FindJob: "find_job",
    protocol.GetStats: "get_stats",
    protocol.Stats: "stats",
    protocol.SetLimits: "set_limits",
    protocol.Throttle: "throttle",
    protocol.SetSchedule: "set_schedule",
    protocol.RemoveSchedule: "remove_schedule",
    protocol.GetSchedules: "get_schedules",
    protocol.Schedules: "schedules",
    protocol.AddFlow: "add_flow",
    protocol.GetChildren: "get_children",
    protocol.Children: "children",
}

EXPECTED_ERROR_CODES = {
    "MALFORMED_FRAME": 1,
    "FRAME_TOO_LARGE": 2,
    "UNKNOWN_MESSAGE": 3,
    "INVALID_FIELD": 4,
    "INVALID_QUEUE": 5,
    "VERSION_MISMATCH": 6,
    "HANDSHAKE_REQUIRED": 7,
    "UNKNOWN_JOB": 8,
    "TOO_MANY_CONNECTIONS": 9,
    "SHUTTING_DOWN": 10,
    "INTERNAL": 11,
    "DISK_FULL": 12,
    "INVALID_STATE": 13,
    "SLOW_CONSUMER": 14,
    "INVALID_ARGUMENT": 15,
    "TIMED_OUT": 16,
    "LIMIT_EXCEEDED": 17,
    "AUTH_FAILED": 18,
    "FORBIDDEN": 19,
    "AUTH_REQUIRED": 20,
}

EXPECTED_JOB_STATES = {
    "WAITING": "waiting",
    "DELAYED": "delayed",
    "ACTIVE": "active",
    "COMPLETED": "completed",
    "FAILED": "failed",
    "WAITING_CHILDREN": "waiting-children",
}

# MessagePack integers span int64 and uint64.
MSGPACK_INT_MIN = -(1 << 63)
MSGPACK_INT_MAX = (1 << 64) - 1

# Job payloads: any msgpack value, already encoded (the broker never decodes them).
_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(MSGPACK_INT_MIN, MSGPACK_INT_MAX)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
raw_values = _values.map(lambda value: msgspec.Raw(msgspec.msgpack.encode(value)))


def _int_strategy(t: mi.IntType) -> st.SearchStrategy[int]:
    if t.multiple_of is not None:
        raise NotImplementedError("teach _int_strategy about multiple_of")
    low = MSGPACK_INT_MIN
    high = MSGPACK_INT_MAX
    if t.ge is not None:
        low = max(low, t.ge)
    if t.gt is not None:
        low = max(low, t.gt + 1)
    if t.le is not None:
        high = min(high, t.le)
    if t.lt is not None:
        high = min(high, t.lt - 1)
    return st.integers(low, high)


def strategy_for(t: mi.Type) -> st.SearchStrategy[Any]:
    """A strategy for values of a msgspec type, honouring its constraints.

    Built from ``msgspec.inspect`` so a new field needs no test change; a type or constraint this
    does not understand fails loudly instead of being generated wrongly.
    """
    match t:
        case mi.IntType():
            return _int_strategy(t)
        case mi.FloatType(multiple_of=None):
            # NaN != NaN would fail equality, not the wire.
            return st.floats(
                allow_nan=False,
                min_value=t.ge if t.ge is not None else t.gt,
                max_value=t.le if t.le is not None else t.lt,
                exclude_min=t.gt is not None,
                exclude_max=t.lt is not None,
            )
        case mi.LiteralType():
            return st.sampled_from(list(t.values))
        case mi.StrType(pattern=None):
            return st.text(min_size=t.min_length or 0, max_size=t.max_length or 20)
        case mi.BoolType():
            return st.booleans()
        case mi.NoneType():
            return st.none()
        case mi.RawType():
            return raw_values
        case mi.EnumType():
            return st.sampled_from(list(t.cls))
        case mi.ListType():
            return st.lists(
                strategy_for(t.item_type), min_size=t.min_length or 0, max_size=t.max_length or 4
            )
        case mi.UnionType():
            return st.one_of([strategy_for(member) for member in t.types])
        case mi.StructType():
            return struct_strategy(t.cls)
    raise NotImplementedError(f"no strategy for {t!r}; extend strategy_for")


def struct_strategy(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    """Instances of ``cls``: every required field drawn, optional ones drawn or left default."""
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    required = {f.name: strategy_for(f.type) for f in info.fields if f.required}
    optional = {f.name: strategy_for(f.type) for f in info.fields if not f.required}
    return st.fixed_dictionaries(required, optional=optional).map(lambda kwargs: cls(**kwargs))


def _round_trip(message: msgspec.Struct, decoder: MessageDecoder[Any]) -> object:
    frame = FrameEncoder().frame(message)
    reader = FrameReader()
    bodies = reader.feed(frame)
    assert len(bodies) == 1
    assert reader.buffered == 0
    return decoder.decode(bodies[0])


def _class_id(cls: type) -> str:
    return cls.__name__


@pytest.mark.parametrize("cls", CLIENT_TYPES, ids=_class_id)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_client_message_round_trips(cls: type[msgspec.Struct], data: st.DataObject) -> None:
    message = data.draw(struct_strategy(cls))
    decoded = _round_trip(message, MessageDecoder(ClientMessage))
    assert type(decoded) is cls
    assert decoded == message


@pytest.mark.parametrize("cls", BROKER_TYPES, ids=_class_id)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_broker_message_round_trips(cls: type[msgspec.Struct], data: st.DataObject) -> None:
    message = data.draw(struct_strategy(cls))
    decoded = _round_trip(message, MessageDecoder(BrokerMessage))
    assert type(decoded) is cls
    assert decoded == message


@pytest.mark.parametrize(
    ("cls", "decoder_type"),
    [(cls, BrokerMessage) for cls in CLIENT_TYPES] + [(cls, ClientMessage) for cls in BROKER_TYPES],
    ids=lambda value: value.__name__ if isinstance(value, type) else "",
)
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_message_of_other_direction_is_unknown(
    cls: type[msgspec.Struct], decoder_type: Any, data: st.DataObject
) -> None:
    # A broker reply sent to the broker (or a request sent to a client) is refused, not misread.
    message = data.draw(struct_strategy(cls))
    with pytest.raises(ProtocolError) as caught:
        _round_trip(message, MessageDecoder(decoder_type))
    assert caught.value.code is ErrorCode.UNKNOWN_MESSAGE


def test_tags_are_pinned() -> None:
    actual = {cls: cls.__struct_config__.tag for cls in CLIENT_TYPES + BROKER_TYPES}
    assert actual == EXPECTED_TAGS
    assert {cls.__struct_config__.tag_field for cls in actual} == {"t"}


def test_tag_is_on_the_wire() -> None:
    body = msgspec.msgpack.encode(protocol.SetWindow(req=3, queue="q", window=2))
    assert msgspec.msgpack.decode(body) == {"t": "window", "req": 3, "queue": "q", "window": 2}


def test_every_message_struct_is_in_exactly_one_direction() -> None:
    # A message class left out of both unions would be undecodable and untested by the round-trip.
    exported = (getattr(protocol, name) for name in protocol.__all__)
    tagged = {
        value
        for value in exported
        if isinstance(value, type)
        and issubclass(value, msgspec.Struct)
        and isinstance(value.__struct_config__.tag, str)
    }
    assert tagged == set(CLIENT_TYPES) | set(BROKER_TYPES)
    assert not set(CLIENT_TYPES) & set(BROKER_TYPES)


def test_error_codes_are_pinned() -> None:
    assert {code.name: code.value for code in ErrorCode} == EXPECTED_ERROR_CODES


def test_job_states_are_pinned() -> None:
    assert {state.name: state.value for state in JobState} == EXPECTED_JOB_STATES


def _bounds(cls: type[msgspec.Struct], field: str) -> tuple[int, int]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    (t,) = (f.type for f in info.fields if f.name == field)
    assert isinstance(t, mi.IntType) and t.ge is not None and t.le is not None
    return t.ge, t.le


REQ_MIN, REQ_MAX = _bounds(protocol.Add, "req")


def test_request_id_and_window_ranges() -> None:
    assert REQ_MIN in (0, 1)  # 0 is "no request": allowed at most as a legacy value
    assert REQ_MAX == (1 << 63) - 1
    for cls in (protocol.Subscribe, protocol.SetWindow):
        assert _bounds(cls, "window") == (0, 1_000_000)
        assert _bounds(cls, "req") == (REQ_MIN, REQ_MAX)
    assert _bounds(protocol.Error, "req") == (0, REQ_MAX)  # 0: the error answers no request


@pytest.mark.parametrize(
    ("cls", "field", "bad"),
    [
        (protocol.Add, "req", -1),
        (protocol.Add, "req", REQ_MIN - 1),
        (protocol.Add, "req", 1 << 63),
        (protocol.Subscribe, "window", -1),
        (protocol.Subscribe, "window", 1_000_001),
        (protocol.SetWindow, "window", 1_000_001),
    ],
)
def test_constraints_are_enforced_on_decode(
    cls: type[msgspec.Struct], field: str, bad: int
) -> None:
    fields: dict[str, object] = {
        "t": cls.__struct_config__.tag, "req": 9, "queue": "q", "window": 1, "jobs": []
    }
    fields[field] = bad
    with pytest.raises(ProtocolError) as caught:
        MessageDecoder(ClientMessage).decode(msgspec.msgpack.encode(fields))
    assert caught.value.code is ErrorCode.INVALID_FIELD
    assert f"$.{field}" in caught.value.message


def test_constraint_bounds_are_accepted() -> None:
    decoder: MessageDecoder[Any] = MessageDecoder(ClientMessage)
    top = protocol.Subscribe(req=REQ_MAX, queue="q", window=1_000_000)
    assert decoder.decode(msgspec.msgpack.encode(top)) == top
    bottom = protocol.Subscribe(req=REQ_MIN, queue="q", window=0)
    assert decoder.decode(msgspec.msgpack.encode(bottom)) == bottom
