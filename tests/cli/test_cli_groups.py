"""``conveyor add --group``, ``conveyor limit --group-*`` and the group in ``conveyor job``."""

from __future__ import annotations

from cli_support import conveyor

from conveyor.client import Client
from conveyor.protocol import QueueLimits


async def test_add_with_a_group_and_job_shows_it(url: str) -> None:
    added = await conveyor("add", "q", '"a"', "--group", "tenant-7", url=url)
    job_id = int(added.ok().stdout)
    async with Client(url) as client:
        info = await client.get_job(job_id)
        assert info is not None and info.group == "tenant-7"
    shown = await conveyor("job", str(job_id), "--json", url=url)
    assert shown.ok().json()["group"] == "tenant-7"
    table = await conveyor("job", str(job_id), url=url)
    assert "tenant-7" in table.ok().stdout


async def test_limit_sets_shows_and_clears_group_limits(url: str) -> None:
    set_ = await conveyor("limit", "mail", "--concurrency", "9", "--group-concurrency", "2",
                          "--group-rate", "10", "--group-per", "60", url=url)
    assert set_.ok().stdout == ("mail: at most 9 active at once; each group at most 10 starts "
                                "per 60 s; each group at most 2 active at once\n")
    async with Client(url) as client:
        (stats,) = (await client.stats("mail")).queues
        assert stats.limits == QueueLimits(concurrency=9, group_concurrency=2, group_rate=10,
                                           group_per=60.0)
    shown = await conveyor("limit", "mail", "--json", url=url)
    assert shown.ok().json() == {"queue": "mail", "rate": None, "per": None, "concurrency": 9,
                                 "group_rate": 10, "group_per": 60.0, "group_concurrency": 2}
    cleared = await conveyor("limit", "mail", "--clear", url=url)
    assert cleared.ok().stdout == "mail: no limits\n"
    async with Client(url) as client:
        (stats,) = (await client.stats("mail")).queues
        assert stats.limits is None


async def test_group_options_refuse_bad_usage_with_exit_2(url: str) -> None:
    per_alone = await conveyor("limit", "mail", "--group-per", "2", url=url)
    assert per_alone.returncode == 2 and "--group-rate" in per_alone.error_line()
    zero = await conveyor("limit", "mail", "--group-concurrency", "0", url=url)
    assert zero.returncode == 2 and "from 1 to" in zero.error_line()
    with_clear = await conveyor("limit", "mail", "--clear", "--group-rate", "3", url=url)
    assert with_clear.returncode == 2 and "--clear alone" in with_clear.error_line()
    too_long = await conveyor("add", "q", '"a"', "--group", "g" * 256, url=url)
    assert too_long.returncode == 2 and "group" in too_long.error_line()
