"""Broker addresses: ``HOST:PORT`` or ``tcp://HOST:PORT``."""

from __future__ import annotations

import os
import urllib.parse
from typing import Final

__all__ = ["DEFAULT_URL", "URL_ENV", "credentials", "parse_url"]

URL_ENV: Final = "CONVEYOR_URL"
DEFAULT_URL: Final = "127.0.0.1:7400"


def parse_url(url: str | None = None) -> tuple[str, int]:
    """Return (host, port) for ``url``, else ``$CONVEYOR_URL``, else the default.

    Raises ``ValueError`` naming the problem when the address cannot be read.
    """
    text = url or os.environ.get(URL_ENV) or DEFAULT_URL
    rest = text.removeprefix("tcp://").removeprefix("conveyor://").rstrip("/")
    rest = rest.rpartition("@")[2]
    if "://" in rest:
        raise ValueError(f"unsupported broker address {text!r}: only tcp:// is understood")
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"broker address {text!r} is not of the form HOST:PORT")
    return host, int(port)


def credentials(url: str | None = None) -> tuple[str, str] | None:
    """The user name and secret of ``url`` (``conveyor://USER:SECRET@HOST:PORT``), if any."""
    text = url or os.environ.get(URL_ENV) or DEFAULT_URL
    userinfo, at, _ = text.removeprefix("conveyor://").rpartition("@")
    if not at:
        return None
    user, _, secret = userinfo.partition(":")
    return urllib.parse.unquote(user), urllib.parse.unquote(secret)
