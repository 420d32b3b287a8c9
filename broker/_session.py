"""One client connection: bytes in, messages to the server, framed replies out.

A session knows the wire (framing, decoding, the handshake) and nothing of queues: every decoded
message goes to its ``Host`` (the server). Replies are appended to one buffer that the server
flushes once per loop pass, so everything a connection is owed leaves in one write.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Iterator
from typing import Final, Protocol, cast

from conveyor.protocol import (
    HEADER_SIZE,
    PROTOCOL_VERSION,
    Authenticate,
    BrokerMessage,
    Challenge,
    ClientMessage,
    Error,
    ErrorCode,
    FrameEncoder,
    FrameReader,
    Hello,
    MessageDecoder,
    ProtocolError,
    Welcome,
)

from ._auth import Accepted, Challenged, Gate, Login, Refused
from ._text import printable
from ._tls import certificate_user
from ._users import User

__all__ = ["OUTPUT_BUDGET", "SERVER_NAME", "SKIP_LIMIT", "Host", "Session"]

SERVER_NAME: Final = "conveyor/0.1"
OUTPUT_BUDGET: Final = 1 << 20
"""Bytes of replies queued for one connection past which the broker reads none of its requests
until they are written out (a client that does not read cannot make it buffer more)."""
SKIP_LIMIT: Final = 64 << 20
"""Frames over the frame limit but at most this long (bytes), or 4 times the limit if that is
more, are skipped and answered; a longer length prefix closes the connection (it is more likely
garbage, an HTTP request say, than a frame)."""
_SHOWN: Final = 256
"""Most characters of a client's name and host kept to show."""

log = logging.getLogger("broker")

_decoder: Final[MessageDecoder[ClientMessage]] = MessageDecoder(ClientMessage)
_encoder: Final = FrameEncoder()
class Host(Protocol):
    """What a session needs of the server that accepted its connection."""

    @property
    def max_frame(self) -> int:
        """The largest frame accepted or sent (bytes)."""

    @property
    def gate(self) -> Gate:
        """Who may connect, and how they prove it."""

    def connected(self, session: Session) -> None:
        """The connection is up (the host may still turn it away with ``abort``)."""

    def disconnected(self, session: Session) -> None:
        """The connection is gone."""

    def received(self, session: Session, message: ClientMessage) -> None:
        """A message arrived, after the handshake."""

    def wrote(self, session: Session) -> None:
        """The session has output queued for this pass: have it flushed."""


class Session(asyncio.Protocol):
    """The broker's side of one connection."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._loop = asyncio.get_running_loop()
        self.opened_at = self._loop.time()
        """When the connection was accepted (event loop time)."""
        self.heard_at = self.opened_at
        """When the connection last read anything (event loop time)."""
        self.number = 0
        """The connection's number on this broker (the server gives it)."""
        self.client = ""
        self.client_host = ""
        self.client_pid = 0
        """What the client's ``hello`` said of it: its name, host and process id."""
        self.frame_since: float | None = None
        """When the frame now unfinished began (event loop time), or None between frames."""
        self.closed_at: float | None = None
        """When the broker closed the connection, leaving it to send what was written."""
        self.reader = FrameReader(host.max_frame,
                                  skip_limit=max(SKIP_LIMIT, 4 * host.max_frame))
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.address = "?"
        """The client's IP address (failed logins are limited per address)."""
        self.certificate_user: str | None = None
        """The common name of the client's verified TLS certificate, if it sent one."""
        self.user: User | None = None
        """Who the client proved to be; None when the broker has no users file."""
        self.by_certificate = False
        """The user logged in with a client certificate (else with a secret, or not at all)."""
        self._login: Login | None = None
        """The authentication under way, between ``challenge`` and ``authenticate``."""
        self.greeted = False
        self.closing = False
        self.out = bytearray()
        self.held: list[bytes | ProtocolError] | None = None
        """Frames read but not handled yet: the connection owes too much output (reading is
        paused meanwhile)."""
        self._write_paused = False
        """The transport's buffer is over its high-water mark."""
        self._owed: deque[Iterator[BrokerMessage]] = deque()
        """Replies owed, produced as the connection reads (``send_later``)."""
        self._resume_handle: asyncio.Handle | None = None

    def __repr__(self) -> str:
        return f"<Session {self.peer}>"

    # asyncio callbacks.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        self.certificate_user = certificate_user(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.host.connected(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.host.disconnected(self)

    def pause_writing(self) -> None:
        # The peer is not reading its replies: stop reading its requests until it catches up.
        self._write_paused = True
        self._stop_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._schedule_resume()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.heard_at = self._loop.time()
        try:
            frames = self.reader.read(data)
        except ProtocolError as exc:
            frames = []
            self.abort(exc)
        if self.reader.partial:
            if frames or self.frame_since is None:
                self.frame_since = self._loop.time()
        else:
            self.frame_since = None
        if self.held is not None:
            # Read before the pause took effect: behind the frames already waiting.
            self.held += frames
            return
        self._handle(frames)
        if frames and self.reader.buffered and self.held is None and not self.closing:
            # A bad length prefix that followed whole frames is reported after them.
            self.data_received(b"")

    def _handle(self, frames: list[bytes | ProtocolError]) -> None:
        # Per frame, only what can change while frames are handled is checked: the replies made
        # so far (writes, pauses and owed replies come between passes).
        if self._write_paused or self._owed:
            self._hold(frames)
            return
        received = self.host.received
        decode = _decoder.decode
        out = self.out
        budget = OUTPUT_BUDGET
        rest = iter(frames)
        for body in rest:
            if self.closing:
                return
            if len(out) > budget:
                self._hold([body, *rest])
                return
            if type(body) is bytes:
                try:
                    message = decode(body)
                except ProtocolError as exc:
                    self.refuse(exc)
                    continue
            else:  # a frame skipped for its size: the reader put its error in its place
                self.refuse(cast(ProtocolError, body))
                continue
            if not self.greeted:
                self.greet(message)
            else:
                received(self, message)

    def _hold(self, frames: list[bytes | ProtocolError]) -> None:
        """Keep ``frames`` for later and stop reading: the connection owes too much output.
        Replies come out in order and none is dropped: the rest waits to be read."""
        self.held = frames
        self._stop_reading()

    def _stop_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()
        # The client cannot finish a frame meanwhile: the frame timeout waits too.
        self.frame_since = None

    def _schedule_resume(self) -> None:
        if self._resume_handle is None and not self.closing:
            self._resume_handle = self._loop.call_soon(self._resume)

    def _resume(self) -> None:
        """The output drained: produce more of what is owed; once nothing is, handle the frames
        held back, then read again."""
        self._resume_handle = None
        if self.closing or self._write_paused:
            return
        if self._owed:
            self._pump()
            if self._owed:
                return  # the rest once this is written (``flush``)
        if len(self.out) > OUTPUT_BUDGET:
            return
        held, self.held = self.held, None
        if held:
            self._handle(held)
        if self.held is not None or self.closing or self.transport is None:
            return
        self.transport.resume_reading()
        if self.reader.partial:
            self.frame_since = self._loop.time()
            if self.reader.buffered >= HEADER_SIZE:
                self.data_received(b"")

    # Called by the server (a session is the ``Peer`` of its client).

    def send(self, message: BrokerMessage) -> None:
        """Queue ``message`` for this pass's write."""
        if not self.out:
            self.host.wrote(self)
        _encoder.append(self.out, message)

    def send_later(self, messages: Iterator[BrokerMessage]) -> None:
        """Queue ``messages``, produced as the connection reads them: what fits in the output
        budget now, the rest as the output drains."""
        self._owed.append(messages)
        self._pump()
        if self._owed:
            self._stop_reading()

    def _pump(self) -> None:
        owed = self._owed
        written = 0 if self.transport is None else self.transport.get_write_buffer_size()
        while owed and len(self.out) + written < OUTPUT_BUDGET:
            message = next(owed[0], None)
            if message is None:
                owed.popleft()
            else:
                self.send(message)

    def flush(self) -> None:
        """Write everything queued, in one write."""
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(bytes(self.out))
        self.out.clear()
        if (self.held is not None or self._owed) and not self._write_paused:
            self._schedule_resume()

    def backlog(self) -> int:
        """Bytes queued for this connection and not sent yet (this pass's and the transport's)."""
        size = len(self.out)
        return size if self.transport is None else size + self.transport.get_write_buffer_size()

    def close(self) -> None:
        """Close the connection once what was written is sent."""
        if self.closed_at is None:
            self.closed_at = self._loop.time()
        if self.transport is not None:
            self.transport.close()

    def expire(self, now: float, *, handshake_timeout: float, frame_timeout: float) -> None:
        """Close the connection if, at ``now`` (event loop time), it has been waiting for its
        ``hello`` for over ``handshake_timeout`` seconds or sat in the middle of a frame for over
        ``frame_timeout``; drop it if the broker closed it over ``frame_timeout`` seconds ago and
        the client has still not taken what was written (it may never read it)."""
        if self.closing:
            if self.closed_at is not None and now - self.closed_at > frame_timeout:
                self.kill()
        elif not self.greeted and now - self.opened_at > handshake_timeout:
            self.abort(ProtocolError(
                ErrorCode.TIMED_OUT, f"no 'hello' within {handshake_timeout:g} s"))
        elif self.frame_since is not None and now - self.frame_since > frame_timeout:
            self.abort(ProtocolError(
                ErrorCode.TIMED_OUT, f"a frame was left unfinished for {frame_timeout:g} s"))

    def kill(self) -> None:
        """Drop the connection at once, without a word."""
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def cut_off(self, error: ProtocolError) -> None:
        """Drop the connection at once and free what is queued for it; ``error`` is logged."""
        log.warning("dropping %s: %s: %s", self.peer, error.code.name, printable(error.message))
        self.out.clear()
        self.held = None
        self._owed.clear()
        self.kill()

    def refuse(self, error: ProtocolError) -> None:
        """Reply with an error; the connection stays open."""
        log.warning("%s: %s: %s", self.peer, error.code.name, printable(error.message))
        self.send(Error(req=error.req, code=error.code, message=error.message))

    def abort(self, error: ProtocolError) -> None:
        """Reply with an error and close the connection after the write."""
        log.warning("closing %s: %s: %s", self.peer, error.code.name, printable(error.message))
        self.send(Error(req=error.req, code=error.code, message=error.message))
        self.flush()
        self.closing = True
        self.close()

    def greet(self, message: ClientMessage) -> None:
        """Handle a message of the handshake: ``hello`` first, then ``authenticate`` if the
        broker challenged it."""
        if self._login is not None:
            login, self._login = self._login, None
            if isinstance(message, Authenticate):
                self._admit(login.finish(message.data))
            else:
                self.abort(ProtocolError(
                    ErrorCode.AUTH_REQUIRED,
                    f"expected 'authenticate', got '{message.__struct_config__.tag}'",
                    req=getattr(message, "req", 0)))
        elif not isinstance(message, Hello):
            self.abort(ProtocolError(
                ErrorCode.HANDSHAKE_REQUIRED,
                f"the first message must be 'hello', got '{message.__struct_config__.tag}'",
                req=getattr(message, "req", 0),
            ))
        elif message.version != PROTOCOL_VERSION:
            self.abort(ProtocolError(
                ErrorCode.VERSION_MISMATCH,
                f"client speaks protocol version {message.version}; "
                f"this broker speaks version {PROTOCOL_VERSION}",
            ))
        else:
            # Shown in statistics: free-form, so kept short.
            self.client = message.client[:_SHOWN]
            self.client_host = message.host[:_SHOWN]
            self.client_pid = message.pid
            self._admit(self.host.gate.start(message, self.address, self.certificate_user))

    def _admit(self, outcome: Accepted | Challenged | Refused) -> None:
        match outcome:
            case Accepted(user=user, final=final, by_certificate=by_certificate):
                self.greeted = True
                self.user = user
                self.by_certificate = by_certificate
                self.send(Welcome(version=PROTOCOL_VERSION, server=SERVER_NAME,
                                  max_frame=self.host.max_frame,
                                  user="" if user is None else user.name, auth=final))
            case Challenged(login=login, data=data):
                self._login = login
                self.send(Challenge(data=data))
            case Refused(error=error, late=False):
                self.abort(error)
            case Refused(error=error):
                # Answered late, on this connection alone; it reads nothing more meanwhile.
                self.closing = True
                if self.transport is not None:
                    self.transport.pause_reading()
                self._loop.call_later(self.host.gate.failure_delay, self._refuse, error)

    def _refuse(self, error: ProtocolError) -> None:
        """Answer a failed authentication (already logged) and close the connection."""
        if self.transport is None or self.transport.is_closing():
            return
        self.send(Error(req=error.req, code=error.code, message=error.message))
        self.flush()
        self.close()
