"""What the pages and the live streams show of the broker's records: plain dictionaries of
numbers and ready-formatted text, made in one place so that the first render (Jinja) and the
live updates (JSON for app.js) say the same thing the same way."""

from __future__ import annotations

import datetime
import json
import math
from typing import Any, Final

from conveyor.client import (
    BrokerStats,
    Histogram,
    JobEvent,
    JobInfo,
    QueueStats,
    ScheduleInfo,
    WorkerInfo,
)
from conveyor.protocol import QueueLimits

__all__ = [
    "COUNTS",
    "STATES",
    "broker_view",
    "bytes_text",
    "duration_text",
    "event_view",
    "job_view",
    "pretty_json",
    "quantile_text",
    "queue_view",
    "rate_text",
    "schedule_view",
    "shown",
    "time_text",
    "worker_view",
]

STATES: Final = ("waiting", "active", "delayed", "completed", "failed", "waiting-children")
"""A queue's job states, in the order the pages show them."""
COUNTS: Final = (*STATES, "workers")
RATE_KINDS: Final = ("added", "started", "completed", "failed", "retried")
PREVIEW_CHARS: Final = 80
"""Most characters of a job's data shown in a job list."""
SHOWN_CHARS: Final = 100_000
"""Most characters of a job's data, result or traceback on its page (and in each live update
of it): a payload of megabytes would make a page, and every update, megabytes long."""


def duration_text(seconds: float | None) -> str:
    """``950 ms``, ``12.5 s``, ``3 min 20 s``, ``2 h 5 min``, ``3 d 4 h``; ``-`` for None."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms" if seconds >= 0.001 else f"{seconds * 1000:.2f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def bytes_text(size: int) -> str:
    """``512 B``, ``1.5 KiB``, ``20.0 MiB``..."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def rate_text(per_second: float) -> str:
    """Jobs a second, to a sensible precision: ``0``, ``0.02``, ``1.5``, ``1,234``."""
    if per_second <= 0:
        return "0"
    if per_second < 0.1:
        return f"{per_second:.2f}"
    if per_second < 100:
        return f"{per_second:.1f}"
    return f"{per_second:,.0f}"


def time_text(at: float | None) -> str:
    """A Unix time as local ``YYYY-MM-DD HH:MM:SS``; ``-`` for None."""
    if at is None:
        return "-"
    return datetime.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")


def quantile_text(histogram: Histogram | None, q: float) -> str:
    """The ``q`` quantile of the recent durations; ``-`` without any."""
    return duration_text(None if histogram is None else histogram.quantile(q))


def pretty_json(value: Any) -> str:
    """A payload or result as indented JSON (what JSON cannot say, such as bytes, as repr)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=repr)


def shown(text: str) -> str:
    """``text``, cut to ``SHOWN_CHARS`` with a line saying how much was left out."""
    if len(text) <= SHOWN_CHARS:
        return text
    left = len(text) - SHOWN_CHARS
    return f"{text[:SHOWN_CHARS]}\n… {left:,} more characters not shown"


def _preview(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS - 1] + "…"


def limits_text(limits: QueueLimits | None) -> str:
    """A queue's limits in words: ``at most 1,000 starts per 1 s; at most 5 active``, or
    ``none``."""
    if limits is None:
        return "none"
    parts = []
    if limits.rate is not None:
        parts.append(f"at most {limits.rate:,} starts per {limits.per:g} s")
    if limits.concurrency is not None:
        parts.append(f"at most {limits.concurrency:,} active")
    if limits.group_rate is not None:
        parts.append(f"each group at most {limits.group_rate:,} starts per "
                     f"{limits.group_per:g} s")
    if limits.group_concurrency is not None:
        parts.append(f"each group at most {limits.group_concurrency:,} active")
    return "; ".join(parts) or "none"


def queue_view(queue: QueueStats) -> dict[str, Any]:
    """One queue: counts, rates (1/5/15 min) and duration quantiles."""
    rates = {kind: getattr(queue, f"{kind}_rate") for kind in RATE_KINDS}
    return {
        "name": queue.name,
        "counts": {name: getattr(queue, name.replace("-", "_")) for name in COUNTS},
        "paused": queue.paused,
        "rates": {kind: {window: rate_text(getattr(rate, window))
                         for window in ("m1", "m5", "m15")}
                  for kind, rate in rates.items()},
        "rates_text": {kind: rate_text(rate.m1) for kind, rate in rates.items()},
        "limits": limits_text(queue.limits),
        "latency": {
            "wait_p50": quantile_text(queue.wait_time, 0.5),
            "wait_p95": quantile_text(queue.wait_time, 0.95),
            "run_p50": quantile_text(queue.run_time, 0.5),
            "run_p95": quantile_text(queue.run_time, 0.95),
        },
    }


def schedule_view(info: ScheduleInfo) -> dict[str, str]:
    """A schedule as the queue page lists it: its id, when it runs, and its next due time."""
    schedule = info.schedule
    if schedule.cron is not None:
        when = f"cron {schedule.cron} ({schedule.tz})"
    else:
        when = f"every {duration_text(schedule.every)}"
    return {"id": schedule.id, "when": when, "name": schedule.name or "-",
            "next": time_text(info.next_run), "missed": schedule.missed}


def broker_view(broker: BrokerStats) -> dict[str, str]:
    """The broker's figures as shown in every page's status bar."""
    fsync = None if broker.fsync_time is None else broker.fsync_time.quantile(0.99)
    return {
        "version": broker.version or "-",
        "uptime": duration_text(broker.uptime),
        "connections": str(broker.connections),
        "queues": str(broker.queues),
        "jobs": f"{broker.jobs:,}",
        "memory": bytes_text(broker.memory) if broker.memory else "-",
        "log": bytes_text(broker.log_bytes) if broker.log_bytes else "-",
        "live": bytes_text(broker.live_bytes) if broker.live_bytes else "-",
        "compactions": str(broker.compactions),
        "fsync_p99": duration_text(fsync),
    }


def worker_view(worker: WorkerInfo, now: float) -> dict[str, Any]:
    """One worker connection, as a row of the workers page."""
    return {
        "id": worker.id,
        "name": worker.name or "-",
        "host": worker.host or "-",
        "pid": worker.pid or "-",
        "address": worker.address,
        "user": worker.user or "-",
        "queues": [{"queue": s.queue, "window": s.window, "held": s.held}
                   for s in worker.subscriptions],
        "window": sum(s.window for s in worker.subscriptions),
        "held": sum(s.held for s in worker.subscriptions),
        "connected": time_text(worker.connected_at),
        "connected_for": duration_text(max(now - worker.connected_at, 0.0)),
        "last_heard": duration_text(max(now - worker.last_heard, 0.0)) + " ago",
    }


def job_view(job: JobInfo) -> dict[str, Any]:
    """A job's record as the job page shows it (and the job list, through ``preview``)."""
    error = job.error
    return {
        "id": job.id,
        "queue": job.queue,
        "name": job.name or "",
        "state": job.state.value,
        "attempt": job.attempt,
        "attempts": job.attempts,
        "attempts_text": f"{job.attempt}/{job.attempts}",
        "priority": job.priority,
        "key": job.key or "",
        "data": shown(pretty_json(job.data)),
        "preview": _preview(job.data),
        "result": "" if job.result is None else shown(pretty_json(job.result)),
        "progress": "" if job.progress is None else _preview(job.progress),
        "progress_percent": _percent(job.progress),
        "error_type": error.type if error is not None else "",
        "error_message": error.message if error is not None else "",
        "traceback": shown(error.traceback) if error is not None else "",
        "created": time_text(job.created_at),
        "created_at": job.created_at,
        "finished": time_text(job.finished_at),
        "finished_at": job.finished_at,
        "run_at": job.run_at,
        "run": time_text(job.run_at),
    }


def _percent(progress: Any) -> float | None:
    """A progress value read as a percentage (a number from 0 to 100), else None."""
    if isinstance(progress, bool) or not isinstance(progress, int | float):
        return None
    return float(progress) if 0 <= progress <= 100 else None


EVENT_WORDS: Final = {
    "added": "added",
    "active": "started",
    "progress": "progress",
    "completed": "completed",
    "failed": "failed",
    "retrying": "failed, will retry",
    "delayed": "delayed",
}


def event_view(event: JobEvent) -> dict[str, Any]:
    """One live event of a job, as a line of its timeline."""
    detail = ""
    if event.kind == "progress":
        detail = _preview(event.value)
    elif event.error is not None:
        detail = f"{event.error.type}: {event.error.message}"
    if event.run_at is not None:
        detail = (detail + "; " if detail else "") + f"runs at {time_text(event.run_at)}"
    return {
        "kind": event.kind,
        "what": EVENT_WORDS.get(event.kind, event.kind),
        "attempt": event.attempt,
        "at": event.at,
        "time": time_text(event.at),
        "detail": detail,
    }
