"""``Task.add`` is checked by mypy against the task function's signature, with either client, and
``Task.using`` against the job options: a producer's mistake is a type error, not a failed job."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from processes import ROOT

MYPY = [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--hide-error-context",
        "--show-column-numbers"]

PRELUDE = '''\
from __future__ import annotations

from conveyor.client import Client, SyncClient
from conveyor.worker import Tasks

tasks = Tasks()


@tasks.job(queue="emails")
async def send_email(to: str, subject: str, retries: int = 0) -> dict[str, str]:
    return {"to": to, "subject": subject}


@tasks.job(queue="images", name="resize")
def resize(path: str, width: int = 100) -> str:
    return path
'''

GOOD = PRELUDE + '''

async def produce(client: Client) -> list[int]:
    first: int = await send_email.add(client, "a@b", "hi")
    second = await send_email.add(client, to="a@b", subject="hi", retries=2)
    third = await send_email.using(delay=5, priority=2, attempts=3).add(client, "a@b", "x")
    fourth = await resize.add(client, path="a.png")
    result: dict[str, str] = await send_email("a@b", "called directly")
    assert result
    return [first, second, third, fourth]


def produce_sync(client: SyncClient) -> int:
    job_id: int = resize.add(client, "a.png", width=3)
    return job_id + resize.using(keep_result=60.0).add(client, path="b.png")
'''

# Each bad line ends with "# error"; mypy must report an error on exactly those lines.
BAD = PRELUDE + '''

async def produce(client: Client) -> None:
    await send_email.add(client, to=1, subject="hi")  # error: wrong type
    await send_email.add(client, subject="hi")  # error: missing argument
    await send_email.add(client, to="a", subject="b", cc="c")  # error: unknown argument
    await resize.add(client, "a.png", "wide")  # error: wrong positional type
    await send_email.using(priority="high").add(client, "a", "b")  # error: bad option type
    await send_email.using(delay=5, prio=2).add(client, "a", "b")  # error: misspelt option
    name: str = await resize.add(client, path="a.png")  # error: add returns an int
    resize(path=3)  # error: calling the task checks its arguments too


def produce_sync(client: SyncClient) -> None:
    resize.add(client, width=3)  # error: missing argument with the blocking client
    pending: str = resize.add(client, "a.png")  # error: the blocking client returns an int
'''


async def mypy(path: Path) -> tuple[int, str]:
    """Run ``mypy --strict`` on ``path`` (from the repository, with its configuration, and a
    cache of its own); return its exit status and output."""
    process = await asyncio.create_subprocess_exec(
        *MYPY, "--cache-dir", str(path.with_suffix(".mypy_cache")), str(path), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = await process.communicate()
    return await process.wait(), output.decode()


async def test_mypy_accepts_good_calls_and_reports_every_bad_one(tmp_path: Path) -> None:
    good, bad = tmp_path / "good_producer.py", tmp_path / "bad_producer.py"
    good.write_text(textwrap.dedent(GOOD))
    bad.write_text(textwrap.dedent(BAD))
    (good_status, good_output), (bad_status, bad_output) = await asyncio.gather(
        mypy(good), mypy(bad))
    assert good_status == 0, good_output

    expected = {number for number, line in enumerate(BAD.splitlines(), 1) if "# error" in line}
    reported = {int(match.group(1)) for match in re.finditer(
        rf"^{re.escape(str(bad))}:(\d+):\d+: error:", bad_output, re.MULTILINE)}
    assert bad_status == 1, bad_output
    assert reported == expected, bad_output
    assert ('No overload variant of "add" of "Task" matches argument types "Client", "int", '
            '"str"') in bad_output
    assert 'Unexpected keyword argument "cc" for overloaded function "add"' in bad_output
    assert 'Argument "priority" to "using" of "Task" has incompatible type "str"' in bad_output
    assert 'Unexpected keyword argument "prio" for "using"' in bad_output
