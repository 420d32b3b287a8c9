"""Length-prefixed framing: a 4-byte big-endian body length, then a MessagePack body.

``FrameReader`` turns a byte stream cut at arbitrary points into frame bodies, checking each length
against the limit before any of the body is buffered. ``MessageDecoder`` turns a body into a typed
message or a ``ProtocolError`` naming the problem. ``FrameEncoder`` appends framed messages to one
buffer so that everything produced in a loop pass leaves in one write.
"""

from __future__ import annotations

import math
import re
import struct
from typing import Any, Final, Generic, TypeVar, cast

import msgspec

from .errors import ErrorCode, ProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HEADER_SIZE",
    "MAX_QUEUE_NAME",
    "FrameEncoder",
    "FrameReader",
    "MessageDecoder",
    "check_queue_name",
]

HEADER_SIZE: Final = 4
DEFAULT_MAX_FRAME: Final = 1 << 20
"""Largest frame body accepted by default, in bytes (1 MiB)."""
MAX_QUEUE_NAME: Final = 255
"""Longest queue name, in UTF-8 bytes."""

_HEADER: Final = struct.Struct(">I")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")

M = TypeVar("M")


class FrameReader:
    """Splits a byte stream into frame bodies.

    With ``skip_limit`` above ``max_frame``, a frame whose length is over the limit but at most
    ``skip_limit`` is skipped instead of ending the stream: its body is discarded as it arrives
    (only its first bytes are kept, to tell whose request it was) and ``read`` reports it as a
    ``ProtocolError`` in its place among the frames.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, *, skip_limit: int = 0) -> None:
        self.max_frame = max_frame
        self.skip_limit = skip_limit
        """The largest length skipped; a larger one over ``max_frame`` ends the stream."""
        self._buffer = bytearray()
        self._skip_length = 0
        """The length of the frame being skipped (0: none)."""
        self._skip_left = 0
        """Bytes of its body still to discard."""
        self._skip_head = bytearray()
        """The first bytes of its body (at most ``_HEAD``)."""

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a whole frame."""
        return len(self._buffer)

    @property
    def partial(self) -> bool:
        """Whether a frame has begun and not ended (held, or being skipped)."""
        return bool(self._buffer) or self._skip_length > 0

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data`` and return every frame body it completes, in order.

        Raises ``ProtocolError(FRAME_TOO_LARGE)`` when a length prefix exceeds the limit, before
        any of that body is buffered; the stream cannot be resynchronised after that, so the
        caller should close the connection. Whole frames that came before the bad prefix are
        returned first, and the next call raises. (Without a ``skip_limit``: with one, use
        ``read``.)
        """
        return cast(list[bytes], self.read(data))

    def read(self, data: bytes) -> list[bytes | ProtocolError]:
        """Like ``feed``, and a frame skipped for its size is reported in its place.

        A length over ``skip_limit`` raises ``ProtocolError(FRAME_TOO_LARGE)`` as in ``feed``.
        """
        frames: list[bytes | ProtocolError] = []
        if self._skip_length:
            data = self._skip(data, frames)
        buffer = self._buffer
        buffer += data
        # Frames are sliced from one bytes copy: one copy each, not a bytearray slice and then
        # its bytes.
        whole = bytes(buffer)
        pos = 0
        end = len(buffer)
        while end - pos >= HEADER_SIZE:
            (length,) = _HEADER.unpack_from(whole, pos)
            start = pos + HEADER_SIZE
            if length > self.max_frame:
                if length > self.skip_limit:
                    if frames:
                        break
                    del buffer[:pos]
                    raise ProtocolError(
                        ErrorCode.FRAME_TOO_LARGE,
                        f"frame of {length} bytes exceeds the limit of {self.max_frame} bytes",
                    )
                self._skip_length = self._skip_left = length
                rest = self._skip(bytes(buffer[start:]), frames)
                del buffer[:]
                buffer += rest
                whole = rest
                pos, end = 0, len(buffer)
                continue
            if end - start < length:
                break
            frames.append(whole[start : start + length])
            pos = start + length
        if pos:
            del buffer[:pos]
        return frames

    def _skip(self, data: bytes, frames: list[bytes | ProtocolError]) -> bytes:
        """Discard the skipped frame's body from ``data``; report it once it has all gone by.
        Returns what follows it."""
        taken = min(self._skip_left, len(data))
        if len(self._skip_head) < _HEAD:
            self._skip_head += data[: min(taken, _HEAD - len(self._skip_head))]
        self._skip_left -= taken
        if self._skip_left == 0:
            fields = _peek_fields(bytes(self._skip_head))
            tag, req, job = fields.get("t"), fields.get("req"), fields.get("job")
            what = "frame" if not isinstance(tag, str) else f"'{tag}' frame"
            if isinstance(job, int):
                what += f" for job {job}"
            req = req if isinstance(req, int) and 0 < req < 1 << 63 else 0
            frames.append(ProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"{what} of {self._skip_length} bytes exceeds the limit of {self.max_frame} "
                f"bytes; it was skipped", req=req))
            self._skip_length = 0
            self._skip_head = bytearray()
        return data[taken:]


_HEAD: Final = 64
"""Bytes kept of a skipped frame's body: enough for its tag and request id, written first."""
_STR_HEADERS: Final = {0xD9: 1, 0xDA: 2, 0xDB: 4}
_INT_FORMATS: Final = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q", 0xD0: ">b", 0xD1: ">h",
                       0xD2: ">i", 0xD3: ">q"}


def _peek_fields(head: bytes) -> dict[str, str | int]:
    """The leading fields of a message of which only ``head``, the start of its body, is at
    hand: those holding a string or an integer, up to the first that holds anything else.

    Strings are kept only when they are printable ASCII (they may end up in a log line).
    """
    fields: dict[str, str | int] = {}
    try:
        first = head[0]
        if 0x80 <= first <= 0x8F:
            count, pos = first & 0x0F, 1
        elif first == 0xDE:
            (count,), pos = struct.unpack_from(">H", head, 1), 3
        elif first == 0xDF:
            (count,), pos = struct.unpack_from(">I", head, 1), 5
        else:
            return fields
        for _ in range(count):
            key, pos = _peek_str(head, pos)
            if key is None:
                break
            byte = head[pos]
            value: str | int | None
            if byte <= 0x7F or byte >= 0xE0:
                value, pos = (byte if byte <= 0x7F else byte - 0x100), pos + 1
            elif byte in _INT_FORMATS:
                fmt = _INT_FORMATS[byte]
                (value,) = struct.unpack_from(fmt, head, pos + 1)
                pos += 1 + struct.calcsize(fmt)
            else:
                value, pos = _peek_str(head, pos)
                if value is None:
                    break
                if not (value.isascii() and value.isprintable()):
                    continue
            fields[key] = value
    except (IndexError, struct.error, UnicodeDecodeError):
        pass
    return fields


def _peek_str(head: bytes, pos: int) -> tuple[str | None, int]:
    byte = head[pos]
    if 0xA0 <= byte <= 0xBF:
        size, pos = byte & 0x1F, pos + 1
    elif byte in _STR_HEADERS:
        width = _STR_HEADERS[byte]
        size = int.from_bytes(head[pos + 1 : pos + 1 + width], "big")
        pos += 1 + width
    else:
        return None, pos
    if pos + size > len(head):
        raise IndexError("string runs past the head")
    return head[pos : pos + size].decode("utf-8"), pos + size


class MessageDecoder(Generic[M]):
    """Decodes frame bodies into one union of message types, strictly."""

    def __init__(self, message_type: Any) -> None:
        # ``Any``: a union of structs is not a ``type`` to mypy; annotate the instance instead.
        self._decoder: msgspec.msgpack.Decoder[M] = msgspec.msgpack.Decoder(message_type)
        self._envelope = msgspec.msgpack.Decoder(_Envelope)
        self._structure = msgspec.msgpack.Decoder(msgspec.Raw)

    def decode(self, body: bytes) -> M:
        """Return the message in ``body`` or raise ``ProtocolError`` naming what is wrong.

        The error's ``req`` carries the request id when one could be read, so the reply can be
        matched to the request that caused it.
        """
        try:
            return self._decoder.decode(body)
        except msgspec.ValidationError as exc:
            # The typed decoder reports the first type mismatch even in a truncated body or one
            # with trailing bytes; those are malformed frames, not bad fields.
            try:
                self._structure.decode(body)
            except (msgspec.DecodeError, RecursionError) as malformed:
                raise _malformed(malformed) from None
            text = str(exc)
            if "`$.t`" in text or "field `t`" in text:
                code = ErrorCode.UNKNOWN_MESSAGE
                text = f"unknown message type ({text})"
            else:
                code = ErrorCode.INVALID_FIELD
                not_finite = _not_finite(body, text)
                if not_finite is not None:
                    code, text = ErrorCode.INVALID_ARGUMENT, not_finite
            raise ProtocolError(code, text, req=self._request_id(body)) from None
        except (msgspec.DecodeError, RecursionError) as exc:
            raise _malformed(exc) from None
        except UnicodeDecodeError as exc:
            # msgspec raises this, not DecodeError, for a str that is not valid UTF-8.
            raise ProtocolError(
                ErrorCode.MALFORMED_FRAME, f"malformed MessagePack: string is not UTF-8 ({exc})"
            ) from None

    def _request_id(self, body: bytes) -> int:
        try:
            req = self._envelope.decode(body).req
        except (msgspec.DecodeError, RecursionError):
            return 0
        return req if isinstance(req, int) and 0 <= req < 1 << 63 else 0


def _malformed(exc: Exception) -> ProtocolError:
    if isinstance(exc, RecursionError):
        # msgspec decodes nested values recursively; a hostile body nests arrays a thousand deep.
        return ProtocolError(ErrorCode.MALFORMED_FRAME,
                             "malformed MessagePack: values nested too deeply")
    return ProtocolError(ErrorCode.MALFORMED_FRAME, f"malformed MessagePack: {exc}")


_FLOAT_PATH: Final = re.compile(r"^Expected `float`.* - at `(\$[^`]*)`$")
_PATH_STEP: Final = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def _not_finite(body: bytes, text: str) -> str | None:
    """Why the float the validation error ``text`` is about is refused, when it is NaN or an
    infinity (every float field is bounded, so those fail like a value out of range)."""
    match = _FLOAT_PATH.match(text)
    if match is None:
        return None
    path = match.group(1)
    try:
        value: Any = msgspec.msgpack.decode(body)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return None
    for step in _PATH_STEP.finditer(path):
        key, index = step.groups()
        try:
            value = value[key] if key is not None else value[int(index)]
        except (KeyError, IndexError, TypeError):
            return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"`{path}` must be a finite number, got {value}"
    return None


class _Envelope(msgspec.Struct):
    # ``int``, not ``object``: a bool is no request id, and other fields are skipped undecoded.
    req: int = 0


class FrameEncoder:
    """Appends framed messages to a buffer."""

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()

    def append(self, buffer: bytearray, message: object) -> None:
        """Encode ``message`` onto the end of ``buffer`` with its length prefix; if it cannot
        be encoded, ``buffer`` is left as it was."""
        start = len(buffer)
        buffer += b"\0\0\0\0"
        try:
            self._encoder.encode_into(message, buffer, start + HEADER_SIZE)
        except BaseException:
            # A message that cannot be encoded (an int past 64 bits, say) leaves nothing
            # behind: half a frame would corrupt every frame after it on the connection.
            del buffer[start:]
            raise
        _HEADER.pack_into(buffer, start, len(buffer) - start - HEADER_SIZE)

    def frame(self, message: object) -> bytes:
        """Return ``message`` as one frame."""
        buffer = bytearray()
        self.append(buffer, message)
        return bytes(buffer)


def check_queue_name(name: object) -> str | None:
    """Return why ``name`` is not a valid queue name, or None when it is."""
    if not isinstance(name, str):
        return f"queue name must be a string, got {type(name).__name__}"
    if not name:
        return "queue name is empty"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError as exc:
        return f"queue name is not valid Unicode text ({exc.reason} at index {exc.start})"
    if size > MAX_QUEUE_NAME:
        return f"queue name is {size} bytes, over the limit of {MAX_QUEUE_NAME}"
    bad = _CONTROL.search(name)
    if bad:
        return f"queue name contains control character {bad.group()!r} at index {bad.start()}"
    return None
