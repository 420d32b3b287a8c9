"""``conveyor retry``, ``promote``, ``remove``, ``pause``, ``resume``, ``drain`` and ``clean``."""

from __future__ import annotations

import asyncio

from cli_support import Pty, conveyor, run_failing_job

from conveyor.broker import Broker
from conveyor.client import Client


async def test_retry_puts_failed_jobs_back_for_a_queue_or_one_job(url: str) -> None:
    async with Client(url) as client:
        first = await run_failing_job(client, url, "mail")
        second = await run_failing_job(client, url, "mail")
        one = await conveyor("retry", "--job", str(first), url=url)
        assert one.ok().stdout == f"job {first} is back in line\n"
        job = await client.get_job(first)
        assert job is not None and job.state.value == "waiting"
        # Not failed any more: refused, exit 1.
        again = await conveyor("retry", "--job", str(first), url=url)
        assert again.returncode == 1 and "INVALID_STATE" in again.error_line()
        rest = await conveyor("retry", "mail", "--json", url=url)
        assert rest.ok().json() == {"queue": "mail", "retried": 1}
        job = await client.get_job(second)
        assert job is not None and job.state.value == "waiting" and job.attempt == 0
    both = await conveyor("retry", "mail", "--job", "1", url=url)
    assert both.returncode == 2 and "not both" in both.error_line()


async def test_promote_and_remove(url: str) -> None:
    async with Client(url) as client:
        later = await client.add("later", {}, delay=3600)
        gone = await client.add("later", {})
        promoted, removed = await asyncio.gather(
            conveyor("promote", str(later), url=url),
            conveyor("remove", str(gone), "--json", url=url))
        assert promoted.ok().stdout == f"job {later} is waiting now\n"
        assert removed.ok().json() == {"job": gone, "removed": True}
        job = await client.get_job(later)
        assert job is not None and job.state.value == "waiting"
        assert await client.get_job(gone) is None
        not_delayed, unknown = await asyncio.gather(
            conveyor("promote", str(later), url=url), conveyor("remove", str(gone), url=url))
    assert not_delayed.returncode == 1
    assert "is waiting, not delayed" in not_delayed.error_line()
    assert unknown.returncode == 1 and unknown.error_line() == f"conveyor: no job {gone}"


async def test_pause_and_resume(broker: Broker, url: str) -> None:
    paused = await conveyor("pause", "mail", url=url)
    assert paused.ok().stdout.startswith("mail paused")
    async with Client(url) as client:
        assert [q.paused for q in await client.queues() if q.name == "mail"] == [True]
        resumed = await conveyor("resume", "mail", "--json", url=url)
        assert resumed.ok().json() == {"queue": "mail", "paused": False}
        assert [q.paused for q in await client.queues() if q.name == "mail"] == [False]


async def test_drain_without_a_terminal_proceeds_and_prints_the_count(url: str) -> None:
    async with Client(url) as client:
        await client.add_bulk("drained", [{}] * 7)
        await client.add("drained", {}, delay=3600)
        result = await conveyor("drain", "drained", url=url)
        assert result.ok().stdout == "removed 8 waiting and delayed jobs of drained\n"
        counts = await client.counts("drained")
        assert counts["waiting"] == counts["delayed"] == 0
        await client.add("drained", {})
        as_json = await conveyor("drain", "drained", "--json", url=url)
        assert as_json.ok().json() == {"queue": "drained", "removed": 1}


async def test_drain_on_a_terminal_asks_first(url: str) -> None:
    async with Client(url) as client:
        await client.add_bulk("asked", [{}] * 4)
        for answer, status in ((b"n\n", 1), (b"y\n", 0)):
            terminal = Pty()
            try:
                terminal.write(answer)
                result = await conveyor("drain", "asked", url=url, stdin_fd=terminal.slave)
            finally:
                terminal.close()
            assert result.returncode == status, result
            assert "Drain 4 waiting and delayed jobs of asked? [y/N]" in result.stderr
            if status:
                assert result.stdout == "" and "nothing drained from asked" in result.stderr
                assert (await client.counts("asked"))["waiting"] == 4
            else:
                assert result.stdout == "removed 4 waiting and delayed jobs of asked\n"
                assert (await client.counts("asked"))["waiting"] == 0
        await client.add("asked", {})
        terminal = Pty()
        try:
            forced = await conveyor("drain", "asked", "--yes", url=url, stdin_fd=terminal.slave)
        finally:
            terminal.close()
        assert forced.ok().stdout == "removed 1 waiting and delayed job of asked\n"


async def test_clean_removes_finished_jobs_by_state_and_age(url: str) -> None:
    async with Client(url) as client:
        failed = await run_failing_job(client, url, "cleaned")
        kept = await conveyor("clean", "cleaned", "--state", "failed", "--older-than", "3600",
                              url=url)
        assert kept.ok().stdout == "removed 0 failed jobs of cleaned\n"
        assert await client.get_job(failed) is not None
        removed = await conveyor("clean", "cleaned", "--state", "failed", "--json", url=url)
        assert removed.ok().json() == {"queue": "cleaned", "state": "failed", "removed": 1}
        assert await client.get_job(failed) is None
    wrong = await conveyor("clean", "cleaned", "--state", "waiting", url=url)
    assert wrong.returncode == 2 and "argument --state" in wrong.error_line()
