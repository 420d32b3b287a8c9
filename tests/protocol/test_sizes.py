"""The sizes ``conveyor.protocol.sizes`` computes are the sizes msgspec encodes, byte for byte."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.protocol import (
    MAX_JOB_NAME,
    Deliver,
    Delivery,
    deliver_size,
    delivery_options_bound,
    delivery_size,
)
from conveyor.protocol.sizes import int_size, str_size

encode = msgspec.msgpack.encode

ids = st.integers(1, (1 << 63) - 1) | st.sampled_from([1, 127, 128, 255, 256, 65535, 65536,
                                                       (1 << 32) - 1, 1 << 32])
names = st.none() | st.text(min_size=1, max_size=MAX_JOB_NAME)
payloads = st.binary(max_size=70_000).map(lambda b: msgspec.Raw(encode(b)))


@given(st.integers(-(1 << 63), (1 << 64) - 1))
def test_int_size(value: int) -> None:
    assert int_size(value) == len(encode(value))


@given(st.text(max_size=300) | st.integers(65530, 65540).map(lambda n: "é" * (n // 2)))
@settings(max_examples=50)
def test_str_size(text: str) -> None:
    assert str_size(text) == len(encode(text))


@given(ids, ids, st.integers(1, 1_000_000), payloads, st.none() | st.floats(0.001, 1e9),
       st.integers(1, 1_000_000), names)
def test_delivery_size(job: int, lease: int, attempt: int, data: msgspec.Raw,
                       timeout: float | None, attempts: int, name: str | None) -> None:
    delivery = Delivery(job=job, lease=lease, attempt=attempt, data=data, timeout=timeout,
                        attempts=attempts, name=name)
    size = delivery_size(job, lease, attempt, len(data), timeout=timeout, attempts=attempts,
                         name=name)
    assert size == len(encode(delivery))


@given(st.text(min_size=1, max_size=255), st.integers(0, 20), st.sampled_from([0, 1, 15, 16]))
@settings(max_examples=50)
def test_deliver_size(queue: str, count: int, extra: int) -> None:
    jobs = [Delivery(job=n + 1, lease=n + 1, attempt=1, data=msgspec.Raw(b"\xc0"))
            for n in range(count + extra)]
    inner = sum(len(encode(job)) for job in jobs)
    assert deliver_size(queue, len(jobs), inner) == len(encode(Deliver(queue=queue, jobs=jobs)))


@given(ids, ids, st.integers(1, 1_000_000), st.none() | st.floats(0.001, 1e9),
       st.integers(1, 1_000_000), names)
def test_delivery_options_bound(job: int, lease: int, attempt: int, timeout: float | None,
                                attempts: int, name: str | None) -> None:
    # What the options add to a delivery never exceeds the bound, and the bound of options at
    # their defaults is nothing.
    plain = len(encode(Delivery(job=job, lease=lease, attempt=attempt, data=msgspec.Raw(b""))))
    full = len(encode(Delivery(job=job, lease=lease, attempt=attempt, data=msgspec.Raw(b""),
                               timeout=timeout, attempts=attempts, name=name)))
    assert full - plain <= delivery_options_bound(timeout=timeout, attempts=attempts, name=name)
    assert delivery_options_bound() == 0
