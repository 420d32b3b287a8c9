"""``conveyor dashboard`` as a user runs it: one ``listening on`` line, a clean stop on SIGTERM
(even with live pages open), a refusal to listen beyond this machine without ``--insecure``, and
one line saying what to install when the extra is missing."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dashboard_support import sse
from processes import ROOT, STOP_TIMEOUT, check_asyncio_leaks, read_line, subprocess_env

from conveyor.client import Client
from conveyor.dashboard.cli import MISSING_EXTRA

HERE = Path(__file__).resolve().parent
START_TIMEOUT = 30.0


@contextlib.contextmanager
def dashboard_process(*args: str, module: str = "conveyor.cli",
                      stderr: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The dashboard command started with ``args``, and the first line it printed; killed at
    the end of the block if it is still running."""
    command = [sys.executable, "-m", module, *(["dashboard"] if module == "conveyor.cli" else []),
               *args]
    with stderr.open("wb") as errors:
        process = subprocess.Popen(command, cwd=ROOT, env=subprocess_env(HERE),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=errors)
    assert process.stdout is not None
    try:
        yield process, read_line(process.stdout, START_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()


@pytest.mark.parametrize("module", ["conveyor.cli", "conveyor.dashboard"])
async def test_the_command_prints_its_address_serves_and_stops_on_sigterm(
        url: str, tmp_path: Path, module: str) -> None:
    async with Client(url) as client:
        job_id = await client.add("emails", {"to": "a@b"})
    stderr = tmp_path / "dashboard.stderr"
    with dashboard_process("--port", "0", "--url", url, "--refresh", "0.2", module=module,
                           stderr=stderr) as (process, line):
        assert line.startswith("listening on http://127.0.0.1:") and line.endswith("/"), line
        async with httpx.AsyncClient(base_url=line.removeprefix("listening on "),
                                     timeout=20) as http:
            page = await http.get("/")
            assert page.status_code == 200 and 'data-queue="emails"' in page.text
            # Live pages open while it stops: their streams end, the process exits at once.
            async with contextlib.aclosing(sse(http, "/events")) as stats, \
                    contextlib.aclosing(sse(http, f"/jobs/{job_id}/events")) as job:
                await anext(stats)
                await anext(job)
                process.send_signal(signal.SIGTERM)
                status = await asyncio.to_thread(process.wait, STOP_TIMEOUT)
        assert process.stdout is not None
        rest = process.stdout.read().decode()
    output = stderr.read_text()
    assert status == 0, output
    assert rest == "", "one line on stdout, no more"
    assert "Traceback" not in output
    check_asyncio_leaks(output, "the dashboard")


def test_a_host_beyond_this_machine_needs_insecure(tmp_path: Path) -> None:
    stderr = tmp_path / "dashboard.stderr"
    with dashboard_process("--host", "0.0.0.0", "--port", "0", stderr=stderr) as (process, line):
        assert process.wait(STOP_TIMEOUT) == 2
    assert line == ""
    refusal = stderr.read_text().strip()
    assert len(refusal.splitlines()) == 1 and "--insecure" in refusal, refusal
    with dashboard_process("--host", "0.0.0.0", "--port", "0", "--insecure", "--url",
                           "127.0.0.1:1", stderr=stderr) as (process, line):
        assert line.startswith("listening on http://0.0.0.0:"), line
        process.send_signal(signal.SIGTERM)
        assert process.wait(STOP_TIMEOUT) == 0
    assert "reachable from other machines" in stderr.read_text()


def test_without_the_extra_it_says_what_to_install() -> None:
    # The extra's libraries hidden: importing them fails as when they are not installed.
    code = ("import sys; sys.modules['starlette'] = None; "
            "from conveyor.cli import main; sys.exit(main(['dashboard', '--port', '0']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(HERE),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == MISSING_EXTRA
    assert done.stdout == ""
