"""``conveyor add``: one job, and one job per line of a JSONL file (or standard input)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from cli_support import LiveCommand, Pty, conveyor
from processes import eventually

from conveyor.broker import Broker
from conveyor.client import Backoff, Client
from conveyor.protocol import MAX_PRIORITY, MIN_PRIORITY

LINES = 5_000
"""Lines of the JSONL files: several blocks of the CLI's reader, and a few of its bulk adds."""


def write_jsonl(path: Path, lines: int, *, bad: dict[int, str] | None = None) -> Path:
    """``lines`` payloads ``{"n": N, ...}`` (N from 1, its line number); ``bad`` replaces lines."""
    text = "".join(f'{{"n": {n}, "email": "user{n}@example.com", "tags": ["a", "b"]}}\n'
                   for n in range(1, lines + 1))
    if bad:
        rows = text.splitlines()
        for number, line in bad.items():
            rows[number - 1] = line
        text = "\n".join(rows) + "\n"
    path.write_text(text)
    return path


async def test_add_prints_the_id_and_applies_every_option(broker: Broker, url: str) -> None:
    plain, with_options, as_json, exponential = await asyncio.gather(
        conveyor("add", "emails", '{"to": "a@b"}', url=url),
        conveyor("add", "emails", '[1, "two", null]', "--name", "send", "--id", "order-1",
                 "--priority", "7", "--attempts", "3", "--backoff", "2.5", "--timeout", "9",
                 "--delay", "60", "--keep-result", "30", url=url),
        conveyor("add", "emails", "42", "--json", url=url),
        conveyor("add", "emails", "{}", "--attempts", "5", "--backoff-exponential", "0.5",
                 "--backoff-cap", "8", url=url))
    first = int(plain.ok().stdout)
    second = int(with_options.ok().stdout)
    third = as_json.ok().json()["id"]
    fourth = int(exponential.ok().stdout)
    async with Client(url) as client:
        job = await client.get_job(first)
        assert job is not None and job.data == {"to": "a@b"} and job.state.value == "waiting"
        job = await client.get_job(second)
        assert job is not None and job.data == [1, "two", None]
        assert (job.name, job.key, job.priority, job.attempts) == ("send", "order-1", 7, 3)
        assert job.state.value == "delayed" and job.run_at is not None
        assert job.run_at - job.created_at == pytest.approx(60, abs=1)
        job = await client.get_job(third)
        assert job is not None and job.data == 42
        # The same idempotency key again adds nothing: the first job's id comes back.
        again = await conveyor("add", "emails", "{}", "--id", "order-1", url=url)
        assert int(again.ok().stdout) == second
    options = broker.queues.jobs[second].options
    assert options.backoff == Backoff(type="fixed", delay=2.5)
    assert (options.timeout, options.keep_result) == (9.0, 30.0)
    assert broker.queues.jobs[fourth].options.backoff == Backoff(type="exponential", delay=0.5,
                                                                 cap=8.0)


async def test_add_file_adds_every_line_in_order_with_the_options(tmp_path: Path,
                                                                  url: str) -> None:
    path = write_jsonl(tmp_path / "jobs.jsonl", LINES)
    result = await conveyor("add", "bulk", "--file", str(path), "--name", "import",
                            "--priority", "3", url=url)
    match = re.fullmatch(r"added 5,000 jobs to bulk in [0-9.]+ s \([0-9,]+ jobs/s\)\n",
                         result.ok().stdout)
    assert match, result
    async with Client(url) as client:
        assert (await client.counts("bulk"))["waiting"] == LINES
        jobs = await client.get_jobs("bulk", "waiting", limit=LINES)
    assert [job.data["n"] for job in jobs] == list(range(1, LINES + 1))
    assert {(job.name, job.priority) for job in jobs} == {("import", 3)}


async def test_add_file_as_json_and_from_standard_input(tmp_path: Path, url: str) -> None:
    path = write_jsonl(tmp_path / "jobs.jsonl", LINES)
    # Blank lines are skipped; a last line without a newline counts.
    piped = b'{"a": 1}\n\n  \n"two"\r\n[3]'
    from_file, from_stdin = await asyncio.gather(
        conveyor("add", "json", "--file", str(path), "--json", url=url),
        conveyor("add", "stdin", "--file", "-", url=url, stdin=piped))
    summary = from_file.ok().json()
    assert summary["added"] == LINES and summary["queue"] == "json"
    assert summary["seconds"] > 0 and summary["jobs_per_s"] > 0
    assert from_stdin.ok().stdout.startswith("added 3 jobs to stdin")
    async with Client(url) as client:
        assert (await client.counts("json"))["waiting"] == LINES
        jobs = await client.get_jobs("stdin", "waiting")
    assert [job.data for job in jobs] == [{"a": 1}, "two", [3]]


async def test_a_bad_line_stops_the_file_naming_it_after_the_lines_before_it(
        tmp_path: Path, url: str) -> None:
    bad = 3_210
    path = write_jsonl(tmp_path / "jobs.jsonl", LINES, bad={bad: '{"n": 3210, oops}'})
    result = await conveyor("add", "partial", "--file", str(path), url=url)
    assert result.returncode == 2
    line = result.error_line()
    assert f"jobs.jsonl line {bad}: not valid JSON" in line, line
    assert f"lines 1 to {bad - 1} were added ({bad - 1:,} jobs)" in line, line
    assert result.stdout == ""
    async with Client(url) as client:
        jobs = await client.get_jobs("partial", "waiting", limit=LINES)
    assert [job.data["n"] for job in jobs] == list(range(1, bad))

    # Two values on one line, or one value over two lines, are bad lines too.
    for text, number in ((b'{"n": 1}\n1 2\n', 2), (b'[1,\n2]\n', 1)):
        result = await conveyor("add", "strict", "--file", "-", url=url, stdin=text)
        assert result.returncode == 2 and f"standard input line {number}:" in result.error_line()
    async with Client(url) as client:
        assert (await client.counts("strict"))["waiting"] == 1


async def test_add_file_shows_a_progress_bar_on_a_terminal(tmp_path: Path, url: str) -> None:
    path = write_jsonl(tmp_path / "jobs.jsonl", LINES)
    terminal = Pty()

    async def keep_reading() -> None:
        # The command must never block on a full terminal.
        while True:
            terminal.drain()
            await asyncio.sleep(0.01)

    reader = asyncio.create_task(keep_reading())
    try:
        result = await conveyor("add", "tty", "--file", str(path), url=url,
                                stderr_fd=terminal.slave)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        terminal.drain()
        terminal.close()
    assert result.returncode == 0 and result.stdout.startswith("added 5,000 jobs to tty")
    assert b"adding to tty" in terminal.output and b"jobs/s" in terminal.output
    assert b"Traceback" not in terminal.output


@pytest.mark.parametrize(("args", "words"), [
    (["add", "q"], "DATA_JSON or --file"),
    (["add", "q", "{}", "--file", "x.jsonl"], "DATA_JSON or --file"),
    (["add", "q", "{nope"], "DATA_JSON is not valid JSON"),
    (["add", "q", "{}", "--attempts", "0"], "argument --attempts"),
    (["add", "q", "{}", "--delay", "-1"], "argument --delay"),
    (["add", "q", "{}", "--timeout", "0"], "argument --timeout"),
    (["add", "q", "{}", "--priority", "high"], "argument --priority"),
    (["add", "q", "{}", "--backoff-cap", "5"], "--backoff-cap"),
    (["add", "q", "{}", "--backoff", "1", "--backoff-exponential", "2"], "not allowed with"),
    (["add", "q", "--file", "-", "--id", "k"], "--id"),
    (["add", "q", "--file", "/no/such/file.jsonl"], "cannot read /no/such/file.jsonl"),
    (["add", "", "{}"], "queue name is empty"),
])
async def test_bad_add_usage_is_exit_2_with_one_line(url: str, args: list[str],
                                                     words: str) -> None:
    result = await conveyor(*args, url=url)
    assert result.returncode == 2, result
    assert words in result.error_line()
    assert result.stdout == ""


@pytest.mark.parametrize("value", [MAX_PRIORITY + 1, MIN_PRIORITY - 1, 1 << 62])
async def test_a_priority_past_the_protocols_range_is_refused_before_connecting(
        value: int) -> None:
    with socket.socket() as sock:
        # Bound, not listening: the value must be refused as it is parsed, not by a broker.
        sock.bind(("127.0.0.1", 0))
        result = await conveyor("add", "q", "{}", "--priority", str(value),
                                url=f"127.0.0.1:{sock.getsockname()[1]}")
    assert result.returncode == 2, result
    assert result.error_line() == (
        f"conveyor: argument --priority: expected an integer from {MIN_PRIORITY} to "
        f"{MAX_PRIORITY}, got '{value}' (see 'conveyor add --help')")


async def test_the_ends_of_the_priority_range_are_added(url: str) -> None:
    for value in (MIN_PRIORITY, MAX_PRIORITY):
        result = await conveyor("add", "edges", "{}", "--priority", str(value), url=url)
        async with Client(url) as client:
            job = await client.get_job(int(result.ok().stdout))
        assert job is not None and job.priority == value


async def test_the_json_summary_is_the_only_thing_on_stdout(tmp_path: Path, url: str) -> None:
    path = write_jsonl(tmp_path / "jobs.jsonl", 10)
    result = await conveyor("add", "quiet", "--file", str(path), "--json", url=url)
    assert json.loads(result.ok().stdout.strip())["added"] == 10
    assert len(result.stdout.splitlines()) == 1


async def test_bulk_adds_sent_without_waiting_are_added_in_the_order_sent(url: str) -> None:
    """``Client.add_bulk_nowait``, which ``add --file`` pipelines: bulks queued one after another
    while earlier ones are in flight (and the socket's buffer is full) keep their order."""
    bulks, size = 6, 20_000
    async with Client(url) as client:
        futures = [client.add_bulk_nowait("ordered", [{"bulk": b, "n": n} for n in range(size)],
                                          priority=1)
                   for b in range(bulks)]
        ids = [job_id for future in futures for job_id in await future]
        assert ids == sorted(ids) and len(set(ids)) == bulks * size
        jobs = await client.get_jobs("ordered", "waiting", limit=10_000, offset=size * 3 - 5)
    assert [(job.data["bulk"], job.data["n"]) for job in jobs[:10]] == (
        [(2, n) for n in range(size - 5, size)] + [(3, n) for n in range(5)])
    assert {job.priority for job in jobs} == {1}


async def test_lines_typed_at_a_terminal_are_added_and_it_keeps_its_mode(url: str) -> None:
    terminal = Pty()
    try:
        terminal.write(b'{"typed": 1}\n{"typed": 2}\n\x04')  # two lines, then Ctrl-D
        result = await conveyor("add", "typed", "--file", "-", url=url, stdin_fd=terminal.slave)
        assert os.get_blocking(terminal.slave), "the terminal was left non-blocking"
    finally:
        terminal.close()
    assert result.ok().stdout.startswith("added 2 jobs to typed")
    async with Client(url) as client:
        assert [job.data for job in await client.get_jobs("typed", "waiting")] == [
            {"typed": 1}, {"typed": 2}]


async def test_a_broker_that_goes_away_mid_file_is_exit_1_saying_what_was_added(
        make_broker: Callable[..., Awaitable[Broker]]) -> None:
    broker = await make_broker()
    url = f"127.0.0.1:{broker.port}"
    live = await LiveCommand.start("add", "gone", "--file", "-", url=url, stdin_pipe=True)
    try:
        assert live.process.stdin is not None
        live.process.stdin.write(b'{"n": 1}\n\n{"n": 3}\n')
        await live.process.stdin.drain()
        async with Client(url) as client:
            async def added() -> bool:
                return (await client.counts("gone"))["waiting"] >= 2

            await eventually(added, "the first lines added", timeout=15)
        await broker.close()
        live.process.stdin.write(b'{"n": 4}\n')
        status = await live.finish()
    finally:
        await live.kill()
    assert status == 1, live.err
    lines = live.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("conveyor: "), live.err
    assert "lines 1 to 3 were added (2 jobs), the lines after may or may not have been" in lines[0]
