"""TLS on the broker's side: the server context, and who a client certificate names.

The protocol runs unchanged inside TLS; asyncio does the handshake before a session sees the
connection, so a session reads the verified client certificate as soon as it is made.
"""

from __future__ import annotations

import asyncio
import enum
import os
import ssl

__all__ = ["ClientAuth", "TLSError", "certificate_user", "server_context"]


class ClientAuth(enum.StrEnum):
    """Whether a client must show a certificate signed by the client CA (mutual TLS)."""

    REQUIRED = "required"
    """A client without one is refused in the TLS handshake."""
    OPTIONAL = "optional"
    """A client may show one (it is verified if it does) or log in some other way."""


class TLSError(ValueError):
    """A certificate, key or CA file cannot be used; the message names it and says why."""


def server_context(cert: str | os.PathLike[str], key: str | os.PathLike[str],
                   client_ca: str | os.PathLike[str] | None = None,
                   client_auth: ClientAuth | str = ClientAuth.REQUIRED) -> ssl.SSLContext:
    """The broker's TLS context: its certificate chain and key, and with ``client_ca`` client
    certificates verified against it (``client_auth``: required or optional).

    Raises ``TLSError`` naming the file that cannot be used, and ``ValueError`` for an unknown
    ``client_auth``.
    """
    auth = ClientAuth(client_auth)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TLSError(f"cannot use the TLS certificate {cert} and key {key}: "
                       f"{_reason(exc)}") from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise TLSError(f"cannot use the TLS client CA {client_ca}: {_reason(exc)}") from None
        context.verify_mode = (ssl.CERT_REQUIRED if auth is ClientAuth.REQUIRED
                               else ssl.CERT_OPTIONAL)
    return context


def certificate_user(transport: asyncio.BaseTransport) -> str | None:
    """The subject common name (CN) of the client certificate ``transport``'s TLS handshake
    verified, or None (no TLS, no certificate, or no CN)."""
    # ``getpeercert()`` is only filled in for a certificate that was verified against the
    # client CA: an unverified one reads as an empty dict.
    peer = transport.get_extra_info("peercert")
    if not peer:
        return None
    for rdn in peer.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


def _reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason.lower().replace("_", " ") if exc.reason else str(exc)
    return exc.strerror or str(exc)
