"""The command lines: ``python -m conveyor.broker`` and ``python -m conveyor.worker`` as an
operator runs them."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import pytest
from processes import free_port

from conveyor.client import Client

if TYPE_CHECKING:
    from integration_support import BrokerProcess, StartWorker

RunWorkerCli = Callable[..., subprocess.CompletedProcess[str]]


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    """The CLI failed with exactly one readable line on stderr, mentioning ``words``."""
    assert result.returncode != 0, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("worker: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_the_broker_prints_its_address_serves_it_and_exits_0_on_a_signal(
    broker_process: BrokerProcess, signum: int
) -> None:
    match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)", broker_process.line)
    assert match is not None, broker_process.line
    assert 0 < int(match.group(1)) < 65536
    async with Client(broker_process.url) as client:
        await client.add("cli", "payload")
        assert (await client.counts("cli"))["waiting"] == 1
    assert broker_process.stop(signum) == 0, broker_process.log


def test_a_signal_as_soon_as_the_broker_says_it_listens_stops_it_cleanly(
    start_broker: Callable[..., BrokerProcess],
) -> None:
    """A supervisor may stop the broker the moment it prints its address: by then its signal
    handlers are in place, so it shuts down and exits 0 rather than dying of the signal."""
    for _ in range(3):  # the signal comes within a millisecond or two of the line: try again
        broker = start_broker()
        assert broker.stop() == 0, broker.log
        assert "shutting down" in broker.log


async def test_the_worker_cli_runs_jobs_from_the_broker_cli_and_both_exit_0(
    broker_process: BrokerProcess, start_worker: StartWorker,
    wait_for_workers: Callable[..., Awaitable[None]]
) -> None:
    workers = start_worker("examples.tasks:sleep", queue="cli", url=broker_process.url,
                           processes=2)
    async with Client(broker_process.url) as client:
        await wait_for_workers(client, "cli", 2, workers)
        ids = await client.add_bulk("cli", [{"seconds": 0}] * 4)
        results = await asyncio.gather(*(client.wait(job, timeout=30) for job in ids))
    assert all(isinstance(result["pid"], int) for result in results)
    workers.signal(signal.SIGTERM)
    assert await workers.wait(timeout=20) == 0, workers.log
    assert broker_process.stop() == 0, broker_process.log


@pytest.mark.parametrize(("args", "words"), [
    pytest.param(["examples.tasks", "--queue", "q"], ["MODULE:OBJECT"], id="no-colon"),
    pytest.param([":sleep", "--queue", "q"], ["MODULE:OBJECT"], id="no-module"),
    pytest.param(["no_such_module_xyz:run", "--queue", "q"], ["no_such_module_xyz"],
                 id="missing-module"),
    pytest.param(["examples.tasks:no_such_function", "--queue", "q"], ["no_such_function"],
                 id="missing-function"),
    pytest.param(["examples.tasks:sleep", "--queue", "q", "--url", "not-an-address"],
                 ["not-an-address", "HOST:PORT"], id="bad-url"),
    pytest.param(["examples.tasks:sleep", "--queue", "q", "--url", "http://127.0.0.1:7400"],
                 ["http://127.0.0.1:7400"], id="unsupported-scheme"),
    pytest.param(["examples.tasks:sleep", "--queue", "q", "--concurrency", "0"],
                 ["--concurrency"], id="zero-concurrency"),
])
def test_a_bad_worker_command_line_fails_with_one_readable_line(
    run_worker_cli: RunWorkerCli, args: list[str], words: list[str]
) -> None:
    assert_one_line_error(run_worker_cli(*args), *words)


def test_a_worker_that_cannot_reach_its_broker_fails_with_one_readable_line(
    run_worker_cli: RunWorkerCli,
) -> None:
    port = free_port()
    result = run_worker_cli("examples.tasks:sleep", "--queue", "q",
                            "--url", f"127.0.0.1:{port}")
    assert_one_line_error(result, f"127.0.0.1:{port}")
