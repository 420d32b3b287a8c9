"""The census: a first pass over the log that finds the jobs it does not outlive.

Replay in log order meets every job's add before its end: a log whose jobs were added long
before most of them finished would have replay build every one of them, and the restart would
need the memory of the whole history at once. The census reads the records first, cheaply (the
payloads, results and errors are skipped, not decoded), and works out which jobs are gone at the
end of the log: removed, or finished and forgotten by the retention counts (or by a
``keep_result`` of 0). Replay then builds only the others. The census also counts every queue's
completed and failed jobs, which replay cannot do without the jobs it skips.

It follows the rules replay follows (``Replayer``, ``Retention``): a record changes a job only if
the job is there in the state the record applies to, and the retention lists keep the newest
``keep_completed`` (``keep_failed``) jobs of a queue, in the order they finished.

Memory: a byte of state and four bytes of queue per id over the span of ids the log holds (ids
only grow, so that span is dense), a few far-off ids in a dict, and the retention lists.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from typing import Final

import msgspec

__all__ = ["Census"]

# A job's state, in the low three bits of its byte.
_UNKNOWN: Final = 0
_LIVE: Final = 1
"""Waiting, delayed or active."""
_COMPLETED: Final = 2
_FAILED: Final = 3
"""Finished and in its queue's retention list."""
_OWN_COMPLETED: Final = 4
_OWN_FAILED: Final = 5
"""Finished and kept by its own ``keep_result``."""
_DEAD: Final = 6
"""Forgotten: replay does not build it."""
_STATE: Final = 0b111
_KEEPS_OWN: Final = 0b1000
"""The job has a ``keep_result`` of its own."""
_KEEPS_NONE: Final = 0b10000
"""...and it is 0 or less: the job is forgotten as it finishes."""

_SPREAD: Final = 1 << 20
"""Ids further than this (or than the span so far) from the dense span go to the dict."""

_NIL: Final = b"\xc0"


# Records as the census reads them: only the leading fields it needs (array-like structs ignore
# the fields after their last), payloads and results left undecoded.


class _Options(msgspec.Struct, frozen=True, array_like=True):
    key: msgspec.Raw
    priority: msgspec.Raw
    attempts: msgspec.Raw
    backoff: msgspec.Raw
    timeout: msgspec.Raw
    run_at: msgspec.Raw
    keep_result: float | None = None


class _Record(msgspec.Struct, frozen=True, array_like=True, tag_field="t"):
    pass


class _Added(_Record, tag=1, frozen=True):
    queue: str
    first_id: int
    created_at: msgspec.Raw
    jobs: msgspec.Raw


class _Finished(_Record, tag=2, frozen=True):
    id: int
    attempt: msgspec.Raw
    at: msgspec.Raw
    result: msgspec.Raw = msgspec.Raw(_NIL)
    error: msgspec.Raw = msgspec.Raw(_NIL)


class _Requeued(_Record, tag=3, frozen=True):
    pass


class _AddedWithOptions(_Record, tag=4, frozen=True):
    queue: str
    first_id: int
    created_at: msgspec.Raw
    jobs: msgspec.Raw
    options: list[_Options]


class _Retrying(_Record, tag=5, frozen=True):
    pass


class _Promoted(_Record, tag=6, frozen=True):
    pass


class _Removed(_Record, tag=7, frozen=True):
    ids: list[int]


class _Paused(_Record, tag=8, frozen=True):
    pass


class _Retried(_Record, tag=9, frozen=True):
    ids: list[int]


class _QueueSnapshot(_Record, tag=10, frozen=True):
    name: str
    completed: int
    failed: int


class _JobSnapshot(_Record, tag=11, frozen=True):
    id: int
    queue: str
    data: msgspec.Raw
    created_at: msgspec.Raw
    state: str
    attempt: msgspec.Raw
    drops: msgspec.Raw = msgspec.Raw(_NIL)
    finished_at: msgspec.Raw = msgspec.Raw(_NIL)
    result: msgspec.Raw = msgspec.Raw(_NIL)
    error: msgspec.Raw = msgspec.Raw(_NIL)
    options: _Options | None = None


class _LastId(_Record, tag=12, frozen=True):
    pass


class _Limited(_Record, tag=13, frozen=True):
    pass


class _ScheduleSet(_Record, tag=15, frozen=True):
    pass


class _ScheduleRemoved(_Record, tag=16, frozen=True):
    pass


class _FlowJob(msgspec.Struct, frozen=True, array_like=True):
    queue: str
    data: msgspec.Raw
    options: _Options


class _FlowAdded(_Record, tag=17, frozen=True):
    first_id: int
    created_at: msgspec.Raw
    jobs: list[_FlowJob]


class _ChildDone(_Record, tag=18, frozen=True):
    pass


_Any = (_Added | _Finished | _Requeued | _AddedWithOptions | _Retrying | _Promoted | _Removed
        | _Paused | _Retried | _QueueSnapshot | _JobSnapshot | _LastId | _Limited
        | _ScheduleSet | _ScheduleRemoved | _FlowAdded | _ChildDone)
_decoder: Final[msgspec.msgpack.Decoder[_Any]] = msgspec.msgpack.Decoder(_Any)


def _array_length(raw: msgspec.Raw) -> int:
    """The number of elements of the MessagePack array ``raw`` (read from its header)."""
    with memoryview(raw) as view:
        head = view[0]
        if head & 0xF0 == 0x90:
            return head & 0x0F
        if head == 0xDC:
            return int.from_bytes(view[1:3], "big")
        if head == 0xDD:
            return int.from_bytes(view[1:5], "big")
    raise msgspec.DecodeError("expected a MessagePack array of payloads")


class Census:
    """Which jobs a log does not outlive, and every queue's lifetime counters at its end."""

    def __init__(self, *, keep_completed: int, keep_failed: int) -> None:
        self._limits = (keep_completed, keep_failed)
        self._names: dict[str, int] = {}
        self.counters: dict[str, list[int]] = {}
        """Each queue's completed and failed jobs in all, at the end of the log."""
        self._counts: list[list[int]] = []
        """The same lists, by queue number."""
        self._kept: dict[tuple[int, bool], OrderedDict[int, None]] = {}
        """Each queue's retention lists (completed: False, failed: True), oldest first."""
        self._low = 0
        """The id of the first byte of ``_states``."""
        self._states = bytearray()
        self._queues = array("I")
        self._far: dict[int, int] = {}
        """Ids far from the dense span: queue << 8 | state byte."""

    # Reading the log.

    def apply(self, body: bytes | memoryview) -> None:
        """Take one record's body into account, in log order."""
        match _decoder.decode(body):
            case _Finished(id=job_id, error=error):
                self._finish(job_id, failed=bytes(error) != _NIL)
            case _Added(queue=name, first_id=first_id, jobs=jobs):
                self._add(first_id, _array_length(jobs), self._queue(name))
            case _AddedWithOptions(queue=name, first_id=first_id, options=options):
                self._add(first_id, len(options), self._queue(name))
                for offset, option in enumerate(options):
                    if option.keep_result is not None:
                        self._keep_own(first_id + offset, option.keep_result)
            case _FlowAdded(first_id=first_id, jobs=flow):
                for offset, node in enumerate(flow):
                    self._add(first_id + offset, 1, self._queue(node.queue))
                    if node.options.keep_result is not None:
                        self._keep_own(first_id + offset, node.options.keep_result)
            case _Removed(ids=ids):
                for job_id in ids:
                    self._remove(job_id)
            case _Retried(ids=ids):
                for job_id in ids:
                    self._retry(job_id)
            case _QueueSnapshot(name=name, completed=completed, failed=failed):
                self._counts[self._queue(name)][:] = [completed, failed]
            case _JobSnapshot(id=job_id, queue=name, state=state, options=options):
                self._restore(job_id, self._queue(name), state,
                              None if options is None else options.keep_result)
            case _:
                pass  # changes nothing about which jobs are there

    # What replay asks.

    def dead(self, job_id: int) -> bool:
        """Whether the job is gone by the end of the log (replay does not build it)."""
        index = job_id - self._low
        if 0 <= index < len(self._states):
            return self._states[index] == _DEAD
        return self._far.get(job_id, 0) & _STATE == _DEAD

    def skips(self, body: bytes | memoryview) -> bool:
        """Whether the record in ``body`` is about one job only, and one that is gone by the
        end of the log: replay need not even decode it."""
        # An array of at most 15 elements whose tag (2 finished, 3 re-queued, 5 retrying, 6
        # promoted) and id (a non-negative int) come first: read both without decoding.
        if len(body) < 3 or body[0] & 0xF0 != 0x90 or body[1] not in (2, 3, 5, 6):
            return False
        head = body[2]
        if head < 0x80:
            job_id = head
        elif 0xCC <= head <= 0xCF:
            width = 1 << (head - 0xCC)
            if len(body) < 3 + width:
                return False
            job_id = int.from_bytes(body[3 : 3 + width], "big")
        else:
            return False
        return self.dead(job_id)

    def any_dead(self, first_id: int, count: int) -> bool:
        """Whether any of ``count`` jobs from ``first_id`` on is gone by the end of the log."""
        index = first_id - self._low
        if self._far or index < 0 or index + count > len(self._states):
            return any(self.dead(job_id) for job_id in range(first_id, first_id + count))
        return self._states.find(_DEAD, index, index + count) >= 0

    # The rules.

    def _queue(self, name: str) -> int:
        index = self._names.get(name)
        if index is None:
            index = self._names[name] = len(self._counts)
            self._counts.append([0, 0])
            self.counters[name] = self._counts[index]
        return index

    def _add(self, first_id: int, count: int, queue: int) -> None:
        if not count:
            return
        if self._cover(first_id, count):
            index = first_id - self._low
            self._states[index : index + count] = bytes([_LIVE]) * count
            self._queues[index : index + count] = array("I", [queue]) * count
        else:
            for job_id in range(first_id, first_id + count):
                self._set(job_id, _LIVE, queue)

    def _cover(self, first_id: int, count: int) -> bool:
        """Grow the dense span to hold ``count`` ids from ``first_id`` on, unless they are far
        from it; return whether it holds them."""
        if not self._states:
            self._low = first_id
        size = len(self._states)
        reach = max(size, _SPREAD)
        index = first_id - self._low
        if index < 0:
            if -index > reach:
                return False
            grow = -index + min(size, _SPREAD)  # and room for more below, as ids come unsorted
            self._states[0:0] = bytes(grow)
            self._queues[0:0] = array("I", [0]) * grow
            self._low -= grow
            index += grow
            size += grow
        end = index + count
        if end > size:
            if end - size > reach + count:
                return False
            self._states += bytes(end - size)
            self._queues += array("I", [0]) * (end - size)
        return True

    def _restore(self, job_id: int, queue: int, state: str, keep: float | None) -> None:
        finished = state in ("completed", "failed")
        failed = state == "failed"
        self._add(job_id, 1, queue)
        if keep is not None:
            self._keep_own(job_id, keep)
            if finished:
                self._state(job_id, _OWN_FAILED if failed else _OWN_COMPLETED)
        elif finished:
            self._retained(queue, failed)[job_id] = None
            self._state(job_id, _FAILED if failed else _COMPLETED)

    def _finish(self, job_id: int, *, failed: bool) -> None:
        # The commonest record of a long history: kept short.
        byte, queue = self._get(job_id)
        if byte & _STATE != _LIVE:
            return  # replay skips it too: the job is not there, or finished already
        self._counts[queue][failed] += 1
        if byte & _KEEPS_OWN:
            self._set(job_id, _DEAD if byte & _KEEPS_NONE else
                      byte & ~_STATE | (_OWN_FAILED if failed else _OWN_COMPLETED), queue)
            return
        kept = self._kept.get((queue, failed)) or self._retained(queue, failed)
        kept[job_id] = None
        self._set(job_id, _FAILED if failed else _COMPLETED, queue)
        if len(kept) > self._limits[failed]:
            self._kill(kept.popitem(last=False)[0])

    def _remove(self, job_id: int) -> None:
        byte, queue = self._get(job_id)
        state = byte & _STATE
        if state in (_COMPLETED, _FAILED):
            self._retained(queue, state == _FAILED).pop(job_id, None)
        if state not in (_UNKNOWN, _DEAD):
            self._state(job_id, _DEAD)

    def _retry(self, job_id: int) -> None:
        byte, queue = self._get(job_id)
        state = byte & _STATE
        if state == _FAILED:
            self._retained(queue, True).pop(job_id, None)
        if state in (_FAILED, _OWN_FAILED):
            self._state(job_id, _LIVE)

    def _retained(self, queue: int, failed: bool) -> OrderedDict[int, None]:
        kept = self._kept.get((queue, failed))
        if kept is None:
            kept = self._kept[queue, failed] = OrderedDict()
        return kept

    # Per-id storage.

    def _get(self, job_id: int) -> tuple[int, int]:
        index = job_id - self._low
        if 0 <= index < len(self._states):
            return self._states[index], self._queues[index]
        packed = self._far.get(job_id, 0)
        return packed & 0xFF, packed >> 8

    def _set(self, job_id: int, byte: int, queue: int) -> None:
        index = job_id - self._low
        if 0 <= index < len(self._states):
            self._states[index] = byte
            self._queues[index] = queue
        else:
            self._far[job_id] = queue << 8 | byte

    def _state(self, job_id: int, state: int) -> None:
        if state == _DEAD:
            self._kill(job_id)
        else:
            byte, queue = self._get(job_id)
            self._set(job_id, byte & ~_STATE | state, queue)

    def _kill(self, job_id: int) -> None:
        # A dead job's flags no longer matter: its byte is exactly _DEAD (``any_dead`` finds it).
        index = job_id - self._low
        if 0 <= index < len(self._states):
            self._states[index] = _DEAD
        else:
            self._far[job_id] = self._far.get(job_id, 0) & ~0xFF | _DEAD

    def _keep_own(self, job_id: int, keep: float) -> None:
        byte, queue = self._get(job_id)
        self._set(job_id, byte | _KEEPS_OWN | (_KEEPS_NONE if keep <= 0 else 0), queue)
