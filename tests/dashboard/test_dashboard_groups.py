"""The dashboard's queue page shows a queue's group limits with its own."""

from __future__ import annotations

from dashboard_support import Served

from conveyor.client import Client


async def test_the_queue_page_shows_the_group_limits(url: str, dashboard: Served) -> None:
    async with Client(url) as client:
        await client.add("calls", 1, group="tenant")
        await client.set_limits("calls", concurrency=5, group_concurrency=2, group_rate=10,
                                group_per=60.0)
        page = await dashboard.page("/queues/calls")
        assert page.find(id="limits").text == ("at most 5 active; each group at most 10 starts "
                                               "per 60 s; each group at most 2 active")
