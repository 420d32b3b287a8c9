"""Recent rates: how many jobs a second were added, started, completed, failed and retried over
the last 1, 5 and 15 minutes."""

from __future__ import annotations

import math
from typing import Final

__all__ = ["MINUTES", "WINDOW", "Rate"]

WINDOW: Final = 60
"""Seconds the one-minute rate looks back over, in one-second buckets."""
MINUTES: Final = 15
"""Minutes the longest rate looks back over, in one-minute buckets."""
_SLOTS: Final = MINUTES + 1
"""One-minute buckets kept: the current (partial) minute and the ``MINUTES`` before it."""


class Rate:
    """Events counted in one-second buckets over the last ``WINDOW`` seconds, and in one-minute
    buckets over the last ``MINUTES`` minutes.

    Events come in runs at one time (every job a loop pass finishes finishes at the pass's
    time): ``begin`` starts a run, and the caller counts the run's further events in
    ``pending`` while ``at`` is their time, without a call. The run joins its buckets when the
    next one begins or the rate is read (which ends it).
    """

    __slots__ = ("_counts", "_minute", "_minutes", "_mono", "_second", "at", "pending")

    def __init__(self) -> None:
        self._counts = [0] * WINDOW
        self._second = 0
        """The second (whole, on the clock ``mark`` is given) the newest bucket counts."""
        self._minutes = [0] * _SLOTS
        self._minute = 0
        """The minute (whole) the newest one-minute bucket counts."""
        self.at = math.nan
        """The time (as the caller reads it) of the events counted in ``pending``; NaN (equal
        to no time) when no run is going on."""
        self.pending = 0
        """Events of the current run not yet in their bucket."""
        self._mono = 0.0
        """The current run's time on the clock ``mark`` is given."""

    def mark(self, count: int, now: float) -> None:
        """Count ``count`` events at time ``now``."""
        second = int(now)
        if second != self._second:
            self._roll(second)
        self._counts[second % WINDOW] += count
        self._minutes[self._minute % _SLOTS] += count

    def begin(self, at: float, now: float) -> None:
        """Start a run with one event at the caller's time ``at``, ``now`` on the clock ``mark``
        is given; until the next run, the caller adds the run's events to ``pending``."""
        if self.pending:
            self.mark(self.pending, self._mono)
        self.at = at
        self._mono = now
        self.pending = 1

    def per_second(self, now: float) -> float:
        """Events a second over the last ``WINDOW`` seconds."""
        self._settle(now)
        return sum(self._counts) / WINDOW

    def rates(self, now: float) -> tuple[float, float, float]:
        """Events a second over the last 1, 5 and 15 minutes. The longer two count the
        current minute so far, the whole minutes before it, and the share of the oldest minute
        that falls in the span (as if its events were spread evenly over it)."""
        self._settle(now)
        minutes = self._minutes
        if not any(minutes):  # idle for 15 minutes (most queues of a large broker): no sums
            return 0.0, 0.0, 0.0
        m1 = sum(self._counts) / WINDOW
        into = min(max(now / 60 - self._minute, 0.0), 1.0)  # of the current minute, elapsed
        # The buckets oldest first, the current minute last (a rotation of the ring).
        split = self._minute % _SLOTS + 1
        ordered = minutes[split:] + minutes[:split]
        m5 = (sum(ordered[-5:]) + ordered[-6] * (1.0 - into)) / (5 * 60)
        m15 = (sum(ordered[-MINUTES:]) + ordered[-MINUTES - 1] * (1.0 - into)) / (MINUTES * 60)
        return m1, m5, m15

    def _settle(self, now: float) -> None:
        """End the current run (its events join their buckets) and move the buckets to ``now``."""
        if self.pending:
            self.mark(self.pending, self._mono)
            self.pending = 0
        self.at = math.nan  # the run is over: the next event begins another
        second = int(now)
        if second > self._second:
            self._roll(second)

    def _roll(self, second: int) -> None:
        """Empty the buckets of the seconds (and minutes) between the newest one and
        ``second``."""
        gap = second - self._second
        if not 0 < gap < WINDOW:
            # A minute or more of silence, or the clock went back: start over.
            self._counts = [0] * WINDOW
        else:
            for passed in range(self._second + 1, second + 1):
                self._counts[passed % WINDOW] = 0
        self._second = second
        minute = second // 60
        if minute != self._minute:
            gap = minute - self._minute
            if not 0 < gap < _SLOTS:
                self._minutes = [0] * _SLOTS
            else:
                for passed in range(self._minute + 1, minute + 1):
                    self._minutes[passed % _SLOTS] = 0
            self._minute = minute
