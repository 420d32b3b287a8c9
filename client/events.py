"""Following a queue's events: ``client.events(queue)`` yields ``JobEvent``s as they happen."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from conveyor.protocol import Event, JobError

from .errors import ConveyorError
from .jobs import decode_value

__all__ = ["EVENT_BUFFER", "EventStream", "EventsLost", "JobEvent"]

EVENT_BUFFER: Final = 100_000
"""Events a stream holds for a reader that is not keeping up, before it is cut off."""


class EventsLost(ConveyorError):
    """The stream's reader fell too far behind. (A connection the broker cut off for falling
    behind is dropped at once, and its streams end with ``ConnectionLost``.)"""


@dataclass(frozen=True, slots=True)
class JobEvent:
    """Something that happened to a job (see ``protocol.Event`` for the kinds)."""

    kind: str
    queue: str
    job: int
    at: float
    attempt: int = 0
    value: Any = None
    error: JobError | None = None
    run_at: float | None = None
    name: str | None = None
    """The job's name, when it has one."""


class EventStream:
    """An async iterator over one queue's events; ``aclose()`` stops the watch."""

    def __init__(self, queue: str, stop: Callable[[EventStream], Awaitable[None]]) -> None:
        self.queue = queue
        self._stop = stop
        self._items: asyncio.Queue[JobEvent | BaseException] = asyncio.Queue()
        self._closed = False
        self._stopped = False
        self._failed = False

    def feed(self, events: list[Event]) -> None:
        """Called by the client with events received for this queue."""
        if self._failed:
            return
        if self._items.qsize() + len(events) > EVENT_BUFFER:
            self.fail(EventsLost(f"more than {EVENT_BUFFER} events of {self.queue!r} unread; "
                                 f"the stream was stopped"))
            return
        for event in events:
            self._items.put_nowait(JobEvent(
                kind=event.kind, queue=self.queue, job=event.job, at=event.at,
                attempt=event.attempt, value=decode_value(event.value), error=event.error,
                run_at=event.run_at, name=event.name,
            ))

    def fail(self, error: BaseException) -> None:
        """End the stream with ``error`` once the events before it are read."""
        if not self._failed:
            self._failed = True
            self._items.put_nowait(error)

    def __aiter__(self) -> AsyncIterator[JobEvent]:
        return self

    async def __anext__(self) -> JobEvent:
        if self._closed:
            raise StopAsyncIteration
        item = await self._items.get()
        if isinstance(item, BaseException):
            self._closed = True
            raise item
        return item

    async def aclose(self) -> None:
        """Stop watching. Idempotent."""
        self._closed = True
        if not self._stopped:
            self._stopped = True
            await self._stop(self)

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
