"""What the commands print: rich consoles, JSON on stdout, and short forms of times and values."""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime
from typing import Any, Final

import msgspec
from rich.console import Console

__all__ = [
    "ago",
    "clock",
    "error_console",
    "moment",
    "out_console",
    "print_json",
    "short",
    "timestamp",
    "value_text",
]

PIPE_WIDTH: Final = 200
"""Columns of a table written to a pipe or file (unless ``$COLUMNS`` says otherwise): wide enough
that rows are not wrapped."""

_json: Final = msgspec.json.Encoder(enc_hook=repr)
"""Values msgspec cannot write as JSON (MessagePack extension types) become their repr."""


def out_console() -> Console:
    """The console for stdout: colours and the terminal's width on a terminal, plain text
    (and wide rows) otherwise."""
    console = Console(highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(highlight=False, width=PIPE_WIDTH)
    return console


def error_console() -> Console:
    """The console for stderr: prompts and progress bars, never the command's output."""
    return Console(stderr=True, highlight=False)


def print_json(value: Any) -> None:
    """Write ``value`` as one line of JSON on stdout."""
    sys.stdout.buffer.write(_json.encode(value) + b"\n")
    sys.stdout.buffer.flush()


def value_text(value: Any) -> str:
    """A payload, result or progress value as compact JSON text."""
    return _json.encode(value).decode()


def short(text: str, width: int = 60) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def timestamp(at: float | None) -> str:
    """A Unix time as local date and time to the millisecond (empty for None)."""
    if at is None:
        return ""
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def moment(at: float, now: float) -> str:
    """A Unix time, short: the time of day to the millisecond when it is on ``now``'s day, else
    the date and time to the second (as ``ls -l`` shortens its dates)."""
    when = datetime.fromtimestamp(at)
    if when.date() == datetime.fromtimestamp(now).date():
        return when.strftime("%H:%M:%S.%f")[:-3]
    return when.strftime("%Y-%m-%d %H:%M:%S")


def clock(at: float) -> str:
    """A Unix time as local time of day to the millisecond."""
    return datetime.fromtimestamp(at).strftime("%H:%M:%S.%f")[:-3]


def ago(at: float, now: float | None = None) -> str:
    """How long before ``now`` (or after: "in ...") ``at`` was, roughly."""
    delta = (time.time() if now is None else now) - at
    text = _duration(abs(delta))
    return f"{text} ago" if delta >= 0 else f"in {text}"


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
