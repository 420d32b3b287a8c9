"""``conveyor add --dedup SECONDS --lifo``: a key with a time to live, and a job that joins the
head of its priority's waiting line."""

from __future__ import annotations

from cli_support import conveyor

from conveyor.broker import Broker
from conveyor.client import Client, JobState


async def test_add_dedup_and_lifo(broker: Broker, url: str) -> None:
    first = await conveyor("add", "q", '"a"', "--id", "order-1", "--dedup", "3600", url=url)
    job_id = int(first.ok().stdout)
    again = await conveyor("add", "q", '"b"', "--id", "order-1", "--dedup", "3600", url=url)
    assert int(again.ok().stdout) == job_id
    until = broker.queues.jobs[job_id].options.dedup_until
    assert until is not None
    assert until - broker.queues.jobs[job_id].created_at == 3600
    async with Client(url) as client:
        await client.pause("q")
        await client.add("q", "fifo")
        lifo = await conveyor("add", "q", '"lifo"', "--lifo", url=url)
        lifo.ok()
        waiting = await client.get_jobs("q", JobState.WAITING)
        assert [job.data for job in waiting] == ["lifo", "a", "fifo"]


async def test_add_dedup_without_an_id_is_bad_usage(url: str) -> None:
    result = await conveyor("add", "q", '"a"', "--dedup", "10", url=url)
    assert result.returncode == 2 and "--dedup" in result.stderr
