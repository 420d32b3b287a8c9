"""Log output of the worker CLI: one line per record, as text or as JSON.

Records may carry structured fields (``extra={"fields": {...}}``): the worker's job lines carry
the job's id, queue, name, attempt, duration and error. JSON lines hold them as keys; text lines
already say them in the message.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Final, Literal

__all__ = ["FORMATS", "JsonFormatter", "configure_logging"]

FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(asctime)s worker[%(process)d] %(levelname)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``pid``, ``logger``,
    ``message``, then the record's ``fields`` and any ``traceback``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
                                     .isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str, style: Literal["text", "json"] | str) -> None:
    """Send every log record at ``level`` or above to stderr, formatted as ``style``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if style == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
