"""Safe defaults: a broker without users serves this host only, unless told it may do more.

Without a users file anyone who reaches the port controls every queue, so such a broker binds to
loopback addresses only and turns away a connection from any other address; ``insecure`` lifts
both, and is logged as a warning at every start.
"""

from __future__ import annotations

import ipaddress
from typing import Final

__all__ = ["binding_problem", "insecure_warning", "is_loopback", "peer_allowed"]

_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost."})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address, or ``localhost``) is only reachable from this machine.

    Any other name counts as not: what it resolves to is not known here. An empty host (every
    address) is not loopback either.
    """
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def binding_problem(host: str, *, users: object | None, insecure: bool) -> str | None:
    """Why a broker must not listen on ``host``, or None when it may."""
    if users is not None or insecure or is_loopback(host):
        return None
    shown = host or "every address"
    return (f"binding to {shown} without --users would let anyone on the network control every "
            "queue; pass --users PATH, or --insecure to accept that")


def peer_allowed(peer: str, *, users: object | None, insecure: bool) -> bool:
    """Whether a connection from ``peer`` (the remote IP address) may be served."""
    return users is not None or insecure or is_loopback(peer)


def insecure_warning(host: str, port: int) -> str:
    """What an ``insecure`` broker without users logs at every start."""
    return (f"--insecure: no users file; anyone who can reach {host or '*'}:{port} controls "
            "every queue and reads every payload")
