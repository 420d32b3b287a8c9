"""Deadlines: what falls due when, by kind and id, served in time order by one timer.

Seven kinds, each keyed by an id, never by the object it is about (so nothing outlives it here):

- ``DUE``: a delayed job becomes waiting (job id);
- ``LEASE``: a subscriber's lease runs out unless it was heard from (consumer id);
- ``EXPIRE``: a finished job's own ``keep_result`` ends (job id);
- ``AGE``: a queue's oldest retained jobs pass ``--keep-age`` (queue name);
- ``LIMIT``: the next slot of a rate-limited queue whose jobs wait for it (queue name);
- ``SCHEDULE``: a schedule's next due time, when it makes a job (schedule id);
- ``GROUP``: the next rate slot of a group whose jobs wait for it, or when an idle group's last
  slot has passed and it may be forgotten ((queue name, group)).

An id has at most one live deadline of each kind. Setting it again, or cancelling it, leaves its
old heap entry behind; a stale entry is skipped when it comes up, and the heap is rebuilt from the
live entries as soon as stale ones outnumber twice the live ones (plus ``_SLACK``). So the heap
never holds more than a constant factor of the live deadlines, whatever the churn.

Entries are ``(when, kind, sequence, id)``: among deadlines due at the same instant, kinds are
served in the order above, then in the order they were set.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Hashable, Mapping
from typing import Final

__all__ = ["Deadlines", "Kind"]

_SLACK: Final = 16
"""Stale entries tolerated beyond twice the live ones before the heap is rebuilt."""


class Kind(enum.IntEnum):
    """What a deadline is for (and, for one instant, the order kinds are served in)."""

    DUE = 0
    LEASE = 1
    EXPIRE = 2
    AGE = 3
    LIMIT = 4
    SCHEDULE = 5
    GROUP = 6


_Entry = tuple[float, Kind, int, Hashable]
"""(when, kind, sequence, id): the sequence orders ties and keeps ids from being compared."""


class Deadlines:
    """Live deadlines by kind and id, and a heap that serves them in time order."""

    __slots__ = ("_count", "_heap", "_live", "_sequence")

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._live: tuple[dict[Hashable, _Entry], ...] = tuple({} for _ in Kind)
        """The live entry of each id, one map per kind (indexed by the kind's value)."""
        self._count = 0
        """Live entries, over every kind."""
        self._sequence = 0

    def __len__(self) -> int:
        """Live deadlines."""
        return self._count

    @property
    def entries(self) -> int:
        """Entries in the heap, live and stale."""
        return len(self._heap)

    def live(self, kind: Kind) -> Mapping[Hashable, object]:
        """The ids with a live deadline of ``kind`` (a view: membership tests are O(1))."""
        return self._live[kind]

    def when(self, kind: Kind, key: Hashable) -> float | None:
        """When the deadline of ``kind`` for ``key`` falls due, or None if it has none."""
        entry = self._live[kind].get(key)
        return None if entry is None else entry[0]

    def set(self, kind: Kind, key: Hashable, when: float) -> None:
        """Make ``key``'s deadline of ``kind`` fall due at ``when`` (replacing any other)."""
        self._sequence += 1
        entry = (when, kind, self._sequence, key)
        live = self._live[kind]
        if key not in live:
            self._count += 1
        live[key] = entry
        heapq.heappush(self._heap, entry)
        if len(self._heap) > 3 * self._count + _SLACK:
            self._rebuild()

    def cancel(self, kind: Kind, key: Hashable) -> None:
        """Drop ``key``'s deadline of ``kind``, if it has one."""
        if self._live[kind].pop(key, None) is not None:
            self._count -= 1
            if len(self._heap) > 3 * self._count + _SLACK:
                self._rebuild()

    def next(self) -> float | None:
        """When the earliest live deadline falls due, or None."""
        heap = self._heap
        while heap:
            entry = heap[0]
            if self._live[entry[1]].get(entry[3]) is entry:
                return entry[0]
            heapq.heappop(heap)
        return None

    def pop(self, now: float) -> tuple[Kind, Hashable] | None:
        """Take the earliest live deadline due by ``now``: its (kind, id); None if none is due."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            live = self._live[entry[1]]
            key = entry[3]
            if live.get(key) is entry:
                del live[key]
                self._count -= 1
                return entry[1], key
        return None

    def _rebuild(self) -> None:
        self._heap = [entry for live in self._live for entry in live.values()]
        heapq.heapify(self._heap)
