"""``conveyor limit``: show, set and clear a queue's limits."""

from __future__ import annotations

from cli_support import conveyor

from conveyor.client import Client
from conveyor.protocol import MAX_LIMIT, MAX_LIMIT_PERIOD, QueueLimits


async def test_limit_sets_shows_and_clears_a_queues_limits(url: str) -> None:
    shown = await conveyor("limit", "mail", url=url)
    assert shown.ok().stdout == "mail: no limits\n"
    set_ = await conveyor("limit", "mail", "--rate", "100", "--per", "60", "--concurrency", "5",
                          url=url)
    assert set_.ok().stdout == ("mail: at most 100 starts per 60 s (one every 0.6 s); "
                                "at most 5 active at once\n")
    async with Client(url) as client:
        (stats,) = (await client.stats("mail")).queues
        assert stats.limits == QueueLimits(rate=100, per=60.0, concurrency=5)
    shown = await conveyor("limit", "mail", "--json", url=url)
    assert shown.ok().json() == {"queue": "mail", "rate": 100, "per": 60.0, "concurrency": 5}
    cleared = await conveyor("limit", "mail", "--clear", "--json", url=url)
    assert cleared.ok().json() == {"queue": "mail", "rate": None, "per": None,
                                   "concurrency": None}


async def test_limit_refuses_bad_usage_with_exit_2(url: str) -> None:
    both = await conveyor("limit", "mail", "--clear", "--rate", "5", url=url)
    assert both.returncode == 2 and "--clear alone" in both.error_line()
    per_alone = await conveyor("limit", "mail", "--per", "2", url=url)
    assert per_alone.returncode == 2 and "--rate" in per_alone.error_line()
    zero = await conveyor("limit", "mail", "--concurrency", "0", url=url)
    assert zero.returncode == 2 and "from 1 to" in zero.error_line()


async def test_limit_takes_the_protocols_bounds_and_refuses_beyond_them(url: str) -> None:
    # The command writes out MAX_LIMIT and MAX_LIMIT_PERIOD: they must stay the protocol's.
    top = await conveyor("limit", "mail", "--rate", str(MAX_LIMIT), "--per",
                         f"{MAX_LIMIT_PERIOD:g}", "--concurrency", str(MAX_LIMIT), url=url)
    top.ok()
    for option, value in (("--rate", str(MAX_LIMIT + 1)), ("--concurrency", str(MAX_LIMIT + 1)),
                          ("--per", f"{MAX_LIMIT_PERIOD * 2:g}")):
        extra = ["--rate", "1"] if option == "--per" else []
        beyond = await conveyor("limit", "mail", *extra, option, value, url=url)
        assert beyond.returncode == 2 and option in beyond.error_line()
