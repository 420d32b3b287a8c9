"""Broker addresses: ``conveyor://[user[:secret]@]host[:port][/]``, ``conveyors://...`` (TLS),
``tcp://HOST:PORT`` and ``HOST:PORT``.

A secret is kept out of every ``repr``, ``str`` and exception message: an address is shown as
``str(address)``, which has the user but never the secret.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import quote, unquote

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_URL",
    "PASSWORD_FILE_ENV",
    "URL_ENV",
    "BrokerAddress",
    "parse_url",
]

URL_ENV: Final = "CONVEYOR_URL"
PASSWORD_FILE_ENV: Final = "CONVEYOR_PASSWORD_FILE"
"""A file holding the secret, for a URL that names a user but no secret (containers mount one)."""
DEFAULT_URL: Final = "127.0.0.1:7400"
DEFAULT_PORT: Final = 7400
_SCHEMES: Final = {"conveyor": False, "conveyors": True, "tcp": False}
"""Schemes understood, and whether each is TLS."""


@dataclass(frozen=True)
class BrokerAddress:
    """Where a broker is, whether to speak TLS to it, and who to log in as.

    ``repr`` and ``str`` never show ``secret``: ``str`` is the URL without it
    (``conveyors://app@broker.example:7400``), or just ``HOST:PORT`` for a plain address with no
    user; either reads back as the same address (less the secret).
    """

    host: str
    port: int = DEFAULT_PORT
    tls: bool = False
    user: str | None = None
    secret: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if not self.tls and self.user is None:
            return f"{host}:{self.port}"
        scheme = "conveyors" if self.tls else "conveyor"
        user = "" if self.user is None else quote(self.user, safe="") + "@"
        return f"{scheme}://{user}{host}:{self.port}"


def parse_url(url: str | None = None) -> BrokerAddress:
    """Read ``url``, else ``$CONVEYOR_URL``, else the default (``127.0.0.1:7400``).

    User and secret are percent-decoded. A URL with a user but no secret takes the secret from
    the file named by ``$CONVEYOR_PASSWORD_FILE`` (trailing newline dropped), when set.

    Raises ``ValueError`` naming the problem (and the address, without its secret) when the
    address cannot be read, or the secret file cannot.
    """
    text = url or os.environ.get(URL_ENV) or DEFAULT_URL
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    elif scheme.lower() not in _SCHEMES:
        raise ValueError(f"unsupported broker address {_shown(text)!r}: use conveyor://, "
                         "conveyors:// (TLS), tcp:// or HOST:PORT")
    named = scheme.lower() in ("conveyor", "conveyors")
    userinfo, at, place = rest.rpartition("@")
    if at and not named:
        raise ValueError(f"broker address {_shown(text)!r}: a user needs a conveyor:// or "
                         "conveyors:// URL")
    if named:
        place = place.removesuffix("/")
    host, port = _place(place, named)
    if host is None or port is None:
        form = "conveyor://[USER@]HOST[:PORT]" if named else "HOST:PORT"
        raise ValueError(f"broker address {_shown(text)!r} is not of the form {form}")
    user: str | None = None
    secret: str | None = None
    if at:
        raw_user, colon, raw_secret = userinfo.partition(":")
        user = unquote(raw_user)
        if not user:
            raise ValueError(f"broker address {_shown(text)!r} has an empty user name")
        secret = unquote(raw_secret) if colon else _secret_file()
    return BrokerAddress(host, port, tls=scheme.lower() == "conveyors", user=user, secret=secret)


def _place(place: str, named: bool) -> tuple[str | None, int | None]:
    """(host, port) of ``HOST[:PORT]`` (IPv6 in brackets); None for what cannot be read. The port
    may be left out only in a ``conveyor://`` URL."""
    if place.startswith("["):
        host, bracket, after = place[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            return None, None
        port_text = after[1:] if after else None
    elif ":" in place:
        host, _, port_text = place.rpartition(":")
        host = host.strip("[]")
    else:
        host, port_text = place, None
    if not host or any(c in host for c in "/?#@[] "):
        return None, None
    if port_text is None:
        return (host, DEFAULT_PORT) if named else (host, None)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return host, None
    return host, int(port_text)


def _secret_file() -> str | None:
    """The secret in ``$CONVEYOR_PASSWORD_FILE``, or None when it is not set."""
    path = os.environ.get(PASSWORD_FILE_ENV)
    if not path:
        return None
    try:
        content = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read the secret file {path} (${PASSWORD_FILE_ENV}): "
                         f"{exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise ValueError(f"the secret file {path} (${PASSWORD_FILE_ENV}) is not UTF-8 "
                         "text") from None
    return content.removesuffix("\n").removesuffix("\r")


def _shown(text: str) -> str:
    """``text`` as an error may quote it: a secret in it replaced by ``***``."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    userinfo, at, place = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return text
    return f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{place}"
