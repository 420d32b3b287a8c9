"""Read commands: ``status`` (optionally live), ``jobs``, ``job``, ``workers`` and ``events``."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any, Final

import msgspec
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from conveyor.client import (
    Client,
    JobEvent,
    JobInfo,
    JobState,
    QueueSummary,
    WorkerInfo,
    parse_url,
)

from .output import (
    ago,
    clock,
    error_console,
    moment,
    out_console,
    print_json,
    short,
    timestamp,
    value_text,
)
from .runner import OK, CommandFailed, UsageError, connected, guarded, run

__all__ = ["events", "job", "jobs", "status", "workers"]

ERROR_WIDTH: Final = 60
"""Most characters of an error shown in a ``jobs`` table."""


# status


def status(args: argparse.Namespace) -> int:
    """``conveyor status [--watch]``: every queue, once or refreshed until Ctrl-C."""
    if not args.watch:
        return run(connected(args.url, lambda client: _status_once(client, args.json)))
    return run(connected(args.url, lambda client: _watch(client, args)), interrupted=OK)


async def _status_once(client: Client, as_json: bool) -> int:
    queues = await client.queues()
    if as_json:
        print_json(queues)
    else:
        console = out_console()
        console.print(_status_table(queues, client.url, console))
    return OK


async def _watch(client: Client, args: argparse.Namespace) -> int:
    console = out_console()
    if args.json:
        while True:
            print_json(await client.queues())
            await asyncio.sleep(args.interval)
    if not console.is_terminal:
        # A pipe or file gets one table per refresh, like ``top -b``.
        while True:
            console.print(_status_table(await client.queues(), client.url, console, live=True))
            sys.stdout.flush()
            await asyncio.sleep(args.interval)
    with Live(console=console, auto_refresh=False, screen=False) as live:
        while True:
            table = _status_table(await client.queues(), client.url, console, live=True)
            live.update(Group(table, Text("Ctrl-C to stop", style="dim")), refresh=True)
            await asyncio.sleep(args.interval)


def _status_table(queues: list[QueueSummary], url: str | None, console: Console, *,
                  live: bool = False) -> Table:
    """The queues as a table; without the rates when the terminal is too narrow for them."""
    title = f"conveyor at {parse_url(url)}"
    if live:
        title += f", {clock(time.time())}"
    table = _queue_table(queues, title, rates=True)
    natural = Measurement.get(console, console.options.update_width(1 << 16), table).maximum
    if natural > console.width:
        table = _queue_table(queues, title, rates=False)
    return table


def _queue_table(queues: list[QueueSummary], title: str, *, rates: bool) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("queue", no_wrap=True)
    columns = ["waiting", "active", "delayed", "completed", "failed", "workers"]
    if rates:
        columns += ["added/s", "completed/s", "failed/s"]
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    for queue in queues:
        name = Text(queue.name)
        if queue.paused:
            name.append(" (paused)", style="yellow")
        row = [f"{queue.waiting:,}", f"{queue.active:,}", f"{queue.delayed:,}",
               f"{queue.completed:,}", f"{queue.failed:,}", f"{queue.workers:,}"]
        if rates:
            row += [_rate(queue.added_rate), _rate(queue.completed_rate),
                    _rate(queue.failed_rate)]
        table.add_row(name, *row)
    if not queues:
        table.caption = "no queues yet"
    return table


def _rate(value: float) -> str:
    """Jobs a second, to two significant digits or more."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 1 or value == 0 else f"{value:.2f}"


# jobs


def jobs(args: argparse.Namespace) -> int:
    """``conveyor jobs QUEUE --state STATE``: a table of the queue's jobs in that state."""
    return run(connected(args.url, lambda client: _jobs(client, args)))


async def _jobs(client: Client, args: argparse.Namespace) -> int:
    found = await client.get_jobs(args.queue, args.state, offset=args.offset, limit=args.limit)
    if args.json:
        print_json(found)
        return OK
    title = f"{args.state} jobs of {args.queue}"
    console = out_console()
    table = _jobs_table(found, title, error_width=0)
    if not found:
        table.caption = "none" if not args.offset else f"none after the first {args.offset:,}"
    elif any(info.error is not None for info in found):
        # One line a job: the errors get the room the other columns leave, cut to fit.
        used = Measurement.get(console, console.options.update_width(1 << 16), table).maximum
        room = min(console.width - used - 3, ERROR_WIDTH)
        if room >= len("error"):
            table = _jobs_table(found, title, error_width=room)
    console.print(table)
    return OK


def _jobs_table(found: list[JobInfo], title: str, *, error_width: int) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("id", justify="right", no_wrap=True)
    for column in ("name", "state"):
        table.add_column(column, no_wrap=True)
    table.add_column("attempt", justify="right", no_wrap=True)
    for column in ("created", "finished"):
        table.add_column(column, no_wrap=True)
    if error_width:
        table.add_column("error", no_wrap=True)
    now = time.time()
    for info in found:
        row: list[str | Text] = [
            str(info.id), Text(info.name or ""), info.state.value,
            f"{info.attempt}/{info.attempts}", moment(info.created_at, now),
            "" if info.finished_at is None else moment(info.finished_at, now)]
        if error_width:
            error = info.error
            row.append(Text(short(f"{error.type}: {error.message}", error_width))
                       if error is not None else "")
        table.add_row(*row)
    return table


# job


def job(args: argparse.Namespace) -> int:
    """``conveyor job ID`` or ``conveyor job --key KEY``: everything the broker retains of one
    job."""
    if (args.job is None) == (args.key is None):
        return guarded(_one_of_id_or_key)
    return run(connected(args.url, lambda client: _job(client, args)))


def _one_of_id_or_key() -> int:
    raise UsageError("give either a job ID or --key KEY (see 'conveyor job --help')")


async def _job(client: Client, args: argparse.Namespace) -> int:
    if args.key is not None:
        info = await client.find_job(args.key)
        if info is None:
            raise CommandFailed(f"no job with the key {args.key!r}")
    else:
        info = await client.get_job(args.job)
        if info is None:
            raise CommandFailed(f"no job {args.job}")
    if args.json:
        print_json(info)
        return OK
    console = out_console()
    console.print(_job_table(info))
    if info.error is not None and info.error.traceback:
        console.print(Text("traceback:", style="bold"))
        console.print(Text(info.error.traceback.rstrip("\n")), soft_wrap=True)
    return OK


def _job_table(info: JobInfo) -> Table:
    now = time.time()
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    rows: list[tuple[str, Any]] = [
        ("job", str(info.id)),
        ("queue", Text(info.queue)),
        ("name", Text(info.name or "-")),
        ("group", Text(info.group or "-")),
        ("state", info.state.value),
        ("attempt", f"{info.attempt} of {info.attempts}"),
        ("priority", str(info.priority)),
        ("key", Text(info.key or "-")),
        ("created", f"{timestamp(info.created_at)} ({ago(info.created_at, now)})"),
    ]
    if info.parent is not None:
        rows.append(("parent", str(info.parent)))
    if info.children:
        rows.append(("children", f"{info.children - info.children_left} of {info.children} "
                                 f"finished"))
    if info.run_at is not None:
        rows.append(("runs at", f"{timestamp(info.run_at)} ({ago(info.run_at, now)})"))
    if info.finished_at is not None:
        rows.append(("finished", f"{timestamp(info.finished_at)} "
                                 f"({ago(info.finished_at, now)})"))
    if info.progress is not None:
        rows.append(("progress", Text(value_text(info.progress))))
    rows.append(("data", Text(value_text(info.data))))
    if info.state is JobState.COMPLETED:
        rows.append(("result", Text(value_text(info.result))))
    if info.error is not None:
        rows.append(("error", Text(f"{info.error.type}: {info.error.message}")))
    for label, value in rows:
        table.add_row(label, value)
    return table


# workers


def workers(args: argparse.Namespace) -> int:
    """``conveyor workers [--queue QUEUE]``: a table of the connections subscribed to queues."""
    return run(connected(args.url, lambda client: _workers(client, args)))


async def _workers(client: Client, args: argparse.Namespace) -> int:
    found = (await client.stats(args.queue)).workers
    if args.json:
        print_json(found)
        return OK
    out_console().print(_workers_table(found, f"workers at {parse_url(client.url)}"))
    return OK


def _workers_table(found: list[WorkerInfo], title: str) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("id", justify="right", no_wrap=True)
    for column in ("name", "host"):
        table.add_column(column, no_wrap=True)
    table.add_column("pid", justify="right", no_wrap=True)
    for column in ("address", "user", "queues (held/window)", "connected", "last heard"):
        table.add_column(column, no_wrap=True)
    now = time.time()
    for worker in found:
        queues = ", ".join(f"{s.queue} {s.held}/{s.window}" for s in worker.subscriptions)
        table.add_row(str(worker.id), Text(worker.name), Text(worker.host),
                      str(worker.pid) if worker.pid else "", worker.address, Text(worker.user),
                      Text(queues), moment(worker.connected_at, now),
                      ago(worker.last_heard, now))
    if not found:
        table.caption = "no workers connected"
    return table


# events


def events(args: argparse.Namespace) -> int:
    """``conveyor events QUEUE``: one line per event, live, until Ctrl-C."""
    return run(connected(args.url, lambda client: _events(client, args)), interrupted=OK)


async def _events(client: Client, args: argparse.Namespace) -> int:
    async with client.events(args.queue) as stream:
        # Requests are answered in order: once this one is, the watch is in place.
        await client.counts(args.queue)
        error_console().print(Text(f"following the events of {args.queue}; Ctrl-C to stop",
                                   style="dim"))
        write = sys.stdout.write
        async for event in stream:
            if args.json:
                print_json(_event_record(event))
            else:
                write(_event_line(event) + "\n")
                sys.stdout.flush()
    return OK


def _event_record(event: JobEvent) -> dict[str, Any]:
    record: dict[str, Any] = msgspec.to_builtins(
        {"at": event.at, "kind": event.kind, "queue": event.queue, "job": event.job,
         "name": event.name, "attempt": event.attempt, "value": event.value,
         "error": event.error, "run_at": event.run_at}, enc_hook=repr)
    return record


def _event_line(event: JobEvent) -> str:
    parts = [clock(event.at), f"{event.kind:<9}", f"job {event.job}"]
    if event.name:
        parts.append(event.name)
    if event.attempt:
        parts.append(f"attempt {event.attempt}")
    if event.error is not None:
        parts.append(short(f"{event.error.type}: {event.error.message}"))
    elif event.kind in ("completed", "progress") and event.value is not None:
        label = "result" if event.kind == "completed" else "progress"
        parts.append(f"{label} {short(value_text(event.value))}")
    if event.run_at is not None:
        parts.append(f"runs at {clock(event.run_at)}")
    return "  ".join(parts)
