"""One TCP connection to the broker: framing, the handshake, request ids and pushed messages.

``Connection`` knows the wire and nothing of jobs: callers send messages and get replies through
``request``; messages the broker pushes unasked (deliveries) go to the ``on_push`` callback. Writes
made in one loop pass are coalesced into one.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import os
import socket
import ssl as _ssl
from collections.abc import Callable
from typing import Final, cast

import scramp

from conveyor.protocol import (
    AUTH_MECHANISM,
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    Authenticate,
    BrokerMessage,
    Challenge,
    Closing,
    Deliver,
    Error,
    ErrorCode,
    Events,
    FrameEncoder,
    FrameReader,
    Hello,
    MessageDecoder,
    ProtocolError,
    Welcome,
)

from .errors import (
    AuthenticationFailed,
    ConnectionLost,
    ConveyorError,
    ProtocolViolation,
    RequestRefused,
    VersionMismatch,
    error_for,
)
from .tls import env_context, tls_reason
from .urls import parse_url

_HOST: Final = socket.gethostname()
"""The host name told to the broker in ``hello`` (shown in its statistics)."""

__all__ = ["Connection", "ConnectionStatus", "Push", "Reply"]

log = logging.getLogger("client")

_decoder: Final[MessageDecoder[BrokerMessage]] = MessageDecoder(BrokerMessage)
_encoder: Final = FrameEncoder()
_REPLY_FRAME_LIMIT: Final = 1 << 30
"""Replies are trusted more than requests; this only guards against a corrupt stream (bytes)."""

Reply = BrokerMessage
Push = Deliver | Closing | Events
"""Messages the broker sends unasked."""


class ConnectionStatus(enum.Enum):
    """Lifecycle of a ``Connection``."""

    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Connection(asyncio.Protocol):
    """The client's side of one broker connection."""

    def __init__(self, on_push: Callable[[Push], None] | None = None) -> None:
        self.status = ConnectionStatus.CONNECTING
        self.max_frame = DEFAULT_MAX_FRAME
        """The broker's frame limit, learned from its ``welcome`` (bytes)."""
        self.server = ""
        self.address = ""
        """The broker's address as shown in errors (``str(BrokerAddress)``: never a secret)."""
        self._on_push = on_push
        self._reader = FrameReader(_REPLY_FRAME_LIMIT)
        self._transport: asyncio.Transport | None = None
        self._tls = False
        self._loop = asyncio.get_running_loop()
        self._out = bytearray()
        self._flush_handle: asyncio.Handle | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._welcome: asyncio.Future[Welcome | Challenge] = self._loop.create_future()
        """The broker's answer to the handshake's last message."""
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._write_ready = asyncio.Event()
        self._write_ready.set()
        self._failure: ConveyorError | None = None
        self._lost_callbacks: list[Callable[[ConveyorError], None]] = []
        self._said: RequestRefused | None = None
        """The last error the broker sent outside any request (it usually closes next)."""

    @classmethod
    async def open(
        cls,
        url: str | None = None,
        *,
        name: str = "",
        on_push: Callable[[Push], None] | None = None,
        timeout: float = 10.0,
        ssl: _ssl.SSLContext | None = None,
    ) -> Connection:
        """Connect to the broker at ``url`` and complete the handshake.

        TLS is spoken with a ``conveyors://`` URL, or whenever ``ssl`` is given: with ``ssl``
        as the context, else one built from ``$CONVEYOR_TLS_CA``, ``$CONVEYOR_TLS_CERT`` and
        ``$CONVEYOR_TLS_KEY`` (``client_context``). The broker's certificate must name the URL's
        host.

        Raises ``ValueError`` for an address (or a TLS file) that cannot be used,
        ``ConnectionLost`` when the broker cannot be reached or the TLS handshake fails.
        """
        address = parse_url(url)
        host, port, where = address.host, address.port, str(address)
        context = ssl if ssl is not None or not address.tls else env_context()
        loop = asyncio.get_running_loop()

        def made() -> Connection:
            connection = cls(on_push)
            connection.address = where
            return connection

        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    made, host, port, ssl=context,
                    server_hostname=host if context is not None else None)
        except TimeoutError:
            raise ConnectionLost(f"no answer from broker at {where} within {timeout} s")\
                from None
        except _ssl.SSLError as exc:
            raise ConnectionLost(
                f"TLS handshake with broker at {where} failed: {tls_reason(exc)}") from None
        except OSError as exc:
            raise ConnectionLost(
                f"cannot connect to broker at {where}: {exc.strerror or exc}"
            ) from None
        try:
            async with asyncio.timeout(timeout):
                welcome = await connection._handshake(
                    name, None if address.user is None else (address.user, address.secret or ""))
        except BaseException as exc:
            if connection._transport is not None:
                connection._transport.abort()
            if isinstance(exc, TimeoutError):
                raise ConnectionLost(
                    f"broker at {where} did not answer the handshake within {timeout} s"
                ) from None
            raise
        if welcome.version != PROTOCOL_VERSION:
            if connection._transport is not None:
                connection._transport.abort()
            raise VersionMismatch(ErrorCode.VERSION_MISMATCH,
                                  f"broker speaks protocol version {welcome.version}; this "
                                  f"client speaks version {PROTOCOL_VERSION}")
        connection.max_frame = welcome.max_frame
        connection.server = welcome.server
        connection.status = ConnectionStatus.OPEN
        return connection

    async def _handshake(self, name: str, login: tuple[str, str] | None) -> Welcome:
        """Say ``hello``; with ``login`` (user, secret), prove it with SCRAM-SHA-256: the secret
        never leaves this process, and the broker proves in turn that it holds its hash."""
        if login is None:
            self.send(Hello(version=PROTOCOL_VERSION, client=name, host=_HOST, pid=os.getpid()))
            reply = await self._welcome
            if isinstance(reply, Challenge):
                raise AuthenticationFailed(ErrorCode.AUTH_REQUIRED, "the broker challenged a "
                                           "client that gave no credentials")
            return reply
        user, secret = login
        scram = scramp.ScramClient([AUTH_MECHANISM], user, secret)
        self.send(Hello(version=PROTOCOL_VERSION, client=name, mechanism=AUTH_MECHANISM,
                        auth=scram.get_client_first(), host=_HOST, pid=os.getpid()))
        reply = await self._welcome
        if isinstance(reply, Challenge):
            try:
                scram.set_server_first(reply.data)
                final = scram.get_client_final()
            except scramp.ScramException as exc:
                raise AuthenticationFailed(ErrorCode.AUTH_FAILED,
                                           f"the broker's challenge is not valid: {exc}") from None
            self._welcome = self._loop.create_future()
            self.send(Authenticate(data=final))
            reply = await self._welcome
        if isinstance(reply, Challenge) or not reply.auth:
            raise AuthenticationFailed(ErrorCode.AUTH_FAILED, "the broker did not authenticate "
                                       "the user (does it run without a users file?)")
        try:
            scram.set_server_final(reply.auth)
        except scramp.ScramException:
            raise AuthenticationFailed(ErrorCode.AUTH_FAILED, "the broker could not prove that it "
                                       "holds the user's secret") from None
        return reply

    # Sending.

    def send(self, message: object) -> None:
        """Queue ``message``; it leaves with everything else queued in this loop pass.

        Raises ``ValueError`` when a number in it is out of the protocol's range (nothing is
        sent, and the connection goes on)."""
        if self._failure is not None:
            raise self._failure
        try:
            _encoder.append(self._out, message)
        except OverflowError as exc:
            tag = getattr(getattr(message, "__struct_config__", None), "tag", "message")
            raise ValueError(f"cannot send {tag!r}: a number is out of the protocol's range "
                             f"({exc})") from None
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def request(self, build: Callable[[int], object]) -> asyncio.Future[Reply]:
        """Send ``build(req)`` with a fresh request id; the future gets the reply."""
        if self._failure is not None:
            raise self._failure
        req = next(self._ids)
        future: asyncio.Future[Reply] = self._loop.create_future()
        self.send(build(req))  # first: a request that cannot be sent leaves nothing pending
        self._pending[req] = future
        future.add_done_callback(lambda _: self._pending.pop(req, None))
        return future

    async def drain(self) -> None:
        """Wait while the socket's write buffer is over its high-water mark."""
        self._flush()
        await self._write_ready.wait()
        if self._failure is not None:
            raise self._failure

    async def close(self) -> None:
        """Send what is queued and close. Idempotent."""
        if self.status in (ConnectionStatus.OPEN, ConnectionStatus.CONNECTING):
            self.status = ConnectionStatus.CLOSING
            self._flush()
            if self._transport is not None:
                self._transport.close()
        await asyncio.shield(self._closed)

    async def wait_closed(self) -> None:
        """Wait until the connection is gone."""
        await asyncio.shield(self._closed)

    def on_lost(self, callback: Callable[[ConveyorError], None]) -> None:
        """Call ``callback`` with the reason once the connection is gone."""
        self._lost_callbacks.append(callback)

    @property
    def failure(self) -> ConveyorError | None:
        """Why the connection failed, once it has."""
        return self._failure

    def _flush(self) -> None:
        self._flush_handle = None
        if self._out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(bytes(self._out))
        self._out.clear()

    # asyncio callbacks.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._tls = transport.get_extra_info("sslcontext") is not None
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def pause_writing(self) -> None:
        self._write_ready.clear()

    def resume_writing(self) -> None:
        self._write_ready.set()

    def data_received(self, data: bytes) -> None:
        try:
            for body in self._reader.feed(data):
                try:
                    message = _decoder.decode(body)
                except ProtocolError as exc:
                    if exc.code != ErrorCode.UNKNOWN_MESSAGE:
                        raise
                    self._unknown(exc)
                    continue
                self._receive(message)
        except ProtocolError as exc:
            self._fail(ProtocolViolation(exc.code, f"broker sent an unreadable frame: {exc}"))
            if self._transport is not None:
                self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.status is ConnectionStatus.CLOSING:
            self._fail(ConnectionLost("connection closed"))
        elif isinstance(exc, _ssl.SSLError):
            self._fail(ConnectionLost(f"TLS error from broker at {self.address}: "
                                      f"{tls_reason(exc)}"))
        elif self._tls and not self._welcome.done() and self._said is None:
            # A broker that turns away this client's certificate (or the lack of one) in the
            # TLS handshake usually resets the connection before its alert can be read.
            reason = f" ({exc})" if exc is not None else ""
            self._fail(ConnectionLost(
                f"broker at {self.address} closed the TLS connection during the handshake"
                f"{reason}: it may require a client certificate ($CONVEYOR_TLS_CERT) signed "
                "by a CA it trusts"))
        else:
            reason = f": {exc}" if exc is not None else ""
            self._fail(ConnectionLost(f"connection to broker lost{reason}"))
        self.status = ConnectionStatus.CLOSED
        self._write_ready.set()
        assert self._failure is not None
        for callback in self._lost_callbacks:
            callback(self._failure)
        if not self._closed.done():
            self._closed.set_result(None)

    # Receiving.

    def _receive(self, message: Reply) -> None:
        if isinstance(message, Deliver | Closing | Events):
            if isinstance(message, Closing):
                log.info("broker: %s", message.reason)
            if self._on_push is not None:
                self._on_push(message)
            return
        if isinstance(message, Welcome | Challenge):
            if not self._welcome.done():
                self._welcome.set_result(message)
            return
        req = message.req
        if isinstance(message, Error):
            error = error_for(message.code, message.message)
            if req == 0:
                log.warning("broker: %s", error)
                self._said = error
                return
            result: RequestRefused | None = error
        else:
            result = None
        future = self._pending.get(req)
        if future is None or future.done():
            return
        if result is not None:
            future.set_exception(result)
        else:
            future.set_result(message)

    def _unknown(self, error: ProtocolError) -> None:
        """A message of a type this client does not know (protocol.md, section 2): the reply to
        a pending request fails that request; anything else (a message a later broker pushes)
        is ignored. The connection stays open."""
        future = self._pending.get(error.req) if error.req else None
        if future is not None and not future.done():
            future.set_exception(ProtocolViolation(
                error.code, f"broker replied with a message this client does not know: {error}"))
        else:
            log.debug("ignored a message of a type this client does not know: %s", error)

    def _fail(self, error: ConveyorError) -> None:
        """Fail every pending call, and every later one, with ``error``."""
        if self._said is not None and not isinstance(error, RequestRefused):
            error = type(error)(f"{error} (the broker said: {self._said})")
        self._failure = self._failure or error
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self._failure)
        self._pending.clear()
        if not self._welcome.done():
            # A refused handshake reports what the broker said, not just the closed socket.
            self._welcome.set_exception(self._said or self._failure)
            # Marked read: a handshake given up (cancelled, timed out) leaves no one to read it,
            # and one still under way gets it all the same.
            self._welcome.exception()
