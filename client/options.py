"""Job options: ``JobSpec`` for one job of a bulk add, and backoff policies."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, TypedDict

import msgspec

from conveyor.protocol import MAX_GROUP, MAX_JOB_NAME, MAX_PRIORITY, MIN_PRIORITY, Backoff, JobDef

__all__ = ["Backoff", "JobOptions", "JobSpec", "exponential", "fixed", "job_def"]

_MAX_KEY: Final = 255
"""Longest idempotency key (``id``), in characters (code points), as the broker checks it."""


class JobOptions(TypedDict, total=False):
    """The options of a job, as keyword arguments of ``add_bulk`` (and of ``add``).

    ``id``: idempotency key. ``priority``: higher runs first. ``attempts``: tries in all.
    ``backoff``: seconds between tries, or ``exponential(...)``. ``timeout``: seconds one try
    may run. ``delay`` (seconds) / ``run_at`` (Unix time): not before then. ``keep_result``:
    seconds the finished job is retained. ``name``: what kind of job it is. ``dedup``: seconds
    after the add during which ``id`` deduplicates (then an add with it creates a new job).
    ``lifo``: the job joins the head of its priority's waiting line. ``group``: the group
    (tenant) the job belongs to: dispatch takes turns across a queue's groups.
    """

    id: str | None
    priority: int
    attempts: int
    backoff: float | Backoff | None
    timeout: float | None
    delay: float
    run_at: float | None
    keep_result: float | None
    name: str | None
    dedup: float | None
    lifo: bool
    group: str | None


def fixed(delay: float) -> Backoff:
    """Wait ``delay`` seconds before every retry."""
    return Backoff(type="fixed", delay=delay)


def exponential(base: float, *, cap: float | None = None, jitter: float = 0.0) -> Backoff:
    """Wait ``base * 2 ** (attempt - 1)`` seconds, at most ``cap``, less up to ``jitter`` of it."""
    # Defaults are left out, so that they are not sent (msgspec omits a float default only
    # when it is the very object of the field's default).
    if cap is None and not jitter:
        return Backoff(type="exponential", delay=base)
    if not jitter:
        return Backoff(type="exponential", delay=base, cap=cap)
    return Backoff(type="exponential", delay=base, cap=cap, jitter=jitter)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job of ``add_bulk`` with options of its own (they replace the call's options)."""

    data: Any
    id: str | None = None
    priority: int = 0
    attempts: int = 1
    backoff: float | Backoff | None = None
    timeout: float | None = None
    delay: float = 0.0
    run_at: float | None = None
    keep_result: float | None = None
    name: str | None = None
    dedup: float | None = None
    lifo: bool = False
    group: str | None = None

    def options(self) -> JobOptions:
        """The options, as keyword arguments of ``job_def``."""
        return {"id": self.id, "priority": self.priority, "attempts": self.attempts,
                "backoff": self.backoff, "timeout": self.timeout, "delay": self.delay,
                "run_at": self.run_at, "keep_result": self.keep_result, "name": self.name,
                "dedup": self.dedup, "lifo": self.lifo, "group": self.group}


def job_def(
    data: msgspec.Raw,
    *,
    id: str | None = None,
    priority: int = 0,
    attempts: int = 1,
    backoff: float | Backoff | None = None,
    timeout: float | None = None,
    delay: float = 0.0,
    run_at: float | None = None,
    keep_result: float | None = None,
    name: str | None = None,
    dedup: float | None = None,
    lifo: bool = False,
    group: str | None = None,
) -> JobDef:
    """The wire form of a job, holding only the options that differ from their defaults (the
    others are not sent); raises ``ValueError`` naming an option that is out of range."""
    if id is not None and not _text(id, _MAX_KEY):
        raise ValueError(f"id must be a string of 1 to {_MAX_KEY} characters, got {id!r}")
    if group is not None and not _text(group, MAX_GROUP):
        raise ValueError(f"group must be a string of 1 to {MAX_GROUP} characters, "
                         f"got {group!r}")
    if name is not None and not _text(name, MAX_JOB_NAME):
        raise ValueError(f"name must be a string of 1 to {MAX_JOB_NAME} characters, "
                         f"got {name!r}")
    if isinstance(priority, bool) or not isinstance(priority, int) \
            or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}, "
                         f"got {priority!r}")
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"attempts must be an integer of at least 1, got {attempts!r}")
    _check_seconds("delay", delay)
    if timeout is not None:
        _check_seconds("timeout", timeout)
        if timeout == 0:
            raise ValueError("timeout must be above 0 seconds")
    if keep_result is not None:
        _check_seconds("keep_result", keep_result)
    if dedup is not None:
        _check_seconds("dedup", dedup)
    if not isinstance(lifo, bool):
        raise ValueError(f"lifo must be True or False, got {lifo!r}")
    if run_at is not None and not _finite(run_at):
        raise ValueError(f"run_at must be a Unix time, got {run_at!r}")
    if isinstance(backoff, int | float) and not isinstance(backoff, bool):
        _check_seconds("backoff", backoff)
        backoff = fixed(float(backoff))
    elif backoff is not None and not isinstance(backoff, Backoff):
        raise ValueError(f"backoff must be seconds or a policy from exponential(), got {backoff!r}")
    options: dict[str, Any] = {}
    if id is not None:
        options["id"] = id
    if priority:
        options["priority"] = priority
    if attempts != 1:
        options["attempts"] = attempts
    if backoff is not None:
        options["backoff"] = backoff
    if timeout is not None:
        options["timeout"] = float(timeout)
    if delay:
        options["delay"] = float(delay)
    if run_at is not None:
        options["run_at"] = run_at
    if keep_result is not None:
        options["keep_result"] = keep_result
    if name is not None:
        options["name"] = name
    if dedup is not None:
        options["dedup"] = float(dedup)
    if lifo:
        options["lifo"] = True
    if group is not None:
        options["group"] = group
    return JobDef(data=data, **options)


def _text(value: object, most: int) -> bool:
    """Whether ``value`` is a string of 1 to ``most`` characters (code points) that UTF-8 can
    encode (no lone surrogate)."""
    if not isinstance(value, str) or not 0 < len(value) <= most:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_seconds(name: str, value: object) -> None:
    if not _finite(value) or value < 0:  # type: ignore[operator]
        raise ValueError(f"{name} must be a number of seconds, 0 or more, got {value!r}")
