"""``conveyor status``, ``jobs``, ``job`` and ``events`` against a real broker."""

from __future__ import annotations

import asyncio
import json
import time

from cli_support import LiveCommand, Pty, conveyor, run_failing_job

from conveyor.broker import Broker
from conveyor.client import Client, Flow


async def test_status_lists_every_queue_as_a_table_and_as_json(url: str) -> None:
    async with Client(url) as client:
        await client.add_bulk("emails", [{"n": n} for n in range(3)])
        await client.add("reports", {}, delay=60)
        await client.pause("reports")

    table, as_json = await asyncio.gather(conveyor("status", url=url),
                                          conveyor("status", "--json", url=url))
    lines = table.ok().stdout.splitlines()
    emails = next(line.split() for line in lines if "emails" in line)
    reports = next(line.split() for line in lines if "reports" in line)
    assert emails[:7] == ["emails", "3", "0", "0", "0", "0", "0"], table.stdout
    assert reports[:6] == ["reports", "(paused)", "0", "0", "1", "0"], table.stdout
    by_name = {queue["name"]: queue for queue in as_json.ok().json()}
    assert by_name["emails"]["waiting"] == 3 and not by_name["emails"]["paused"]
    assert by_name["reports"]["delayed"] == 1 and by_name["reports"]["paused"]
    assert set(by_name["emails"]) >= {"active", "completed", "failed", "workers", "added_rate",
                                      "completed_rate", "failed_rate"}


async def test_status_watch_refreshes_until_ctrl_c_and_exits_0(url: str) -> None:
    async with Client(url) as client:
        await client.add("watched", {})
        watch = await LiveCommand.start("status", "--watch", "--interval", "0.05", url=url)
        try:
            await watch.line(lambda line: line.split()[:2] == ["watched", "1"])
            # A later refresh shows a change made while it runs.
            await client.add_bulk("watched", [{}, {}])
            await watch.line(lambda line: line.split()[:2] == ["watched", "3"])
            assert await watch.interrupt() == 0
        finally:
            await watch.kill()
    assert "Traceback" not in watch.err and "KeyboardInterrupt" not in watch.err, watch.err


async def test_status_watch_on_a_terminal_redraws_in_place(url: str) -> None:
    async with Client(url) as client:
        await client.add("on-tty", {})
    terminal = Pty()
    try:
        watch = await LiveCommand.start("status", "--watch", "--interval", "0.05", url=url,
                                        stdout_fd=terminal.slave)
        try:
            shown = await terminal.read_until(b"on-tty")
            await terminal.read_until(b"Ctrl-C to stop")
            assert await watch.interrupt() == 0
        finally:
            await watch.kill()
    finally:
        terminal.close()
    # Live redraws move the cursor up over the previous table rather than appending to it.
    assert b"\x1b[" in shown
    assert "Traceback" not in watch.err, watch.err


async def test_status_watch_as_json_prints_one_document_per_refresh(url: str) -> None:
    async with Client(url) as client:
        await client.add("lines", {})
    watch = await LiveCommand.start("status", "--watch", "--interval", "0.05", "--json", url=url)
    try:
        await watch.line(lambda line: '"lines"' in line)
        await watch.line(lambda line: '"lines"' in line)
        assert await watch.interrupt() == 0
    finally:
        await watch.kill()
    documents = [json.loads(line) for line in watch.out if line]
    assert len(documents) >= 2 and documents[0][0]["name"] == "lines"


async def test_jobs_lists_a_queue_in_one_state_with_limit_and_offset(url: str) -> None:
    async with Client(url) as client:
        ids = await client.add_bulk("listed", [{"n": n} for n in range(5)], name="resize")
        failed = await run_failing_job(client, url, "broken")

    table, page, failures = await asyncio.gather(
        conveyor("jobs", "listed", "--state", "waiting", url=url),
        conveyor("jobs", "listed", "--state", "waiting", "--limit", "2", "--offset", "1",
                 "--json", url=url),
        conveyor("jobs", "broken", "--state", "failed", url=url))
    rows = [line for line in table.ok().stdout.splitlines() if "resize" in line]
    assert [int(row.split()[0]) for row in rows] == ids
    assert all("0/1" in row for row in rows)
    assert [job["id"] for job in page.ok().json()] == ids[1:3]
    assert page.json()[0]["data"] == {"n": 1} and page.json()[0]["state"] == "waiting"
    row = next(line for line in failures.ok().stdout.splitlines() if str(failed) in line)
    assert "2/2" in row and "ValueError: no mailbox for nobody@example.com" in row


async def test_job_shows_data_error_traceback_and_times(url: str) -> None:
    async with Client(url) as client:
        job_id = await run_failing_job(client, url, "mail")
        waiting = await client.add("mail", {"to": "x"}, id="order-17", priority=5)

    shown, as_json, other = await asyncio.gather(
        conveyor("job", str(job_id), url=url), conveyor("job", str(job_id), "--json", url=url),
        conveyor("job", str(waiting), url=url))
    text = shown.ok().stdout
    assert "failed" in text and "2 of 2" in text and "send" in text
    assert '{"to":"nobody@example.com"}' in text
    assert "ValueError: no mailbox for nobody@example.com" in text
    assert "Traceback (most recent call last)" in text and "fail_always" in text
    assert time.strftime("%Y-%m-%d") in text and "ago)" in text
    record = as_json.ok().json()
    assert record["id"] == job_id and record["state"] == "failed" and record["attempt"] == 2
    assert record["error"]["type"] == "ValueError" and "fail_always" in record["error"]["traceback"]
    assert record["data"] == {"to": "nobody@example.com"} and record["name"] == "send"
    assert "order-17" in other.ok().stdout and "waiting" in other.stdout


async def test_a_flow_shows_its_parent_waiting_for_children_and_each_child_its_parent(
        url: str) -> None:
    async with Client(url) as client:
        added = await client.add_flow(Flow("reports", {"month": 11}, children=[
            Flow("pages", {"page": 1}), Flow("pages", {"page": 2})]))
    listed, parent, child = await asyncio.gather(
        conveyor("jobs", "reports", "--state", "waiting-children", "--json", url=url),
        conveyor("job", str(added.id), url=url),
        conveyor("job", str(added.children[1].id), url=url))
    assert [job["id"] for job in listed.ok().json()] == [added.id]
    assert "waiting-children" in parent.ok().stdout
    assert "0 of 2 finished" in parent.stdout
    assert f"parent    {added.id}" in child.ok().stdout


async def test_an_unknown_job_is_exit_1_with_one_line(url: str) -> None:
    result = await conveyor("job", "424242", url=url)
    assert result.returncode == 1
    assert result.error_line() == "conveyor: no job 424242"
    assert result.stdout == ""


async def test_events_prints_one_line_per_event_until_ctrl_c(broker: Broker, url: str) -> None:
    follow = await LiveCommand.start("events", "mail", url=url)
    follow_json = await LiveCommand.start("events", "mail", "--json", url=url)
    try:
        for live in (follow, follow_json):
            await live.line(lambda line: "following the events of mail" in line, stream="stderr")
        async with Client(url) as client:
            job_id = await run_failing_job(client, url, "mail")
        added = await follow.line(lambda line: " added " in line)
        assert f"job {job_id}" in added and "send" in added
        failed = await follow.line(lambda line: " failed " in line)
        assert "attempt 2" in failed and "ValueError: no mailbox" in failed
        await follow_json.line(lambda line: '"failed"' in line)
        assert await follow.interrupt() == 0
        assert await follow_json.interrupt() == 0
    finally:
        await follow.kill()
        await follow_json.kill()
    assert "Traceback" not in follow.err and "Traceback" not in follow_json.err
    kinds = [json.loads(line)["kind"] for line in follow_json.out if line]
    assert kinds[0] == "added" and "retrying" in kinds and kinds[-1] == "failed"
    retrying = next(json.loads(line) for line in follow_json.out if '"retrying"' in line)
    assert retrying["job"] == job_id and retrying["error"]["type"] == "ValueError"
