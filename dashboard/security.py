"""What keeps other web pages and hosts from using the dashboard: a Host-header check (against DNS
rebinding), a per-process CSRF token on every POST, and response headers that keep pages from
being framed or fed outside scripts.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
from collections.abc import Iterable
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "CSRF_HEADER",
    "HostCheck",
    "allowed_hosts",
    "is_loopback",
    "is_wildcard",
    "new_csrf_token",
    "valid_csrf",
]

CSRF_HEADER: Final = "X-Conveyor-CSRF"
"""The request header a POST must carry, equal to the token embedded in every page."""

SECURITY_HEADERS: Final = (
    # Only the dashboard's own scripts, styles and images: nothing inline, nothing fetched.
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
     b"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)


def new_csrf_token() -> str:
    """A fresh random token (one per dashboard process)."""
    return secrets.token_urlsafe(32)


def valid_csrf(given: str | None, token: str) -> bool:
    """Whether ``given`` (the request's header) is ``token``, compared in constant time."""
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) stays on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    """Whether ``host`` binds every interface (``0.0.0.0``, ``::``, or empty)."""
    if not host:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def allowed_hosts(host: str, port: int) -> frozenset[str] | None:
    """The Host header values a request may carry for a server bound to ``host:port``: the bound
    address and the loopback names, with the port. None (any Host) for a wildcard bind, where
    the dashboard was exposed on purpose (``--insecure``) under names it cannot know."""
    if is_wildcard(host):
        return None
    names = {host, "localhost", "127.0.0.1", "[::1]"}
    if ":" in host and not host.startswith("["):
        names.add(f"[{host}]")
    return frozenset(f"{name}:{port}".lower() for name in names)


class HostCheck:
    """ASGI middleware: a request whose Host header is not one of ``hosts`` gets 400 (a page
    reached through a rebound DNS name must not read or steer the broker); every response gets
    the security headers."""

    def __init__(self, app: ASGIApp, *, hosts: Iterable[str] | None) -> None:
        self.app = app
        self.hosts = None if hosts is None else frozenset(hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = next((value.decode("latin-1").lower() for name, value in scope["headers"]
                     if name == b"host"), None)
        if self.hosts is not None and host not in self.hosts:
            body = json.dumps({"ok": False, "message": "invalid Host header"}).encode()
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()),
                                    *SECURITY_HEADERS]})
            await send({"type": "http.response.body", "body": body})
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message,
                           "headers": [*message.get("headers", ()), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_secured)
