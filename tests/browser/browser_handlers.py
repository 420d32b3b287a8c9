"""Job handlers for the browser tests' worker processes.

Worker subprocesses import this module as ``browser_handlers`` (the fixtures put this directory
on their ``PYTHONPATH``); its name is unlike any other test directory's module, since pytest puts
every test directory on the one ``sys.path``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from conveyor.worker import Job


class ReportFailed(RuntimeError):
    """What ``render_report`` raises while its marker file exists."""


async def complete(job: Job) -> Any:
    """Finish at once, with the payload as the result."""
    return job.data


async def render_report(job: Job) -> dict[str, Any]:
    """Fail while the file ``job.data["marker"]`` exists, with a message naming the report;
    succeed once it is gone (so that a retry of a failed job completes)."""
    marker = Path(job.data["marker"])
    if marker.exists():
        raise ReportFailed(f"report {job.data['report']} cannot render: {marker.name} is locked")
    return {"report": job.data["report"], "pages": 3}


async def send_email(job: Job) -> dict[str, Any]:
    """Take ``job.data["seconds"]`` to send a message; return what was sent."""
    await asyncio.sleep(float(job.data["seconds"]))
    return {"to": job.data["to"], "message_id": f"<{job.id}@mail.example.com>"}


async def make_thumbnail(job: Job) -> dict[str, Any]:
    """Take ``job.data["seconds"]`` to resize an image; return the thumbnail's size."""
    await asyncio.sleep(float(job.data["seconds"]))
    return {"image": job.data["image"], "width": 320, "height": 240}


async def deliver_webhook(job: Job) -> dict[str, Any]:
    """POST an event to a subscriber (simulated): subscribers whose ``status`` is 500 or more
    fail, with the status in the error, as an HTTP client would report it."""
    await asyncio.sleep(float(job.data["seconds"]))
    return {"status": _post(job.data["url"], job.data["status"])}


def _post(url: str, status: int) -> int:
    if status >= 500:
        raise ConnectionError(f"POST {url} returned {status} Service Unavailable")
    return status
