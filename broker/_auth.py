"""Who may connect: a user of the users file, proven with SCRAM-SHA-256 or a client certificate.

The secret never crosses the wire: SCRAM (RFC 5802, RFC 7677) has the client prove it knows
the secret from a salted, slow hash of it, and the broker prove it holds that hash. The math is
``scramp``'s. What this module adds is the broker's policy around it:

- an unknown user goes through the same exchange as a known one (with a salt derived from the
  name, so asking twice gives the same answer), and fails at the same step: a guesser cannot
  tell a wrong name from a wrong secret;
- a failure is answered after a fixed delay, on that connection alone (the event loop never
  sleeps), so guessing is slow and nobody else waits;
- failures are limited per source address (a token bucket): past its burst an address is
  refused before any work is done, until its tokens come back.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import scramp

from conveyor.protocol import AUTH_MECHANISM, ErrorCode, Hello, ProtocolError

from ._text import printable
from ._users import User, Users

__all__ = [
    "DEFAULT_FAILURE_DELAY",
    "Accepted",
    "FailureLimiter",
    "Gate",
    "Login",
    "Refused",
]

DEFAULT_FAILURE_DELAY: Final = 1.0
"""Seconds before a failed authentication is answered (and its connection closed)."""
FAILURE_BURST: Final = 10
"""Failed attempts an address may make in a row before it must wait."""
FAILURE_REFILL: Final = 6.0
"""Seconds for an address to regain one attempt (10 a minute once the burst is spent)."""
MAX_ADDRESSES: Final = 10_000
"""Addresses whose failures are remembered at most: the oldest is forgotten first."""

log = logging.getLogger("broker")


@dataclass(frozen=True, slots=True)
class Accepted:
    """The connection is ``user``'s (None: the broker has no users file); ``final`` is the
    SCRAM server-final-message to send with ``welcome`` (empty without SCRAM);
    ``by_certificate``: the user logged in with a client certificate, not a secret."""

    user: User | None
    final: str = ""
    by_certificate: bool = False


@dataclass(frozen=True, slots=True)
class Refused:
    """The connection is refused with ``error``, after the failure delay if ``late``."""

    error: ProtocolError
    late: bool


@dataclass(frozen=True, slots=True)
class Challenged:
    """The exchange goes on: send ``data`` (server-first) in a ``challenge``; ``login``
    finishes it."""

    login: Login
    data: str


class FailureLimiter:
    """Failed attempts per source address, as token buckets of ``burst`` tokens that come
    back one per ``refill`` seconds."""

    def __init__(self, *, burst: int = FAILURE_BURST, refill: float = FAILURE_REFILL,
                 max_addresses: int = MAX_ADDRESSES) -> None:
        self.burst = burst
        self.refill = refill
        self.max_addresses = max_addresses
        self._buckets: dict[str, tuple[float, float]] = {}
        """Address -> (tokens, when counted), oldest first."""

    def _tokens(self, address: str, now: float) -> float:
        tokens, at = self._buckets.get(address, (self.burst, now))
        return min(float(self.burst), tokens + (now - at) / self.refill)

    def blocked(self, address: str, now: float) -> bool:
        """Whether ``address`` has used up its attempts for now."""
        return self._tokens(address, now) < 1.0

    def failed(self, address: str, now: float) -> bool:
        """Count a failure of ``address``; return whether it is blocked from now on. An attempt
        made while blocked (refused unchecked) takes nothing more: an address is never refused
        for longer than its burst takes to come back, however often it knocks meanwhile."""
        tokens = self._tokens(address, now)
        if tokens < 1.0:
            return True
        tokens -= 1.0
        self._buckets.pop(address, None)
        self._buckets[address] = (tokens, now)
        while len(self._buckets) > self.max_addresses:
            del self._buckets[next(iter(self._buckets))]
        return tokens < 1.0

    def __len__(self) -> int:
        return len(self._buckets)


class Gate:
    """The broker's door: which users exist (reloaded on SIGHUP) and how they prove it."""

    def __init__(self, users: Users | None, *, failure_delay: float = DEFAULT_FAILURE_DELAY,
                 limiter: FailureLimiter | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.users = users
        """The users file's users; None: no authentication (loopback only, or ``--insecure``)."""
        self.failure_delay = failure_delay
        self.limiter = limiter or FailureLimiter()
        self._clock = clock
        self._pepper = os.urandom(32)
        """Derives the fake salts of unknown users (fixed for the broker's life)."""
        self._mechanism = scramp.ScramMechanism(AUTH_MECHANISM)

    def start(self, hello: Hello, address: str, certificate_user: str | None) -> (
            Accepted | Refused | Challenged):
        """What to do with a connection's ``hello`` from ``address`` (its IP), whose verified
        client certificate names ``certificate_user`` (None without one)."""
        users = self.users
        if users is None:
            return Accepted(None)
        if not hello.mechanism:
            user = users.get(certificate_user) if certificate_user is not None else None
            if user is not None and user.may_log_in(by_certificate=True):
                log.info("%s logged in as %r with a client certificate", address,
                         printable(user.name))
                return Accepted(user, by_certificate=True)
            return Refused(ProtocolError(
                ErrorCode.AUTH_REQUIRED,
                "this broker requires authentication: connect as a user "
                "(conveyor://USER:SECRET@HOST:PORT) or with a client certificate"), late=False)
        if self.limiter.blocked(address, self._clock()):
            return self._fail(address, None, "too many failed attempts")
        if hello.mechanism != AUTH_MECHANISM:
            return self._fail(address, None, f"unsupported mechanism {hello.mechanism!r}")
        login = Login(self, address)
        try:
            server = self._mechanism.make_server(login.credentials)
            server.set_client_first(hello.auth)
            data: str = server.get_server_first()
        except scramp.ScramException as exc:
            return self._fail(address, login.name, f"bad client-first-message ({exc})")
        login.server = server
        return Challenged(login, data)

    def _fail(self, address: str, name: str | None, why: str) -> Refused:
        """Count a failed attempt; the answer is the same whatever went wrong."""
        now = self._clock()
        if not self.limiter.blocked(address, now):  # else refused unchecked, logged already
            who = "" if name is None else f" as {printable(name)!r}"
            log.warning("%s failed to log in%s: %s", address, who, printable(why))
            if self.limiter.failed(address, now):
                log.warning("%s is refused for a while: %d failed attempts", address,
                            self.limiter.burst)
        return Refused(ProtocolError(ErrorCode.AUTH_FAILED, "authentication failed"), late=True)

    def fake_credentials(self, name: str) -> tuple[bytes, bytes, bytes, int]:
        """What the exchange uses for a name that is no user (or has no secret): it fails at
        the proof, as a wrong secret does. Its salt is the same on every attempt, and has the
        length and the iteration count most users have, so the challenge looks like a user's."""
        assert self.users is not None  # a login starts only on a broker with users
        length, iterations = self.users.typical_shape
        salt = b""
        counter = 0
        while len(salt) < length:
            counter += 1
            salt += hmac.new(self._pepper, b"%d:%s" % (counter, name.encode()),
                             hashlib.sha256).digest()
        return salt[:length], os.urandom(32), os.urandom(32), iterations


class Login:
    """One connection's SCRAM exchange, between ``challenge`` and ``authenticate``."""

    def __init__(self, gate: Gate, address: str) -> None:
        self.gate = gate
        self.address = address
        self.name: str | None = None
        self.user: User | None = None
        self.server: scramp.core.ScramServer | None = None

    def credentials(self, name: str) -> tuple[bytes, bytes, bytes, int]:
        """scramp's ``auth_fn``: the stored salt, keys and iteration count for ``name``."""
        self.name = name
        users = self.gate.users
        user = users.get(name) if users is not None else None
        if user is None or user.secret is None:
            return self.gate.fake_credentials(name)
        self.user = user
        return user.scram()

    def finish(self, data: str) -> Accepted | Refused:
        """Check the client's proof (its client-final-message ``data``)."""
        assert self.server is not None
        try:
            self.server.set_client_final(data)
            final: str = self.server.get_server_final()
        except scramp.ScramException:
            return self.gate._fail(self.address, self.name, "wrong user name or secret")
        users = self.gate.users
        # Fake credentials cannot be proven; and the user may have gone in a reload meanwhile.
        user = users.get(self.user.name) if users is not None and self.user is not None else None
        if user is None:
            return self.gate._fail(self.address, self.name, "wrong user name or secret")
        log.info("%s logged in as %r", self.address, printable(user.name))
        return Accepted(user, final)
