"""Recent rates: how many jobs a second were added, completed and failed over the last minute."""

from __future__ import annotations

from typing import Final

__all__ = ["WINDOW", "Rate"]

WINDOW: Final = 60
"""Seconds a rate looks back over."""


class Rate:
    """Events counted in one-second buckets over the last ``WINDOW`` seconds."""

    __slots__ = ("_counts", "_second")

    def __init__(self) -> None:
        self._counts = [0] * WINDOW
        self._second = 0
        """The second (whole, on the clock ``mark`` is given) the newest bucket counts."""

    def mark(self, count: int, now: float) -> None:
        """Count ``count`` events at time ``now``."""
        second = int(now)
        if second != self._second:
            self._roll(second)
        self._counts[second % WINDOW] += count

    def per_second(self, now: float) -> float:
        """Events a second over the last ``WINDOW`` seconds."""
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
