"""The ``dedup`` and ``lifo`` job options in the client: checked before anything is sent, sent
only when set, and honoured through the synchronous client too."""

from __future__ import annotations

import asyncio
import math

import msgspec
import pytest

from conveyor.broker import Broker
from conveyor.client import JobSpec, JobState, SyncClient
from conveyor.client.options import job_def

PAYLOAD = msgspec.Raw(msgspec.msgpack.encode("x"))


@pytest.mark.parametrize("dedup", [-1.0, math.nan, math.inf, "10"])
def test_a_bad_dedup_raises_value_error_naming_it(dedup: object) -> None:
    with pytest.raises(ValueError, match="dedup"):
        job_def(PAYLOAD, id="k", dedup=dedup)  # type: ignore[arg-type]


def test_a_lifo_that_is_not_a_bool_raises_value_error() -> None:
    with pytest.raises(ValueError, match="lifo"):
        job_def(PAYLOAD, lifo=1)  # type: ignore[arg-type]


def test_the_options_are_sent_only_when_set() -> None:
    plain = msgspec.msgpack.encode(job_def(PAYLOAD))
    assert b"dedup" not in plain and b"lifo" not in plain
    job = job_def(PAYLOAD, id="k", dedup=5, lifo=True)
    assert (job.dedup, job.lifo) == (5.0, True)


async def test_the_sync_client_adds_with_dedup_and_lifo(broker: Broker, url: str) -> None:
    def produce() -> tuple[int, int, list[object]]:
        with SyncClient(url) as client:
            client.pause("q")
            first = client.add("q", "a", id="k", dedup=600)
            again = client.add_bulk("q", [JobSpec("b", id="k", dedup=600),
                                          JobSpec("c", lifo=True)])[0]
            waiting = client.get_jobs("q", JobState.WAITING)
            return first, again, [job.data for job in waiting]

    first, again, order = await asyncio.to_thread(produce)
    assert first == again
    assert order == ["c", "a"]
