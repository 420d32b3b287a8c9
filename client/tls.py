"""TLS on the client's side: the context a ``conveyors://`` connection uses.

By default the broker's certificate is verified against the system's trusted CAs (or the CA file
given) and must name the host the URL names; a client certificate is sent for mutual TLS when one
is given.
"""

from __future__ import annotations

import os
import ssl
from typing import Final

__all__ = ["CA_ENV", "CERT_ENV", "KEY_ENV", "client_context", "env_context", "tls_reason"]

CA_ENV: Final = "CONVEYOR_TLS_CA"
"""A PEM file of the CA certificates that may sign the broker's certificate."""
CERT_ENV: Final = "CONVEYOR_TLS_CERT"
"""The client's certificate (PEM; it may hold the key too), for mutual TLS."""
KEY_ENV: Final = "CONVEYOR_TLS_KEY"
"""The client certificate's private key (PEM), when not in the certificate file."""


def client_context(*, ca: str | os.PathLike[str] | None = None,
                   cert: str | os.PathLike[str] | None = None,
                   key: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A context that verifies the broker's certificate and host name.

    ``ca``: a PEM file of trusted CA certificates (default: the system's). ``cert`` and ``key``:
    the client's certificate and private key, for a broker that asks for one (``key`` may be left
    out when ``cert`` holds it).

    Raises ``ValueError`` naming the file that cannot be used, and why.
    """
    if key is not None and cert is None:
        raise ValueError("a TLS client key needs its certificate (cert=)")
    try:
        context = ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot use the TLS CA file {ca}: {_file_reason(exc)}") from None
    if cert is not None:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            files = str(cert) if key is None else f"{cert} and {key}"
            raise ValueError(f"cannot use the TLS client certificate {files}: "
                             f"{_file_reason(exc)}") from None
    return context


def env_context() -> ssl.SSLContext:
    """``client_context`` with the files named by ``$CONVEYOR_TLS_CA``, ``$CONVEYOR_TLS_CERT``
    and ``$CONVEYOR_TLS_KEY`` (each optional). Raises ``ValueError`` as ``client_context``."""
    return client_context(ca=os.environ.get(CA_ENV) or None,
                          cert=os.environ.get(CERT_ENV) or None,
                          key=os.environ.get(KEY_ENV) or None)


def tls_reason(exc: ssl.SSLError) -> str:
    """Why a TLS handshake failed, in a few words (``certificate verify failed: certificate has
    expired``, ``the broker requires a client certificate``)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    reason = exc.reason or ""
    if reason in ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_HANDSHAKE_FAILURE"):
        return f"the broker requires a client certificate ({reason.lower()})"
    if reason == "WRONG_VERSION_NUMBER":
        return "the broker does not speak TLS (wrong version number)"
    return reason.lower().replace("_", " ") if reason else str(exc)


def _file_reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason.lower().replace("_", " ") if exc.reason else str(exc)
    return exc.strerror or str(exc)
