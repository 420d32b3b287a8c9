"""Text a client sent, made fit for the broker's log."""

from __future__ import annotations

from typing import Final

__all__ = ["printable"]

_ESCAPES: Final = {
    code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    for code in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
}
"""Control characters and line breaks, as the escapes a log line shows instead."""


def printable(text: str) -> str:
    """``text`` fit for one log line: what a client sent (a message tag, a queue name quoted in
    an error) cannot start a new line or send escape sequences to the operator's terminal."""
    return text.translate(_ESCAPES)
