"""The broker's exceptions. ``BrokerError`` is the root."""

from __future__ import annotations

__all__ = ["BrokerError", "DiskFull", "LogDamaged", "LogError", "StateError"]


class BrokerError(Exception):
    """Root of every exception the broker raises on purpose."""


class StateError(BrokerError):
    """The job is not in a state the request applies to."""


class LogError(BrokerError):
    """The log cannot be used: the broker must stop."""


class LogDamaged(LogError):
    """The log is damaged before its tail; only ``salvage`` recovers what is left."""


class DiskFull(BrokerError):
    """A write failed for lack of space; nothing of it was kept."""
