"""``conveyor schedule``: add, list and remove repeatable jobs."""

from __future__ import annotations

from cli_support import conveyor

from conveyor.client import Client


async def test_schedule_add_list_and_remove(url: str) -> None:
    added = await conveyor("schedule", "add", "nightly", "reports", '{"kind": "daily"}',
                           "--cron", "0 3 * * *", "--tz", "Europe/Paris", "--missed", "skip",
                           "--priority", "2", "--attempts", "3", url=url)
    assert added.ok().stdout == "schedule nightly set\n"
    every = await conveyor("schedule", "add", "beat", "beats", "1", "--every", "30", url=url)
    every.ok()
    listed = await conveyor("schedule", "list", "--json", url=url)
    beat, nightly = listed.ok().json()
    assert nightly["id"] == "nightly" and nightly["queue"] == "reports"
    assert nightly["cron"] == "0 3 * * *" and nightly["tz"] == "Europe/Paris"
    assert nightly["missed"] == "skip" and nightly["priority"] == 2
    assert nightly["attempts"] == 3 and nightly["data"] == {"kind": "daily"}
    assert beat["every"] == 30.0 and beat["data"] == 1 and beat["next_run"] > 0
    text = (await conveyor("schedule", "list", url=url)).ok().stdout
    assert "beat: beats, every 30 s" in text
    assert "nightly: reports, cron '0 3 * * *' in Europe/Paris, missed: skip" in text
    removed = await conveyor("schedule", "remove", "beat", url=url)
    assert removed.ok().stdout == "schedule beat removed\n"
    async with Client(url) as client:
        assert [info.schedule.id for info in await client.schedules()] == ["nightly"]
    again = await conveyor("schedule", "remove", "beat", url=url)
    assert again.returncode == 1 and "beat" in again.error_line()


async def test_schedule_add_refuses_bad_usage_with_exit_2(url: str) -> None:
    neither = await conveyor("schedule", "add", "s", "q", "1", url=url)
    assert neither.returncode == 2
    tz_alone = await conveyor("schedule", "add", "s", "q", "1", "--every", "5", "--tz",
                              "UTC", url=url)
    assert tz_alone.returncode == 2 and "--cron" in tz_alone.error_line()
    bad_json = await conveyor("schedule", "add", "s", "q", "{", "--every", "5", url=url)
    assert bad_json.returncode == 2 and "JSON" in bad_json.error_line()
