"""A bare TCP connection to a broker that speaks the framing by hand, for tests of what the broker
does with careless or hostile clients (importable as ``rawwire`` from every test directory:
pytest puts ``tests/`` on ``sys.path``).

Frames are built by hand (4-byte big-endian length, a MessagePack map with a ``t`` tag) and
replies decoded as plain maps, so the tests do not lean on the code they check. A connection can
be opened with a small receive buffer and left unread, to play a client that never reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any, Self

import msgspec

from conveyor.protocol import PROTOCOL_VERSION, ErrorCode

REPLY_TIMEOUT = 10.0
"""Seconds to wait for a reply from the broker."""


class Raw:
    """A raw connection: send frames, read frames, or leave them unread."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, *, hello: bool = True, rcvbuf: int | None = None,
                   limit: int = 4096, source: str | None = None) -> Self:
        """Connect (with ``rcvbuf`` bytes of kernel receive buffer, when given) and greet.

        ``limit`` is the stream's buffer limit: what this process takes in while it does not
        read is about twice that."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if source is not None:
                sock.bind((source, 0))  # another loopback address (127.0.0.2, say)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
        connection = cls(reader, writer)
        if hello:
            connection.send({"t": "hello", "version": PROTOCOL_VERSION, "client": "raw"})
            welcome = await connection.receive()
            assert welcome["t"] == "welcome", welcome
        return connection

    def send(self, message: dict[str, Any] | msgspec.Struct) -> None:
        """Frame and write ``message`` (a plain map, or a message struct)."""
        self.send_body(msgspec.msgpack.encode(message))

    def send_body(self, body: bytes) -> None:
        """Write ``body`` with its length prefix."""
        self.writer.write(struct.pack(">I", len(body)) + body)

    def write(self, data: bytes) -> None:
        """Write raw bytes (a prefix alone, part of a body...)."""
        self.writer.write(data)

    async def receive_frame(self) -> bytes:
        """The next frame's body."""
        async with asyncio.timeout(REPLY_TIMEOUT):
            (length,) = struct.unpack(">I", await self.reader.readexactly(4))
            return await self.reader.readexactly(length)

    async def receive(self) -> dict[str, Any]:
        """The next message, as a plain map."""
        message = msgspec.msgpack.decode(await self.receive_frame())
        assert isinstance(message, dict)
        return message

    async def receive_error(self, code: ErrorCode, req: int = 0) -> str:
        """Read the next message, which must be an ``error`` with ``code``; return its text."""
        message = await self.receive()
        assert message["t"] == "error", message
        assert ErrorCode(message["code"]) is code, message
        assert message["req"] == req, message
        return str(message["message"])

    async def is_closed_by_peer(self, timeout: float = REPLY_TIMEOUT) -> bool:
        """Whether the broker closes the connection within ``timeout`` (unread bytes skipped)."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    async def counts(self, queue: str, req: int = 1000) -> dict[str, Any]:
        """Ask for counts on this connection: proves it is still open and in sync."""
        self.send({"t": "get_counts", "req": req, "queue": queue})
        reply = await self.receive()
        assert reply["t"] == "counts" and reply["req"] == req, reply
        return reply

    async def close(self) -> None:
        """Close without waiting for anything unread."""
        self.writer.transport.abort()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()

