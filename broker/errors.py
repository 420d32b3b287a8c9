"""The broker's exceptions. ``BrokerError`` is the root."""

from __future__ import annotations

__all__ = ["BrokerError"]


class BrokerError(Exception):
    """Root of every exception the broker raises on purpose."""
