"""``create_app``: the dashboard as a Starlette (ASGI) application over a broker client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from conveyor.client import Client

from . import pages
from .actions import action_routes
from .security import HostCheck, new_csrf_token
from .state import Dashboard

__all__ = ["create_app"]

STATIC = Path(__file__).parent / "static"


def create_app(client: Client, *, hosts: Iterable[str] | None, refresh: float = 1.0,
               csrf_token: str | None = None) -> Starlette:
    """The dashboard over ``client`` (connected by the app when first needed; the caller
    closes it).

    ``refresh``: seconds between polls of the broker's statistics for the live pages.
    ``hosts``: the Host header values accepted, ``HOST:PORT`` in lower case
    (``security.allowed_hosts`` gives those of a bound address); None accepts any.
    ``csrf_token``: the token POST actions must carry (default: a fresh random one).
    """
    dashboard = Dashboard(client, refresh=refresh, csrf_token=csrf_token or new_csrf_token())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        feed = asyncio.create_task(dashboard.feed.run(), name="conveyor-dashboard-feed")
        try:
            yield
        finally:
            dashboard.close_streams()
            feed.cancel()
            await asyncio.wait([feed])
            if not feed.cancelled():
                feed.result()  # raises what stopped it early, if anything did

    routes = [
        Route("/", pages.overview),
        # A queue's name may hold "/" (sent as %2F, which the server decodes).
        Route("/queues/{queue:path}", pages.queue, methods=["GET"]),
        Route("/jobs/{job:int}", pages.job),
        Route("/jobs/{job:int}/events", pages.job_events),
        Route("/workers", pages.workers),
        Route("/find", pages.find),
        Route("/events", pages.events),
        Route("/metrics", pages.metrics_page),
        *action_routes(),
        # follow_symlink: an editable install links the files into the package's folder.
        Mount("/static", StaticFiles(directory=STATIC, follow_symlink=True), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(HostCheck, hosts=hosts)])
    app.state.dashboard = dashboard
    return app
