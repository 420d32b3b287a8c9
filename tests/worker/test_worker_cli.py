"""The worker CLI serving a ``Tasks`` registry: real worker processes against a real broker."""

from __future__ import annotations

import datetime
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
from processes import WorkerProcess, eventually, wait_for_workers
from registry_tasks import count_words, resize_image, send_email, wait_async, wait_plain
from worker_support import RunCli, StartCli, json_lines, subscribers

from conveyor.broker import Broker
from conveyor.client import Client, JobFailed
from conveyor.worker.cli import main
from conveyor.worker.supervisor import KILL_MARGIN

REGISTRY = "registry_tasks:tasks"


async def serving(broker: Broker, worker_count: int, *queues: str,
                  worker: WorkerProcess) -> None:
    """Wait until ``worker_count`` connections are subscribed to each of ``queues``."""
    for queue in queues:
        await wait_for_workers(broker, queue, worker_count, worker)


async def test_one_process_runs_the_named_jobs_of_two_queues_and_fails_an_unknown_name_once(
    url: str, broker: Broker, start_cli: StartCli
) -> None:
    worker = start_cli(REGISTRY, "--url", url, "--concurrency", "2")
    await serving(broker, 1, "emails", "images", worker=worker)
    async with Client(url) as client:
        ids = [await send_email.add(client, "a@example.com", subject="hi"),
               await count_words.add(client, text="one two three"),
               await resize_image.add(client, "a.png")]
        results = [await client.wait(job_id, timeout=30) for job_id in ids]
        unknown = await client.add("emails", {"to": "x"}, name="send_sms", attempts=3)
        with pytest.raises(JobFailed) as failure:
            await client.wait(unknown, timeout=30)
        info = await client.get_job(unknown)
    # current_job() gave each task its own job, in an async task and in plain ones (threads).
    assert results == [
        {"to": "a@example.com", "subject": "hi", "job": ids[0], "attempt": 1,
         "pid": worker.pid},
        {"words": 3, "job": ids[1], "thread": True},
        {"path": "a.png", "width": 100, "job": ids[2]},
    ]
    assert failure.value.error_type == "UnknownTask"
    message = failure.value.error_message
    assert "'send_sms'" in message and "send_email" in message and "count" in message, message
    assert info is not None and (info.state.value, info.attempt, info.attempts) == (
        "failed", 1, 3)
    log = worker.log
    assert f"job {ids[0]} (send_email on emails) started, attempt 1 of 1" in log, log
    assert re.search(rf"job {ids[2]} \(resize on images\) completed in \d+\.\d ms", log), log
    assert re.search(rf"job {unknown} \(send_sms on emails\) failed in \d+\.\d ms: "
                     rf"UnknownTask: .*send_sms.* \(no retry\)", log), log


async def test_queue_narrows_the_registry_and_its_queue_concurrency_wins(
    url: str, broker: Broker, start_cli: StartCli
) -> None:
    worker = start_cli(REGISTRY, "--url", url, "--queue", "images", "--concurrency", "5")
    await eventually(lambda: "serving images (3 at a time)" in worker.log, "serving images",
                     workers=[worker])
    assert (subscribers(broker, "images"), subscribers(broker, "emails")) == (1, 0)
    async with Client(url) as client:
        resized = await resize_image.add(client, path="b.png", width=7)
        await send_email.add(client, to="nobody")
        assert await client.wait(resized, timeout=30) == {"path": "b.png", "width": 7,
                                                          "job": resized}
        assert (await client.counts("emails"))["waiting"] == 1


async def test_each_queue_runs_at_most_its_own_concurrency_at_once(
    url: str, broker: Broker, start_cli: StartCli, tmp_path: Path
) -> None:
    worker = start_cli(REGISTRY, "--url", url, "--concurrency", "2")
    await serving(broker, 1, "emails", "images", worker=worker)
    gate = tmp_path / "gate"
    async with Client(url) as client:
        emails = [await wait_async.add(client, str(gate)) for _ in range(5)]
        images = [await wait_plain.add(client, str(gate)) for _ in range(5)]

        async def full() -> bool:
            return ((await client.counts("emails"))["active"] == 2
                    and (await client.counts("images"))["active"] == 3
                    and len(list(tmp_path.glob("gate.*"))) == 5)

        await eventually(full, "2 emails and 3 images jobs running", workers=[worker])
        emails_counts = await client.counts("emails")
        images_counts = await client.counts("images")
        assert (emails_counts["active"], emails_counts["waiting"]) == (2, 3)
        assert (images_counts["active"], images_counts["waiting"]) == (3, 2)
        assert len(list(tmp_path.glob("gate.*"))) == 5
        gate.touch()
        for job_id in emails + images:
            assert await client.wait(job_id, timeout=30) == worker.pid


REGISTRY_ERRORS = [
    pytest.param(["registry_tasks"], "'registry_tasks' is not of the form MODULE:OBJECT",
                 id="no-colon"),
    pytest.param([":tasks"], "is not of the form MODULE:OBJECT", id="no-module"),
    pytest.param(["no_such_module_xyz:tasks"],
                 "cannot import 'no_such_module_xyz': No module named 'no_such_module_xyz'",
                 id="missing-module"),
    pytest.param(["registry_tasks:nothing"],
                 "module 'registry_tasks' has no attribute 'nothing'", id="missing-attribute"),
    pytest.param(["registry_tasks:NOT_A_HANDLER"],
                 "'registry_tasks:NOT_A_HANDLER' is a int, not a function or a Tasks registry",
                 id="not-callable"),
    pytest.param(["registry_tasks:send_email"], "one task of a Tasks registry", id="a-task"),
    pytest.param([REGISTRY, "--queue", "videos"],
                 "the registry 'registry_tasks:tasks' has no queue 'videos' "
                 "(its queues: emails, images)", id="unknown-queue"),
    pytest.param(["registry_tasks:handler"], "give the queue it serves with --queue NAME",
                 id="handler-without-queue"),
    pytest.param([REGISTRY, "--concurrency", "0"], "--concurrency must be at least 1",
                 id="zero-concurrency"),
    pytest.param([REGISTRY, "--processes", "0"], "--processes must be at least 1",
                 id="zero-processes"),
    pytest.param([REGISTRY, "--url", "not-an-address"], "not-an-address", id="bad-url"),
]


@pytest.mark.parametrize(("args", "expected"), REGISTRY_ERRORS)
def test_a_bad_command_line_exits_2_with_one_line(run_cli: RunCli, args: list[str],
                                                   expected: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("worker: ") and expected in lines[0], lines[0]


def test_the_conveyor_command_shows_its_own_name_in_the_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["--help"], prog="conveyor worker")
    usage = capsys.readouterr().out
    assert usage.startswith("usage: conveyor worker "), usage
    assert "--log-format" in usage and "MODULE:OBJECT" in usage


SHADOWING_MODULE = '''
import importlib

from conveyor.worker import Tasks

# The project's own modules of these names, imported as the project would (by their top-level
# names), beside conveyor's.
NAMES = ("worker", "client", "broker", "protocol")
OWN = {name: importlib.import_module(name) for name in NAMES}

tasks = Tasks()


@tasks.job(queue="local")
def where() -> list[str]:
    return [OWN[name].WHO for name in NAMES]
'''


@pytest.mark.parametrize("command", [
    pytest.param([sys.executable, "-m", "conveyor.worker"], id="python-m"),
    pytest.param([str(Path(sys.executable).parent / "conveyor"), "worker"], id="conveyor-script"),
])
async def test_a_user_module_imports_from_the_current_directory_beside_same_named_files(
    url: str, broker: Broker, start_cli: StartCli, tmp_path: Path, command: list[str]
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("worker", "client", "broker", "protocol"):
        (project / f"{name}.py").write_text(f'WHO = "the project\'s {name}.py"\n')
    (project / "jobs_here.py").write_text(SHADOWING_MODULE)
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "CONVEYOR_URL")}
    worker = start_cli("jobs_here:tasks", "--url", url, cwd=project, command=command, env=env)
    await serving(broker, 1, "local", worker=worker)
    async with Client(url) as client:
        job_id = await client.add("local", {}, name="where")
        assert await client.wait(job_id, timeout=30) == [
            f"the project's {name}.py" for name in ("worker", "client", "broker", "protocol")]


async def test_the_supervisor_starts_children_together_and_restarts_a_killed_one(
    url: str, broker: Broker, start_cli: StartCli
) -> None:
    worker = start_cli(REGISTRY, "--url", url, "--processes", "3", "--grace", "1")
    await serving(broker, 3, "emails", "images", worker=worker)
    log = worker.log
    pids = [int(pid) for pid in re.findall(r"started worker process (\d+)", log)]
    assert len(pids) == 3, log
    # Started together: every child was started before any had even connected.
    first_serving = log.index(" serving ")
    assert all(log.index(f"started worker process {pid}") < first_serving for pid in pids), log

    os.kill(pids[0], signal.SIGKILL)
    await eventually(lambda: f"worker process {pids[0]} exited with status -9; restarting in "
                             f"0.5 s" in worker.log, "the restart logged", workers=[worker])
    await eventually(lambda: len(re.findall(r"started worker process", worker.log)) == 4,
                     "a fourth child started", workers=[worker])
    await serving(broker, 3, "emails", "images", worker=worker)
    async with Client(url) as client:
        ids = [await send_email.add(client, to=f"user{n}") for n in range(6)]
        results = [await client.wait(job_id, timeout=30) for job_id in ids]
    children = {int(pid) for pid in re.findall(r"started worker process (\d+)", worker.log)}
    assert {result["pid"] for result in results} <= children - {pids[0]}

    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert await worker.wait(timeout=1 + KILL_MARGIN + 10) == 0, worker.log
    assert time.monotonic() - started < 1 + KILL_MARGIN
    assert "every worker process stopped" in worker.log
    assert "killing it" not in worker.log
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_sigterm_hands_running_jobs_back_within_the_grace_period(
    url: str, broker: Broker, start_cli: StartCli, tmp_path: Path
) -> None:
    grace = 0.5
    worker = start_cli(REGISTRY, "--url", url, "--processes", "2", "--grace", str(grace))
    await serving(broker, 2, "emails", "images", worker=worker)
    gate = tmp_path / "gate"
    async with Client(url) as client:
        held = [await wait_async.add(client, str(gate)), await wait_plain.add(client, str(gate))]
        await eventually(lambda: len(list(tmp_path.glob("gate.*"))) == 2, "both jobs started",
                         workers=[worker])
        started = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert await worker.wait(timeout=grace + KILL_MARGIN + 10) == 0, worker.log
        elapsed = time.monotonic() - started
        infos = [await client.get_job(job_id) for job_id in held]
    assert elapsed < grace + KILL_MARGIN, worker.log  # nothing had to be killed
    assert "killing it" not in worker.log
    assert [(info.state.value, info.attempt) for info in infos if info is not None] == [
        ("waiting", 0), ("waiting", 0)]
    assert len(re.findall(r"cancelled after \d+\.\d ms and handed back", worker.log)) == 2


async def test_json_logs_are_one_object_per_line_with_the_job_fields(
    url: str, broker: Broker, start_cli: StartCli
) -> None:
    worker = start_cli(REGISTRY, "--url", url, "--log-format", "json")
    await serving(broker, 1, "emails", "images", worker=worker)
    async with Client(url) as client:
        done = await send_email.add(client, to="a@example.com")
        await client.wait(done, timeout=30)
        failed = await client.add("images", {"path": 3}, name="crop")
        with pytest.raises(JobFailed):
            await client.wait(failed, timeout=30)
    worker.signal(signal.SIGTERM)
    assert await worker.wait(timeout=20) == 0, worker.log
    records = json_lines(worker.log)
    for record in records:
        assert {"time", "level", "pid", "message"} <= record.keys(), record
        datetime.datetime.fromisoformat(record["time"])
    by_job = {(record.get("job_id"), record.get("outcome", "started")): record
              for record in records if "job_id" in record}
    start = by_job[done, "started"]
    assert (start["queue"], start["name"], start["attempt"], start["level"], start["pid"]) == (
        "emails", "send_email", 1, "info", worker.pid)
    completed = by_job[done, "completed"]
    assert completed["duration_ms"] >= 0 and completed["message"].startswith(f"job {done} ")
    failure = by_job[failed, "failed"]
    assert (failure["queue"], failure["name"], failure["error_type"]) == (
        "images", "crop", "UnknownTask")
    assert "'crop'" in failure["error"] and "resize" in failure["error"]

