"""``JobWatches``: the broker event streams behind the open job pages, one per queue however
many pages follow jobs of it.

A stream of its own per page would decode every event of a busy queue once per open page (500
tabs: 500 decodes and buffers of each event); here each event is decoded once and handed only
to the pages of its job.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Final

from conveyor.client import Client, ConveyorError, EventsLost, EventStream, JobEvent

__all__ = ["PAGE_BUFFER", "JobEvents", "JobWatches"]

PAGE_BUFFER: Final = 1_000
"""Events of its job a page's stream may leave unread before it is told it fell behind."""


class JobEvents:
    """One page's events of its job, read with ``get``."""

    def __init__(self) -> None:
        self._items: asyncio.Queue[JobEvent | ConveyorError | None] = asyncio.Queue()
        self._ended = False

    def put(self, event: JobEvent) -> None:
        if self._items.qsize() >= PAGE_BUFFER:
            self.end(EventsLost(f"more than {PAGE_BUFFER} events of job {event.job} unread"))
        elif not self._ended:
            self._items.put_nowait(event)

    def end(self, error: ConveyorError | None) -> None:
        """End the events, once those before are read (``error``: why, None: the watch ended)."""
        if not self._ended:
            self._ended = True
            self._items.put_nowait(error)

    async def get(self) -> JobEvent | None:
        """The next event; None once they ended. Raises the ``ConveyorError`` that ended them
        (the connection lost, the page fell behind)."""
        item = await self._items.get()
        if isinstance(item, ConveyorError):
            raise item
        return item


class _QueueWatch:
    """One queue's event stream, handing each event to the pages of its job."""

    def __init__(self, stream: EventStream) -> None:
        self.stream = stream
        self.pages: dict[int, set[JobEvents]] = {}
        self.task = asyncio.create_task(self._pump(), name="conveyor-dashboard-watch")

    async def _pump(self) -> None:
        error: ConveyorError | None = None
        try:
            async for event in self.stream:
                for page in self.pages.get(event.job, ()):
                    page.put(event)
        except ConveyorError as exc:
            error = exc
        for pages in self.pages.values():
            for page in pages:
                page.end(error)

    async def aclose(self) -> None:
        self.task.cancel()
        await asyncio.wait([self.task])
        await self.stream.aclose()


class JobWatches:
    """The event streams of the queues whose jobs open pages follow."""

    def __init__(self) -> None:
        self._queues: dict[str, _QueueWatch] = {}

    def __len__(self) -> int:
        """Queues watched now."""
        return len(self._queues)

    @contextlib.asynccontextmanager
    async def watch(self, client: Client, queue: str, job_id: int) -> AsyncIterator[JobEvents]:
        """``job_id``'s events (of ``queue``) from now on, until the block ends. Raises
        ``ConveyorError`` when the queue cannot be watched."""
        shared = self._queues.get(queue)
        if shared is None or shared.task.done():  # none yet, or it ended: a fresh one
            shared = self._queues[queue] = _QueueWatch(client.events(queue))
        events = JobEvents()
        shared.pages.setdefault(job_id, set()).add(events)
        try:
            yield events
        finally:
            pages = shared.pages[job_id]
            pages.discard(events)
            if not pages:
                del shared.pages[job_id]
            if not shared.pages:  # the last page of the queue: stop watching it
                if self._queues.get(queue) is shared:
                    del self._queues[queue]
                await shared.aclose()
