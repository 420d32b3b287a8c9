"""Job handlers for ``conveyor worker`` in the CLI tests (importable through ``PYTHONPATH``)."""

from __future__ import annotations

from typing import Any

from conveyor.worker import Job


async def echo(job: Job) -> dict[str, Any]:
    """Return the payload."""
    return {"echo": job.data}
