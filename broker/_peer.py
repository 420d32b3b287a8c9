"""A client as the request handler and the flush see it: somewhere to send replies.

``Session`` (one connection) is the real one; the tests drive the broker's core with doubles
(``conveyor.broker.testing.RecordingPeer``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from conveyor.protocol import BrokerMessage, ProtocolError

from ._users import User

__all__ = ["Peer"]


class Peer(Protocol):
    """Where the replies, deliveries and events owed to one client go.

    Peers are hashable by identity: a peer owns its subscriptions, waits and watches.
    """

    user: User | None
    """Who the client proved to be (its permissions are checked); None: no users file."""

    def __hash__(self) -> int: ...

    def send(self, message: BrokerMessage) -> None:
        """Queue ``message`` for this pass's write."""

    def send_later(self, messages: Iterator[BrokerMessage]) -> None:
        """Queue ``messages``, to be produced and written only as fast as the connection reads
        them (many replies owed at once, each of which may be large)."""

    def refuse(self, error: ProtocolError) -> None:
        """Reply with an error; the connection stays open."""

    def abort(self, error: ProtocolError) -> None:
        """Reply with an error and close the connection after the write."""

    def cut_off(self, error: ProtocolError) -> None:
        """Drop the connection at once, discarding what is queued for it (``error`` is only
        logged: the client would not read it in time)."""

    def backlog(self) -> int:
        """Bytes queued for the connection that it has not sent yet."""

    def flush(self) -> None:
        """Write everything queued this pass, in one write."""
