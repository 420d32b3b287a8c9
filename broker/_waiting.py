"""A queue's waiting line: higher priority first, first in first out within a priority.

One deque per priority present, and the priorities kept sorted: O(1) to add at either end of a
priority and to take the first job, O(log p) when a priority appears or empties (p: priorities in
use, usually one). Taking a job out of the middle (``remove``) is O(n): only ``remove``,
``drain`` and ``retry`` of single jobs do it.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterator
from itertools import chain
from typing import Generic, Protocol, TypeVar

__all__ = ["WaitingLine"]


class _Prioritized(Protocol):
    @property
    def priority(self) -> int:
        """Higher runs first."""


Job = TypeVar("Job", bound=_Prioritized)
"""What waits in line (a job: the line needs only its priority)."""


class WaitingLine(Generic[Job]):
    """The waiting jobs of one queue, in the order they will be taken."""

    __slots__ = ("_levels", "_lines", "_size")

    def __init__(self) -> None:
        self._lines: dict[int, deque[Job]] = {}
        self._levels: list[int] = []
        """Negated priorities in use, ascending: the first is the highest priority."""
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def _line(self, priority: int) -> deque[Job]:
        line = self._lines.get(priority)
        if line is None:
            line = self._lines[priority] = deque()
            bisect.insort(self._levels, -priority)
        return line

    def append(self, job: Job) -> None:
        """Add ``job`` behind every waiting job of its priority."""
        self._line(job.priority).append(job)
        self._size += 1

    def appendleft(self, job: Job) -> None:
        """Add ``job`` ahead of every waiting job of its priority."""
        self._line(job.priority).appendleft(job)
        self._size += 1

    def extend(self, jobs: list[Job]) -> None:
        """Add ``jobs``, in order, at the tail of their priorities."""
        for job in jobs:
            self._line(job.priority).append(job)
        self._size += len(jobs)

    def popleft(self) -> Job:
        """Take the first job out (the line must not be empty)."""
        level = self._levels[0]
        line = self._lines[-level]
        job = line.popleft()
        self._size -= 1
        if not line:
            del self._lines[-level]
            del self._levels[0]
        return job

    def take(self, count: int) -> list[Job]:
        """Take up to ``count`` jobs from the front, in line order."""
        taken: list[Job] = []
        while count > 0 and self._size:
            level = self._levels[0]
            line = self._lines[-level]
            if count >= len(line):
                moved = len(line)
                taken += line
                del self._lines[-level]
                del self._levels[0]
            else:
                moved = count
                taken += [line.popleft() for _ in range(count)]
            self._size -= moved
            count -= moved
        return taken

    def remove(self, job: Job) -> None:
        """Take ``job`` out of the line (it must be in it)."""
        line = self._lines[job.priority]
        line.remove(job)
        self._size -= 1
        if not line:
            del self._lines[job.priority]
            self._levels.remove(-job.priority)

    def clear(self) -> list[Job]:
        """Take every job out; return them in line order."""
        jobs = list(self)
        self._lines.clear()
        self._levels.clear()
        self._size = 0
        return jobs

    def __iter__(self) -> Iterator[Job]:
        return chain.from_iterable(self._lines[-level] for level in list(self._levels))
