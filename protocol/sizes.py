"""Exact encoded sizes of the messages a sender must fit under a frame limit, without encoding them.

MessagePack writes every integer, string and container header in its shortest form (as msgspec
does), so a message's size follows from its values. The broker sizes its ``deliver`` frames with
these before it builds them, so that no frame it sends exceeds the limit it announced.
"""

from __future__ import annotations

from typing import Final

from .messages import MAX_GROUP, MAX_JOB_NAME

__all__ = [
    "DELIVERY_MAX_OVERHEAD",
    "array_header_size",
    "deliver_size",
    "deliverable_payload",
    "delivery_options_bound",
    "delivery_size",
    "int_size",
    "str_size",
]


def int_size(value: int) -> int:
    """Bytes of ``value`` as a MessagePack integer."""
    if value >= 0:
        return (1 if value < 0x80 else 2 if value < 0x100 else 3 if value < 0x10000
                else 5 if value < 0x100000000 else 9)
    return (1 if value >= -0x20 else 2 if value >= -0x80 else 3 if value >= -0x8000
            else 5 if value >= -0x80000000 else 9)


def str_size(text: str) -> int:
    """Bytes of ``text`` as a MessagePack ``str`` (header included)."""
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    return size + (1 if size < 32 else 2 if size < 0x100 else 3 if size < 0x10000 else 5)


def array_header_size(count: int) -> int:
    """Bytes of the header of a MessagePack array (or map) of ``count`` items."""
    return 1 if count < 16 else 3 if count < 0x10000 else 5


# A Delivery is a map of ``job``, ``lease``, ``attempt``, ``data`` and, when not at their
# defaults, ``timeout`` (a float 64), ``attempts``, ``name`` and ``group``. Keys are fixstr.
_DELIVERY_KEYS: Final = sum(str_size(key) for key in ("job", "lease", "attempt", "data"))
_TIMEOUT: Final = str_size("timeout") + 9
_ATTEMPTS_KEY: Final = str_size("attempts")
_NAME_KEY: Final = str_size("name")
_GROUP_KEY: Final = str_size("group")
_DELIVER_ENVELOPE: Final = (1 + str_size("t") + str_size("deliver") + str_size("queue")
                            + str_size("jobs"))

def delivery_size(job: int, lease: int, attempt: int, data: int, *, timeout: float | None = None,
                  attempts: int = 1, name: str | None = None, group: str | None = None) -> int:
    """Bytes of one ``Delivery`` whose payload is ``data`` bytes long, as the broker encodes it
    (``timeout``, ``attempts``, ``name`` and ``group`` left out at their defaults)."""
    size = 1 + _DELIVERY_KEYS + int_size(job) + int_size(lease) + int_size(attempt) + data
    if timeout is not None:
        size += _TIMEOUT
    if attempts != 1:
        size += _ATTEMPTS_KEY + int_size(attempts)
    if name is not None:
        size += _NAME_KEY + str_size(name)
    if group is not None:
        size += _GROUP_KEY + str_size(group)
    return size


_LARGEST_ID: Final = (1 << 63) - 1
"""The largest job id and lease a delivery may carry."""
_MAX_ATTEMPTS: Final = 1_000_000
"""The largest ``attempts`` (and so ``attempt``) a job may have (``JobDef.attempts``)."""

DELIVERY_MAX_OVERHEAD: Final = delivery_size(
    _LARGEST_ID, _LARGEST_ID, _MAX_ATTEMPTS, 0, timeout=0.0, attempts=_MAX_ATTEMPTS,
    name=chr(0x10FFFF) * MAX_JOB_NAME, group=chr(0x10FFFF) * MAX_GROUP)
"""The most bytes one delivery adds to a ``deliver`` beyond its payload: the largest ids and
lease, an ``attempt`` and ``attempts`` up to 1,000,000, a ``timeout``, a name of
``MAX_JOB_NAME`` 4-byte characters and a group of ``MAX_GROUP``."""


def delivery_options_bound(*, timeout: float | None = None, attempts: int = 1,
                           name: str | None = None, group: str | None = None) -> int:
    """The most bytes a delivery's ``timeout``, ``attempts``, ``name`` and ``group`` take
    (nothing for those at their defaults), without encoding the texts: each character counts 4
    bytes, and
    ``attempts`` counts as its widest allowed value."""
    size = 0 if timeout is None else _TIMEOUT
    if attempts != 1:
        size += _ATTEMPTS_KEY + int_size(_MAX_ATTEMPTS)
    if name is not None:
        # A name of at most MAX_JOB_NAME characters is under 64 KiB: a header of at most 3 bytes.
        size += _NAME_KEY + 3 + 4 * len(name)
    if group is not None:
        size += _GROUP_KEY + 3 + 4 * len(group)
    return size


def deliver_size(queue: str, count: int, deliveries: int) -> int:
    """Bytes of the body of a ``deliver`` for ``queue`` holding ``count`` deliveries that take
    ``deliveries`` bytes in all."""
    return _DELIVER_ENVELOPE + str_size(queue) + array_header_size(count) + deliveries


def deliverable_payload(queue: str, max_frame: int, *, attempts: int = 1,
                        timeout: float | None = None, name: str | None = None,
                        group: str | None = None) -> int:
    """The most bytes a job's payload may take so that its delivery, with the largest id and
    lease it may get, fits in one ``deliver`` frame of ``max_frame`` bytes. The broker refuses at
    ``add`` a payload larger than this (``INVALID_ARGUMENT``); a client checks it first."""
    return max_frame - deliver_size(queue, 1, delivery_size(
        _LARGEST_ID, _LARGEST_ID, attempts, 0, timeout=timeout, attempts=attempts, name=name,
        group=group))
