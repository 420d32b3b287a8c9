"""Helpers shared by the benchmarks: CPU time of process trees from /proc, percentiles, and
waiting for a queue to finish a number of jobs.

Linux only: CPU time is read from ``/proc/PID/stat`` (utime + stime, in clock ticks), without
psutil.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, Protocol

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


class _Counts(Protocol):
    async def counts(self, queue: str) -> dict[str, int]: ...


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` from field 3 (state) on; None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces or parentheses itself.
    return text[text.rindex(")") + 2:].split()


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, found through the ppid field of ``/proc/*/stat``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [child for parent in frontier for child in children.get(parent, [])]
        found += frontier
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time used so far by ``pids`` (seconds); gone processes count 0."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15
    return total / _TICKS_PER_SECOND


class CpuMeter:
    """CPU time a fixed set of processes uses between ``start()`` and ``stop()``."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self._before = 0.0
        self.seconds = 0.0

    def start(self) -> None:
        self._before = cpu_seconds(self.pids)

    def stop(self) -> float:
        self.seconds = cpu_seconds(self.pids) - self._before
        return self.seconds


def percentile(ordered: list[float], percent: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, -(-len(ordered) * percent // 100))
    return ordered[int(rank) - 1]


async def wait_finished(client: _Counts, queue: str, total: int, *, timeout: float = 600,
                        interval: float = 0.002) -> float:
    """Poll ``counts`` until ``total`` jobs of ``queue`` have completed or failed.

    Returns the ``time.perf_counter()`` of the reply that showed it; its error is at most
    ``interval`` plus one round trip. Raises ``TimeoutError`` after ``timeout`` seconds.
    """
    deadline = time.perf_counter() + timeout
    while True:
        counts = await client.counts(queue)
        now = time.perf_counter()
        if counts["completed"] + counts["failed"] >= total:
            if counts["failed"]:
                raise RuntimeError(f"{counts['failed']} jobs of {queue!r} failed")
            return now
        if now > deadline:
            raise TimeoutError(f"{queue!r}: {counts} after {timeout} s, expected {total} done")
        await asyncio.sleep(interval)


def rounded(value: Any, digits: int = 4) -> Any:
    """``value`` with floats (also inside lists and dicts) rounded, for a readable JSON line."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {key: rounded(item, digits) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item, digits) for item in value]
    return value
