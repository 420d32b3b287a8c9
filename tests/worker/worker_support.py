"""Helpers of the worker tests (importable as ``worker_support``: pytest puts this directory on
``sys.path``)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from processes import WorkerProcess

from conveyor.broker import Broker

HERE = Path(__file__).resolve().parent
"""This directory: child processes get it on ``PYTHONPATH`` to import ``registry_tasks``."""
MODULE_COMMAND = (sys.executable, "-m", "conveyor.worker")

StartCli = Callable[..., WorkerProcess]
"""The ``start_cli`` fixture: ``start_cli(*args, cwd=..., command=..., env=...)``."""
RunCli = Callable[..., subprocess.CompletedProcess[str]]
"""The ``run_cli`` fixture: ``run_cli(*args)``."""


def subscribers(broker: Broker, queue: str) -> int:
    """Connections subscribed to ``queue`` on an in-process broker."""
    state = broker.queues.queues.get(queue)
    return 0 if state is None else len(state.consumers)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` parsed as a JSON object (a line that is not one fails the test)."""
    records = []
    for line in text.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        records.append(record)
    return records

