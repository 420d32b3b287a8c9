"""Small helpers for tests that drive the broker's queue state (importable as ``queue_state``
from every test directory: pytest puts ``tests/`` on ``sys.path``)."""

from __future__ import annotations

import random

import msgspec

from conveyor.broker.testing import Job
from conveyor.protocol import JobState


def raw(value: object) -> msgspec.Raw:
    """``value`` encoded as a payload or result."""
    return msgspec.Raw(msgspec.msgpack.encode(value))


def state(job: Job) -> JobState:
    """``job.state``, read through a call: mypy keeps an attribute narrowed by an earlier
    ``assert`` across the calls that change it."""
    return job.state


class BrokenRandom(random.Random):
    """Raises when drawn from: a stand-in for a bug in the middle of a request."""

    def random(self) -> float:
        raise ArithmeticError("a bug")
