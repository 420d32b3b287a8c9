"""The ``conveyor`` command: run a broker or workers, and look at or steer a running broker."""

from .main import main

__all__ = ["main"]
