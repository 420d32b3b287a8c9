"""Repeatable jobs: schedules, their due times, and the job each due time gets.

A schedule's due times are wall times: ``every`` seconds from when it was set (its ``anchor``),
or the times its cron expression matches in its time zone. ``last`` is the due time of the
last job it made, so that no due time gets a second job: it is logged with the schedule, after
the job's own record, and the job's idempotency key is ``schedule:{id}:{due time}``, so that even
a crash between the two records cannot make a second job for that due time at the next start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from conveyor.protocol import Schedule

__all__ = ["ScheduleState", "check", "due_after", "due_by", "job_key"]


@dataclass(slots=True)
class ScheduleState:
    """A schedule as the broker keeps it."""

    schedule: Schedule
    anchor: float
    """When it was set (Unix seconds): ``every`` counts from here."""
    last: float | None = None
    """The due time of the last job it made (Unix seconds), if any."""
    next: float = 0.0
    """Its next due time (Unix seconds)."""


def check(schedule: Schedule) -> str | None:
    """Why ``schedule`` cannot be kept (a message), or None when it can."""
    if (schedule.every is None) == (schedule.cron is None):
        return "a schedule needs exactly one of every and cron"
    try:
        ZoneInfo(schedule.tz)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {schedule.tz!r}"
    if schedule.cron is not None and not croniter.is_valid(schedule.cron):
        return f"invalid cron expression {schedule.cron!r}"
    if schedule.every is not None and not math.isfinite(schedule.every):
        return "every must be a finite number of seconds"
    return None


def due_after(state: ScheduleState, after: float) -> float:
    """The first due time strictly after ``after`` (Unix seconds)."""
    schedule = state.schedule
    if schedule.every is not None:
        # Due times are always ``anchor + k * every`` for a whole k, computed the same way
        # (they name the jobs' keys); the division may round either way, hence the steps.
        anchor, every = state.anchor, schedule.every
        steps = max(1, math.floor((after - anchor) / every))
        while anchor + steps * every > after and steps > 1:
            steps -= 1
        while anchor + steps * every <= after:
            steps += 1
        return anchor + steps * every
    assert schedule.cron is not None
    start = datetime.fromtimestamp(after, ZoneInfo(schedule.tz))
    return float(croniter(schedule.cron, start).get_next(float))


def due_by(state: ScheduleState, now: float) -> float | None:
    """The latest due time at or before ``now`` that comes after the anchor, or None."""
    schedule = state.schedule
    if schedule.every is not None:
        after = due_after(state, now)
        steps = round((after - state.anchor) / schedule.every) - 1
        return state.anchor + steps * schedule.every if steps >= 1 else None
    assert schedule.cron is not None
    # Just after ``now``, so that a due time of exactly ``now`` counts.
    start = datetime.fromtimestamp(now + 1e-3, ZoneInfo(schedule.tz))
    due = float(croniter(schedule.cron, start).get_prev(float))
    return due if state.anchor < due <= now else None


def job_key(schedule_id: str, due: float) -> str:
    """The idempotency key of the job of ``schedule_id`` for the due time ``due``."""
    return f"schedule:{schedule_id}:{due!r}"
