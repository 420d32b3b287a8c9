"""Helpers shared by the benchmarks: CPU time of process trees from /proc, percentiles, waiting
for a queue to finish a number of jobs, a broker process whose memory is measured, and the
targets' checks.

Linux only: CPU time is read from ``/proc/PID/stat`` (utime + stime, in clock ticks) and memory
from ``/proc/PID/status``, without psutil.
"""

from __future__ import annotations

import asyncio
import operator
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
_ROOT = Path(__file__).resolve().parent.parent


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


class LoggedBroker:
    """``python -m conveyor.broker --port 0`` on the data directory ``data_dir`` (kept), its log
    at INFO written to ``log_path``; ``*args`` are further options.

    ``ready`` is the seconds from the process start to its ``listening on`` line.
    """

    def __init__(self, data_dir: str | Path, log_path: Path, *args: str) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "conveyor.broker", "--port", "0", "--log-level", "info",
             "--data-dir", str(data_dir), *args],
            cwd=_ROOT, stdout=subprocess.PIPE, stderr=self._log, text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        self.ready = time.perf_counter() - started
        if not line.startswith("listening on "):
            self.process.kill()
            self.process.wait()
            self._log.close()
            raise RuntimeError(f"broker did not start (it printed {line!r}; its log: "
                               f"{log_path.read_text()[-2000:]!r})")
        self.url = line.removeprefix("listening on ")

    def memory_mb(self) -> dict[str, float]:
        """``rss_mb``: VmRSS (now), and ``peak_mb``: VmHWM (the peak so far), in MB."""
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024 / 1e6  # kB
        return {"rss_mb": fields["VmRSS"], "peak_mb": fields["VmHWM"]}

    def stop(self, *, check: bool = False) -> int:
        """SIGTERM, then wait (up to 120 s, then kill); return the exit status. With ``check``,
        raise ``RuntimeError`` when that status is not 0."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    self.process.kill()
            status = self.process.wait()
        finally:
            self._log.close()
        if check and status != 0:
            raise RuntimeError(f"the broker exited with status {status}")
        return status


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def print_checks(checks: dict[str, dict[str, Any]]) -> None:
    """One line per target: ``target NAME: VALUE OP TARGET met`` (or ``MISSED``)."""
    for name, result in checks.items():
        print(f"target {name}: {result['value']:g} {result['op']} {result['target']:g} "
              f"{'met' if result['met'] else 'MISSED'}")


def check(value: float, op: str, target: float) -> dict[str, Any]:
    """A target's check, as the benchmarks print it and put in their JSON line: ``value``,
    ``op``, ``target`` and ``met`` (whether ``value op target`` holds)."""
    return {"value": value, "op": op, "target": target, "met": _OPERATORS[op](value, target)}
