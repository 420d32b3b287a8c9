"""Duration histograms: how long jobs waited and ran, and how long fsyncs took.

Durations are counted in the buckets of ``HISTOGRAM_BOUNDS`` since the broker started, and over
the last ``RECENT`` seconds to within a minute: at the first duration counted in each minute the
histogram keeps a copy of its counts so far, and the recent counts are the counts now less the
copy taken ``RECENT`` seconds (rounded up to the minute) ago.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from typing import Final

from conveyor.protocol import HISTOGRAM_BOUNDS, RECENT, Histogram

__all__ = ["Durations"]

_BOUNDS: Final = tuple(HISTOGRAM_BOUNDS)
_WIRE_BOUNDS: Final = list(HISTOGRAM_BOUNDS)
_RECENT_MINUTES: Final = math.ceil(RECENT / 60)
"""Whole minutes before the current one that the recent counts cover."""


class Durations:
    """Durations (seconds) counted in buckets, with the recent ones apart.

    Like ``Rate``, durations come in runs: the jobs a loop pass delivers were mostly added
    together, so many share one wait. ``begin`` starts a run of one duration and the caller
    counts the run's further durations in ``pending`` while ``last`` equals theirs, without a
    call (a run is one length at one time: ``last`` and ``at`` both equal).
    """

    __slots__ = ("_marks", "at", "_minute", "counts", "last", "pending", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BOUNDS) + 1)
        """Durations in each bucket since the start."""
        self.sum = 0.0
        """Seconds of every duration counted in ``counts``."""
        self.last = math.nan
        """The duration of the run counted in ``pending``; NaN (equal to none) without a run."""
        self.pending = 0
        """Durations of the current run not yet in their bucket."""
        self.at = math.nan
        """When (monotonic seconds) the current run was counted."""
        self._minute = -1
        """The minute of the newest copy of the counts."""
        self._marks: deque[tuple[int, list[int]]] = deque()
        """(minute, the counts as that minute began), oldest first, for the recent minutes."""

    def begin(self, duration: float, now: float) -> None:
        """Start a run with one duration at monotonic time ``now``; the caller adds the run's
        further durations of the same length to ``pending``."""
        if self.pending:
            self._settle()
        self.last = duration
        self.at = now
        self.pending = 1

    def add(self, duration: float, count: int, now: float) -> None:
        """Count ``count`` durations of ``duration`` seconds at monotonic time ``now``."""
        self.begin(duration, now)
        self.pending = count

    def read(self, now: float) -> Histogram:
        """The histogram as the wire carries it, at monotonic time ``now``."""
        if self.pending:
            self._settle()
        self.last = math.nan  # the run is over: the next duration begins another
        counts = self.counts
        first = int(now // 60) - _RECENT_MINUTES
        marks = self._marks
        while marks and marks[0][0] < first:
            marks.popleft()
        # Nothing counted since ``first`` began: no mark of that time or later.
        recent = ([now_ - then for now_, then in zip(counts, marks[0][1], strict=True)]
                  if marks else [0] * len(counts))
        return Histogram(bounds=_WIRE_BOUNDS, counts=counts.copy(), sum=self.sum, recent=recent)

    def _settle(self) -> None:
        minute = int(self.at // 60)
        if minute > self._minute:
            marks = self._marks
            marks.append((minute, self.counts.copy()))
            while marks[0][0] < minute - _RECENT_MINUTES:
                marks.popleft()
            self._minute = minute
        pending = self.pending
        self.counts[bisect_left(_BOUNDS, self.last)] += pending
        self.sum += self.last * pending
        self.pending = 0
