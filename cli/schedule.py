"""``conveyor schedule add | remove | list``: repeatable jobs, kept by the broker."""

from __future__ import annotations

import argparse
import datetime
from typing import Any

import msgspec

from conveyor.client import Client, Schedule

from .add import backoff
from .output import print_json
from .runner import OK, USAGE, connected, fail, run

__all__ = ["add", "list_schedules", "remove"]


def add(args: argparse.Namespace) -> int:
    """``conveyor schedule add ID QUEUE DATA_JSON (--every S | --cron EXPR [--tz TZ])``."""
    try:
        wait = backoff(args)
    except ValueError as exc:
        return fail(str(exc), USAGE)
    if args.tz is not None and args.cron is None:
        return fail("--tz is the time zone of --cron: give --cron too", USAGE)
    try:
        data = msgspec.json.decode(args.data)
    except msgspec.DecodeError as exc:
        return fail(f"DATA_JSON is not valid JSON: {exc}", USAGE)

    async def body(client: Client) -> int:
        await client.set_schedule(
            args.id, args.queue, data, every=args.every, cron=args.cron, tz=args.tz or "UTC",
            missed=args.missed, name=args.name, priority=args.priority, attempts=args.attempts,
            backoff=wait, timeout=args.timeout)
        if args.json:
            print_json({"id": args.id, "set": True})
        else:
            print(f"schedule {args.id} set", flush=True)
        return OK

    return run(connected(args.url, body))


def remove(args: argparse.Namespace) -> int:
    """``conveyor schedule remove ID``."""

    async def body(client: Client) -> int:
        await client.remove_schedule(args.id)
        if args.json:
            print_json({"id": args.id, "removed": True})
        else:
            print(f"schedule {args.id} removed", flush=True)
        return OK

    return run(connected(args.url, body))


def list_schedules(args: argparse.Namespace) -> int:
    """``conveyor schedule list``: every schedule with its next due time."""

    async def body(client: Client) -> int:
        infos = await client.schedules()
        if args.json:
            print_json([_record(info.schedule, info.next_run) for info in infos])
            return OK
        if not infos:
            print("no schedules", flush=True)
        for info in infos:
            schedule = info.schedule
            when = (f"every {schedule.every:g} s" if schedule.every is not None
                    else f"cron {schedule.cron!r} in {schedule.tz}")
            at = datetime.datetime.fromtimestamp(info.next_run).isoformat(" ", "seconds")
            print(f"{schedule.id}: {schedule.queue}, {when}, missed: {schedule.missed}, "
                  f"next at {at}", flush=True)
        return OK

    return run(connected(args.url, body))


def _record(schedule: Schedule, next_run: float) -> dict[str, Any]:
    record = {field: getattr(schedule, field) for field in schedule.__struct_fields__}
    record["data"] = msgspec.msgpack.decode(schedule.data)
    record["backoff"] = None if schedule.backoff is None else msgspec.to_builtins(
        schedule.backoff)
    record["next_run"] = next_run
    return record
