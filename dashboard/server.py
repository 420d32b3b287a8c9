"""``DashboardServer``: the app served by uvicorn on a socket bound beforehand (so that port 0
works and the bound port is known), started and stopped from a running event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Final

import uvicorn
from starlette.applications import Starlette

from .state import Dashboard

__all__ = ["DashboardServer", "bind"]

GRACE: Final = 5
"""Seconds open responses get to finish once the server is asked to stop."""


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host.strip("[]"), port), family=family)
    # Accepted connections inherit it: a response's head and body, written apart, must not
    # wait for the browser's delayed ACK (40 ms a request).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, told when it accepts connections, and leaving signals to the caller
    (an embedded server must not take over the process's SIGINT and SIGTERM)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.accepting = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.accepting.set()


class DashboardServer:
    """Serves ``app`` (made by ``create_app``) on ``sock``: ``await start()``, then
    ``await stop()``, which ends the live streams and the open responses, then the app."""

    def __init__(self, app: Starlette, sock: socket.socket) -> None:
        self.app = app
        self.sock = sock
        # uvicorn logs through the standard logging tree (the caller configures it); it must
        # not install its own handlers, and an access log per request is noise here.
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                                ws="none", server_header=False,
                                timeout_graceful_shutdown=GRACE)
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self._server = _Uvicorn(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The port it listens on."""
        port: int = self.sock.getsockname()[1]
        return port

    async def start(self) -> None:
        """Start serving; return once connections are accepted.

        Raises ``RuntimeError`` when the server stopped during its start."""
        self._task = asyncio.create_task(self._server.serve(sockets=[self.sock]),
                                         name="conveyor-dashboard-server")
        accepting = asyncio.create_task(self._server.accepting.wait())
        await asyncio.wait([self._task, accepting], return_when=asyncio.FIRST_COMPLETED)
        if not accepting.done():
            accepting.cancel()
            await asyncio.wait([accepting])
            self._task.result()  # raises what stopped it
            raise RuntimeError("the dashboard's server stopped while starting")

    async def stop(self) -> None:
        """Stop, in order: 1. end every live stream (the server waits for open responses);
        2. stop accepting and finish the open responses; 3. shut the app down. Idempotent."""
        dashboard: Dashboard = self.app.state.dashboard
        dashboard.close_streams()
        self._server.should_exit = True
        if self._task is not None:
            await asyncio.wait([self._task])
            self._task.result()
        self.sock.close()
