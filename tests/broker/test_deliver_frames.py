"""The flush packs deliveries into ``deliver`` frames within the frame limit, tightly: driven
through ``handle`` and ``flush`` with jobs of every size and option the broker accepts."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.broker.testing import Core, Queues, RecordingPeer, flush, handle
from conveyor.protocol import (
    Add,
    Added,
    Deliver,
    Error,
    ErrorCode,
    FrameEncoder,
    JobDef,
    SetWindow,
    Subscribe,
)

encoder = FrameEncoder()

jobs = st.builds(
    lambda size, timeout, attempts, name: JobDef(
        data=msgspec.Raw(msgspec.msgpack.encode(b"x" * size)), timeout=timeout,
        attempts=attempts, name=name),
    st.integers(0, 3000) | st.integers(0, 40),
    st.none() | st.just(5.0),
    st.sampled_from([1, 3, 1_000_000]),
    st.none() | st.text(min_size=1, max_size=128),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(jobs, min_size=1, max_size=300), st.integers(1, 3).map(lambda n: 2048 * n),
       st.integers(0, 1 << 40))
def test_deliver_frames_fill_the_limit_and_never_pass_it(
    defs: list[JobDef], max_frame: int, first_id: int
) -> None:
    queues = Queues()
    queues.last_id = first_id  # ids of every width
    core = Core(queues, max_frame=max_frame)
    worker, producer = RecordingPeer("worker"), RecordingPeer("producer")
    handle(core, worker, Subscribe(req=1, queue="q", window=0), 0.0)
    for req, job in enumerate(defs, start=1):
        handle(core, producer, Add(req=req, queue="q", jobs=[job]), 0.0)
    flush(core, 0.0)
    accepted = [m for m in producer.take() if isinstance(m, Added)]
    refused = [m for m in producer.sent if isinstance(m, Error)]
    assert all(ErrorCode(m.code) is ErrorCode.INVALID_ARGUMENT for m in refused)
    # Every job is leased in one flush, then packed.
    handle(core, worker, SetWindow(req=2, queue="q", window=len(defs)), 0.0)
    flush(core, 0.0)
    delivers = [m for m in worker.take() if isinstance(m, Deliver)]
    delivered = [d.job for m in delivers for d in m.jobs]
    assert delivered == [m.ids[0] for m in accepted]
    sizes = [len(encoder.frame(m)) - 4 for m in delivers]
    assert max(sizes, default=0) <= max_frame
    for message, after in zip(delivers, delivers[1:], strict=False):
        fuller = Deliver(queue="q", jobs=[*message.jobs, after.jobs[0]])
        assert len(encoder.frame(fuller)) - 4 > max_frame


def test_a_job_whose_delivery_could_not_fit_is_refused_whole() -> None:
    core = Core(Queues(), max_frame=4096)
    producer = RecordingPeer()
    big: Any = msgspec.Raw(msgspec.msgpack.encode(b"x" * 4050))
    handle(core, producer, Add(req=1, queue="q", jobs=[JobDef(data=msgspec.Raw(b"\x01")),
                                                       JobDef(data=big)]), 0.0)
    flush(core, 0.0)
    [error] = producer.take()
    assert isinstance(error, Error) and ErrorCode(error.code) is ErrorCode.INVALID_ARGUMENT
    assert "$.jobs[1].data" in error.message
    assert core.queues.counts("q")["waiting"] == 0
