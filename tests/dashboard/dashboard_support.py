"""Helpers of the dashboard tests (importable as ``dashboard_support``: pytest puts this
directory on ``sys.path``).

- ``Served``: a dashboard served by uvicorn on a free port of 127.0.0.1 (``serve``), with an
  ``httpx.AsyncClient`` on it and the CSRF token its pages carry.
- ``parse``: a page's HTML as a small tree, searched with ``find``/``find_all`` by tag and
  attributes (the DOM contract the browser tests rely on, checked without a browser).
- ``sse``: the messages of a server-sent events stream.
- ``users_file``: a broker users file.
- ``running``: an in-process worker, for the duration of a block.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import scramp

from conveyor.client import Client
from conveyor.dashboard import create_app
from conveyor.dashboard.security import CSRF_HEADER, allowed_hosts
from conveyor.dashboard.server import DashboardServer, bind

TOKEN = "test-csrf-token"
"""The CSRF token of the dashboards served by ``serve``."""
REQUEST_TIMEOUT = 20.0


@dataclass
class Served:
    """A running dashboard: ``http`` requests it (base URL set), ``post`` sends an action."""

    server: DashboardServer
    client: Client
    http: httpx.AsyncClient

    @property
    def port(self) -> int:
        return self.server.port

    async def page(self, path: str, status: int = 200) -> Node:
        """The page at ``path``, parsed; fails unless it answers ``status``."""
        response = await self.http.get(path)
        assert response.status_code == status, (path, response.status_code, response.text)
        return parse(response.text)

    async def post(self, path: str, body: dict[str, Any] | None = None, *,
                   token: str | None = TOKEN) -> httpx.Response:
        """POST an action (JSON ``body``) with the CSRF header (None: without it)."""
        headers = {} if token is None else {CSRF_HEADER: token}
        return await self.http.post(path, json=body or {}, headers=headers)


@contextlib.asynccontextmanager
async def serve(url: str, *, refresh: float = 0.1, timeout: float = 5.0) -> AsyncIterator[Served]:
    """The dashboard for the broker at ``url`` (which need not be up), until the block ends;
    ``timeout``: seconds its client tries to reach the broker."""
    client = Client(url, name="dashboard-test", timeout=timeout)
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    app = create_app(client, refresh=refresh, hosts=allowed_hosts("127.0.0.1", port),
                     csrf_token=TOKEN)
    server = DashboardServer(app, sock)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                     timeout=REQUEST_TIMEOUT) as http:
            yield Served(server, client, http)
    finally:
        await server.stop()
        await client.close()


async def sse(http: httpx.AsyncClient, path: str) -> AsyncGenerator[dict[str, Any]]:
    """The JSON messages of the event stream at ``path`` (comments skipped), as they come;
    use it in ``contextlib.aclosing``."""
    async with http.stream("GET", path) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                yield json.loads(line.removeprefix("data: "))


# Pages as trees.


@dataclass
class Node:
    """An element: its tag, attributes, children and the text inside it (all of it)."""

    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The element's text, whitespace collapsed (as a browser shows it)."""
        return " ".join("".join(self.parts).split())

    def find_all(self, tag: str = "", **attrs: str) -> list[Node]:
        """Every element below this one with ``tag`` (any when empty) and ``attrs`` (names with
        ``-`` written ``_``: ``data_count="waiting"``)."""
        wanted = {name.replace("_", "-"): value for name, value in attrs.items()}
        found = []
        for child in self.children:
            if (not tag or child.tag == tag) and all(child.attrs.get(k) == v
                                                     for k, v in wanted.items()):
                found.append(child)
            found.extend(child.find_all(tag, **attrs))
        return found

    def find(self, tag: str = "", **attrs: str) -> Node:
        """The first element ``find_all`` finds; fails when there is none."""
        found = self.find_all(tag, **attrs)
        assert found, f"no <{tag or '*'} {attrs}> in the page"
        return found[0]


_VOID = frozenset({"meta", "link", "input", "br", "img", "hr", "source", "wbr", "area", "col"})


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("document", {})
        self.open = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {name: value or "" for name, value in attrs})
        self.open[-1].children.append(node)
        if tag not in _VOID:
            self.open.append(node)

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self.open) - 1, 0, -1):
            if self.open[index].tag == tag:
                del self.open[index:]
                return

    def handle_data(self, data: str) -> None:
        for node in self.open:
            node.parts.append(data)


def parse(html: str) -> Node:
    """``html`` as a tree of ``Node``."""
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


# Users.


def users_file(path: Path, users: dict[str, dict[str, Any]]) -> Path:
    """Write a broker users file: ``{name: {"password": ..., "read": [globs], ...}}``."""
    lines = []
    for name, spec in users.items():
        salt, stored, server, iterations = scramp.ScramMechanism(
            "SCRAM-SHA-256").make_auth_info(spec["password"], iteration_count=4096)
        secret = (f"SCRAM-SHA-256${iterations}:{base64.b64encode(salt).decode()}$"
                  f"{base64.b64encode(stored).decode()}:{base64.b64encode(server).decode()}")
        lines += [f"[users.{json.dumps(name)}]", f"secret = {json.dumps(secret)}"]
        for permission in ("produce", "consume", "read", "admin"):
            if permission in spec:
                lines.append(f"{permission} = {json.dumps(spec[permission])}")
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path

