"""Recent rates: how many jobs a second were added, completed and failed over the last minute."""

from __future__ import annotations

import math
from typing import Final

__all__ = ["WINDOW", "Rate"]

WINDOW: Final = 60
"""Seconds a rate looks back over."""


class Rate:
    """Events counted in one-second buckets over the last ``WINDOW`` seconds.

    Events come in runs at one time (every job a loop pass finishes finishes at the pass's
    time): ``begin`` starts a run, and the caller counts the run's further events in
    ``pending`` while ``at`` is their time, without a call. The run joins its bucket when the
    next one begins or the rate is read (which ends it).
    """

    __slots__ = ("_counts", "_mono", "_second", "at", "pending")

    def __init__(self) -> None:
        self._counts = [0] * WINDOW
        self._second = 0
        """The second (whole, on the clock ``mark`` is given) the newest bucket counts."""
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
        if self.pending:
            self.mark(self.pending, self._mono)
            self.pending = 0
        self.at = math.nan  # the run is over: the next event begins another
        second = int(now)
        if second > self._second:
            self._roll(second)
        return sum(self._counts) / WINDOW

    def _roll(self, second: int) -> None:
        """Empty the buckets of the seconds between the newest one and ``second``."""
        gap = second - self._second
        if not 0 < gap < WINDOW:
            # A minute or more of silence, or the clock went back: start over.
            self._counts = [0] * WINDOW
        else:
            for passed in range(self._second + 1, second + 1):
                self._counts[passed % WINDOW] = 0
        self._second = second
