"""The Conveyor dashboard: a web UI over a broker, and its statistics as Prometheus metrics.

Run it with ``conveyor dashboard`` (the ``dashboard`` extra installs its web libraries), or
serve ``create_app(client, hosts=...)`` with any ASGI server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cli import main

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["create_app", "main"]


def __getattr__(name: str) -> Any:
    # The app needs the extra's libraries: imported on first use, so that ``main`` can say
    # in one line that they are missing.
    if name == "create_app":
        from .app import create_app
        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
