"""The ``conveyor`` command as a whole: help, version, addresses, and its exit statuses."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from importlib.metadata import version

from cli_support import LiveCommand, command_env, conveyor
from processes import ROOT, eventually, free_port

from conveyor.client import Client

COMMANDS = ["broker", "worker", "status", "jobs", "job", "workers", "events", "add", "retry",
            "promote", "remove", "pause", "resume", "drain", "clean", "user", "dashboard"]


async def test_help_lists_every_command_without_loading_any_of_them() -> None:
    result = await conveyor("--help")
    listed = result.ok().stdout
    for command in COMMANDS:
        assert re.search(rf"\n    {command}\s", listed), (command, listed)
    # The parser alone: neither the broker, the worker, the client nor rich is imported.
    probe = subprocess.run(
        [sys.executable, "-c",
         "import sys\nfrom conveyor.cli.main import main\n"
         "for argv in (['--help'], ['status', '--help'], ['add', '--help']):\n"
         "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
         "print(sorted(m for m in sys.modules if m.startswith(('conveyor.', 'rich'))),"
         " file=sys.stderr)"],
        cwd=ROOT, env=command_env(), capture_output=True, text=True, timeout=30)
    loaded = probe.stderr.strip()
    assert probe.returncode == 0 and loaded.startswith("["), probe
    assert "conveyor.cli.main" in loaded
    for package in ("conveyor.broker", "conveyor.worker", "conveyor.client", "rich"):
        assert f"'{package}" not in loaded, loaded


async def test_version_and_usage_errors() -> None:
    shown, nothing, unknown, bad_option = await asyncio.gather(
        conveyor("--version"), conveyor(), conveyor("frobnicate"),
        conveyor("status", "--interval", "0"))
    assert shown.ok().stdout == f"conveyor {version('conveyor')}\n"
    for result, words in ((nothing, "required: COMMAND"), (unknown, "invalid choice"),
                          (bad_option, "argument --interval")):
        assert result.returncode == 2, result
        assert words in result.error_line()
        assert result.stdout == ""


async def test_every_command_reports_a_broker_that_is_not_running_in_one_line() -> None:
    address = f"127.0.0.1:{free_port()}"
    commands = [["status"], ["status", "--watch"], ["jobs", "q", "--state", "waiting"],
                ["job", "1"], ["job", "--key", "k"], ["workers"], ["events", "q"],
                ["add", "q", "{}"], ["add", "q", "--file", "-"],
                ["retry", "q"], ["promote", "1"], ["remove", "1"], ["pause", "q"],
                ["resume", "q"], ["drain", "q"], ["clean", "q", "--state", "failed"]]
    results = await asyncio.gather(*(conveyor(*args, url=address, stdin=b"{}\n")
                                     for args in commands))
    for args, result in zip(commands, results, strict=True):
        assert result.returncode == 1, (args, result)
        assert result.error_line() == (f"conveyor: cannot connect to broker at {address}: "
                                       f"Connection refused"), args
        assert result.stdout == "", args


async def test_the_address_comes_from_url_or_conveyor_url(url: str) -> None:
    async with Client(url) as client:
        await client.add("from-env", {})
    from_env, bad_url, bad_env = await asyncio.gather(
        conveyor("status", "--json", env={"CONVEYOR_URL": url}),
        conveyor("status", url="not-an-address"),
        conveyor("jobs", "q", "--state", "failed", env={"CONVEYOR_URL": "host:port"}))
    assert [queue["name"] for queue in from_env.ok().json()] == ["from-env"]
    assert bad_url.returncode == 2
    assert bad_url.error_line() == ("conveyor: broker address 'not-an-address' is not of the "
                                    "form HOST:PORT")
    assert bad_env.returncode == 2 and "'host:port'" in bad_env.error_line()
    # tcp:// is understood too, and --url wins over the environment.
    prefixed = await conveyor("status", "--json", url=f"tcp://{url}",
                              env={"CONVEYOR_URL": "127.0.0.1:1"})
    assert [queue["name"] for queue in prefixed.ok().json()] == ["from-env"]


async def test_ctrl_c_stops_a_command_quietly_with_status_130(url: str) -> None:
    # Standard input stays open: each line is added as it comes, before the end of the input.
    live = await LiveCommand.start("add", "slow", "--file", "-", url=url, stdin_pipe=True)
    try:
        assert live.process.stdin is not None
        live.process.stdin.write(b'{"first": true}\n')
        await live.process.stdin.drain()
        async with Client(url) as client:
            async def added() -> bool:
                return (await client.counts("slow"))["waiting"] >= 1

            await eventually(added, "the first line added", timeout=15)
        assert await live.interrupt() == 130
    finally:
        await live.kill()
    assert live.err.strip() == "", live.err
