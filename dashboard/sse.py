"""Server-sent events: an ASGI response that streams what a source yields until the browser goes
away or the dashboard closes, and then ends the source deterministically (its ``finally`` runs at
once, so the watches it holds on the broker are given back)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from typing import Any, Final

from starlette.types import Receive, Scope, Send

__all__ = ["EventSourceResponse", "message"]

HEADERS: Final = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    # A reverse proxy must pass each event on as it comes, not buffer the response.
    (b"x-accel-buffering", b"no"),
]
KEEPALIVE: Final = b": keepalive\n\n"
"""A comment line: keeps idle proxies from closing the stream; browsers ignore it."""


def message(data: Any) -> bytes:
    """One SSE message carrying ``data`` as JSON."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


class EventSourceResponse:
    """Streams ``source`` as ``text/event-stream``; stops it when the browser disconnects or
    ``closing`` is set (the dashboard shutting down, which waits for open responses)."""

    def __init__(self, source: AsyncGenerator[bytes], *, closing: asyncio.Event) -> None:
        self.source = source
        self.closing = closing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        pump = asyncio.create_task(self._pump(send))
        gone = asyncio.create_task(_disconnected(receive))
        closing = asyncio.create_task(self.closing.wait())
        try:
            await asyncio.wait([pump, gone, closing], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, gone, closing):
                task.cancel()
            await asyncio.wait([pump, gone, closing])
            # The source's own end (finally blocks) runs here, whichever way it stopped.
            await self.source.aclose()
        error = None if pump.cancelled() else pump.exception()
        if not gone.cancelled():
            gone.exception()  # read, so that asyncio does not report it unread
        if isinstance(error, OSError):
            return  # the browser went away while we wrote: nothing to finish
        if error is not None:
            raise error
        if gone.cancelled():  # the browser is still there: end the response properly
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pump(self, send: Send) -> None:
        async for chunk in self.source:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
