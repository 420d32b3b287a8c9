"""``conveyor broker`` and ``conveyor worker``, and the broker's checks of its arguments."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import COMMAND_TIMEOUT, command_env, conveyor
from processes import ROOT, WorkerProcess, launch_broker

from conveyor.broker import Broker
from conveyor.client import Client


async def test_conveyor_broker_serves_until_sigterm(tmp_path: Path) -> None:
    process, line = launch_broker(
        [sys.executable, "-m", "conveyor.cli", "broker", "--port", "0", "--data-dir",
         str(tmp_path / "data"), "--fsync", "always"],
        stderr_path=tmp_path / "broker.log", env=command_env(), new_session=True)
    try:
        assert line.startswith("listening on 127.0.0.1:"), (line, (tmp_path / "broker.log")
                                                             .read_text())
        url = line.removeprefix("listening on ")
        added = await conveyor("add", "served", '{"ok": true}', url=url)
        assert added.ok().stdout.strip().isdigit()
        status = await conveyor("status", "--json", url=url)
        assert [(q["name"], q["waiting"]) for q in status.ok().json()] == [("served", 1)]
        process.send_signal(signal.SIGTERM)
        assert process.wait(COMMAND_TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
    # The log kept the job.
    assert list((tmp_path / "data").iterdir())


async def test_conveyor_worker_runs_jobs_until_sigterm(broker: Broker, url: str,
                                                       tmp_path: Path) -> None:
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli", "worker", "cli_handlers:echo", "--queue",
             "echoed", "--url", url], cwd=ROOT, env=command_env(), stdin=subprocess.DEVNULL,
            stdout=log, stderr=log, start_new_session=True)
    worker = WorkerProcess(process, log_path)
    try:
        async with Client(url) as client:
            job_id = await client.add("echoed", {"hello": "world"})
            assert await client.wait(job_id, timeout=COMMAND_TIMEOUT) == {
                "echo": {"hello": "world"}}
        shown = await conveyor("job", str(job_id), url=url)
        assert "completed" in shown.ok().stdout
        assert 'result    {"echo":{"hello":"world"}}' in shown.stdout
        worker.signal(signal.SIGTERM)
        assert await worker.wait(COMMAND_TIMEOUT) == 0, worker.log
    finally:
        await worker.stop()


async def test_broker_and_worker_help_name_the_conveyor_command() -> None:
    broker_help, worker_help = await asyncio.gather(conveyor("broker", "--help"),
                                                    conveyor("worker", "--help"))
    assert broker_help.ok().stdout.startswith("usage: conveyor broker")
    assert "--data-dir" in broker_help.stdout and "--fsync" in broker_help.stdout
    assert worker_help.ok().stdout.startswith("usage: conveyor worker")
    assert "--concurrency" in worker_help.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--port", "70000"], "--port must be an integer from 0 to 65535, got 70000"),
    (["--port", "65536"], "--port must be an integer from 0 to 65535, got 65536"),
    (["--port", "-1"], "--port must be an integer from 0 to 65535, got -1"),
    (["--max-frame", "100"], "--max-frame must be a number of bytes from 4096"),
    (["--max-connections", "0"], "--max-connections must be at least 1"),
    (["--max-redeliveries", "-1"], "--max-redeliveries must be 0 or more"),
    (["--keep-completed", "-5"], "--keep-completed must be 0 or more"),
    (["--keep-failed", "-5"], "--keep-failed must be 0 or more"),
    (["--keep-age", "0"], "--keep-age must be a number of seconds above 0"),
    (["--keep-age", "nan"], "--keep-age must be a number of seconds above 0"),
    (["--compact-ratio", "1"], "--compact-ratio must be a number above 1"),
    (["--compact-floor", "-1"], "--compact-floor must be a number of bytes, 0 or more"),
    (["--shutdown-grace", "-0.5"], "--shutdown-grace must be a number of seconds, 0 or more"),
])
async def test_the_broker_refuses_bad_arguments_naming_them(
        tmp_path: Path, args: list[str], message: str) -> None:
    result = await conveyor("broker", "--data-dir", str(tmp_path / "data"), *args)
    assert result.returncode == 2, result
    assert result.stderr.strip().startswith(f"broker: {message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    assert not (tmp_path / "data").exists()


async def test_a_bad_data_directory_is_not_reported_as_a_listen_error(
        tmp_path: Path, broker: Broker) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    in_a_file = await conveyor("broker", "--port", "0", "--data-dir", str(a_file))
    under_a_file = await conveyor("broker", "--port", "0", "--data-dir", str(a_file / "data"))
    for result, path in ((in_a_file, a_file), (under_a_file, a_file / "data")):
        assert result.returncode == 1, result
        assert result.stderr.strip().startswith(f"broker: cannot use data directory {path}: ")
        assert "listen" not in result.stderr and "Traceback" not in result.stderr

    taken = await conveyor("broker", "--port", str(broker.port), "--data-dir",
                           str(tmp_path / "data"))
    assert taken.returncode == 1, taken
    assert taken.stderr.strip().splitlines()[-1].startswith(
        f"broker: cannot listen on 127.0.0.1:{broker.port}: ")
    assert "Traceback" not in taken.stderr


LOOKALIKE_HANDLER = '''
import importlib

# The project's own worker.py, imported as the project would (by its top-level name).
own_worker = importlib.import_module("worker")


def handle(job: object) -> str:
    return str(own_worker.WHO)
'''


async def test_broker_worker_and_add_work_from_a_directory_of_lookalike_modules(
        tmp_path: Path) -> None:
    """The three commands, as installed, run from a directory whose worker.py, client.py,
    broker.py and protocol.py would shadow top-level modules of those names."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("worker", "client", "broker", "protocol"):
        (project / f"{name}.py").write_text(f'WHO = "the project\'s {name}.py"\n'
                                            "raise SystemExit('imported by the wrong code')\n"
                                            if name != "worker" else
                                            f'WHO = "the project\'s {name}.py"\n')
    (project / "jobs_here.py").write_text(LOOKALIKE_HANDLER)
    script = str(Path(sys.executable).parent / "conveyor")
    env = {key: value for key, value in command_env().items() if key != "PYTHONPATH"}
    broker, line = launch_broker([script, "broker", "--port", "0", "--data-dir", "data"],
                                 stderr_path=tmp_path / "broker.log", env=env, cwd=project,
                                 new_session=True)
    worker: WorkerProcess | None = None
    try:
        url = line.removeprefix("listening on ")
        with (tmp_path / "worker.log").open("wb") as log:
            worker = WorkerProcess(subprocess.Popen(
                [script, "worker", "jobs_here:handle", "--queue", "local", "--url", url],
                cwd=project, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True), tmp_path / "worker.log")
        added = subprocess.run([script, "add", "local", "{}", "--url", url], cwd=project,
                               env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        assert added.returncode == 0, added.stderr
        async with Client(url) as client:
            result = await client.wait(int(added.stdout), timeout=COMMAND_TIMEOUT)
        assert result == "the project's worker.py"
    finally:
        if worker is not None:
            await worker.stop()
        broker.terminate()
        broker.wait(COMMAND_TIMEOUT)
        if broker.stdout is not None:
            broker.stdout.close()
