"""``Dashboard``: what every request handler shares (the broker client, the live feed, the
CSRF token), kept on the Starlette app's state."""

from __future__ import annotations

import asyncio

from starlette.requests import HTTPConnection

from conveyor.client import Client, Stats

from .feed import Feed
from .watches import JobWatches

__all__ = ["Dashboard", "dashboard_of"]


class Dashboard:
    """The dashboard's shared state: ``client`` talks to the broker as the dashboard's user.

    The client need not be connected yet: the first call connects it (and, after that, the
    client reconnects by itself), so a dashboard started before its broker, or outliving it,
    serves pages that say the broker is unreachable and recovers once it is back.
    """

    def __init__(self, client: Client, *, refresh: float, csrf_token: str) -> None:
        self.client = client
        self.refresh = refresh
        """Seconds between polls of the broker's statistics."""
        self.csrf_token = csrf_token
        self.closing = asyncio.Event()
        """Set when the dashboard shuts down: every live stream ends."""
        self.feed = Feed(self.stats, refresh=refresh, closing=self.closing)
        self.watches = JobWatches()
        """The broker event streams of the open job pages (one per queue)."""
        self._connecting = asyncio.Lock()
        self._connected = False

    async def connected(self) -> Client:
        """The client, connected (raises ``ConnectionLost`` when the broker cannot be reached)."""
        if not self._connected:
            async with self._connecting:
                if not self._connected:
                    await self.client.connect()
                    self._connected = True
        return self.client

    async def stats(self) -> Stats:
        """The broker's statistics, as the dashboard's user may read them."""
        return await (await self.connected()).stats()

    def close_streams(self) -> None:
        """End every live stream (the server waits for open responses before it stops)."""
        self.feed.close()


def dashboard_of(connection: HTTPConnection) -> Dashboard:
    """The ``Dashboard`` of the app serving ``connection``."""
    dashboard: Dashboard = connection.app.state.dashboard
    return dashboard
