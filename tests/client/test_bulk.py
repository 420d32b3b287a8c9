"""How ``add_bulk`` splits a bulk add into frames and applies options."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from conveyor.broker import Broker
from conveyor.client import Client, JobSpec, exponential
from conveyor.client.client import BULK_FRAME_JOBS, FIRST_FRAME_JOBS, _chunks


def test_small_jobs_go_in_a_short_first_frame_then_full_ones() -> None:
    runs = list(_chunks(5_000, None, 1 << 20))
    assert runs[0] == (0, FIRST_FRAME_JOBS)
    assert all(stop - start == BULK_FRAME_JOBS for start, stop in runs[1:-1])
    assert runs[-1][1] == 5_000
    assert [start for start, _ in runs[1:]] == [stop for _, stop in runs[:-1]]


def test_large_jobs_split_by_bytes() -> None:
    sizes = [300] * 100
    runs = list(_chunks(len(sizes), sizes, 1_000))
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
    assert (await client.counts("bulk"))["waiting"] == 3_000


async def test_an_oversize_payload_is_refused_before_anything_is_sent(client: Client) -> None:
    with pytest.raises(ValueError, match="payload 2 is"):
        await client.add_bulk("bulk", [{"n": 0}, {"n": 1}, "x" * 70_000])
    with pytest.raises(ValueError, match="attempts"):
        await client.add_bulk("bulk", [{"n": 0}], attempts=0)
    assert (await client.counts("bulk"))["waiting"] == 0
