"""Control commands: ``retry``, ``promote``, ``remove``, ``pause``, ``resume``, ``limit``,
``drain`` and ``clean``. Each prints what it did (with ``--json``, one JSON object)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from conveyor.client import Client

from .output import print_json
from .runner import INTERRUPTED, OK, REFUSED, USAGE, connected, fail, run

__all__ = ["clean", "drain", "limit", "pause", "promote", "remove", "resume", "retry"]


def _report(args: argparse.Namespace, record: dict[str, Any], text: str) -> int:
    if args.json:
        print_json(record)
    else:
        print(text, flush=True)
    return OK


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def retry(args: argparse.Namespace) -> int:
    """``conveyor retry QUEUE`` or ``conveyor retry --job ID``."""

    if (args.queue is None) == (args.job is None):
        return fail("give a QUEUE (its every failed job) or --job ID, not both", USAGE)

    async def body(client: Client) -> int:
        if args.job is not None:
            count = await client.retry_failed(job_id=args.job)
            return _report(args, {"job": args.job, "retried": count},
                           f"job {args.job} is back in line")
        count = await client.retry_failed(args.queue)
        return _report(args, {"queue": args.queue, "retried": count},
                       f"{_plural(count, 'failed job')} of {args.queue} back in line")

    return run(connected(args.url, body))


def promote(args: argparse.Namespace) -> int:
    """``conveyor promote ID``: a delayed job becomes waiting now."""

    async def body(client: Client) -> int:
        await client.promote(args.job)
        return _report(args, {"job": args.job, "promoted": True},
                       f"job {args.job} is waiting now")

    return run(connected(args.url, body))


def remove(args: argparse.Namespace) -> int:
    """``conveyor remove ID``."""

    async def body(client: Client) -> int:
        await client.remove(args.job)
        return _report(args, {"job": args.job, "removed": True}, f"job {args.job} removed")

    return run(connected(args.url, body))


def pause(args: argparse.Namespace) -> int:
    """``conveyor pause QUEUE``: no more deliveries; adds are still accepted."""

    async def body(client: Client) -> int:
        await client.pause(args.queue)
        return _report(args, {"queue": args.queue, "paused": True},
                       f"{args.queue} paused: no deliveries until 'conveyor resume "
                       f"{args.queue}'")

    return run(connected(args.url, body))


def resume(args: argparse.Namespace) -> int:
    """``conveyor resume QUEUE``."""

    async def body(client: Client) -> int:
        await client.resume(args.queue)
        return _report(args, {"queue": args.queue, "paused": False}, f"{args.queue} resumed")

    return run(connected(args.url, body))


def limit(args: argparse.Namespace) -> int:
    """``conveyor limit QUEUE [--rate N [--per S]] [--concurrency N] [--group-concurrency N]
    [--group-rate N [--group-per S]]``, ``--clear``, or without options: show the limits."""
    setting = any(value is not None for value in (
        args.rate, args.per, args.concurrency, args.group_concurrency, args.group_rate,
        args.group_per))
    if args.clear and setting:
        return fail("give --clear alone, or limits to set", USAGE)
    if args.per is not None and args.rate is None:
        return fail("--per is the period of --rate: give --rate too", USAGE)
    if args.group_per is not None and args.group_rate is None:
        return fail("--group-per is the period of --group-rate: give --group-rate too", USAGE)

    async def body(client: Client) -> int:
        if args.clear:
            await client.clear_limits(args.queue)
        elif setting:
            await client.set_limits(args.queue, rate=args.rate,
                                    per=1.0 if args.per is None else args.per,
                                    concurrency=args.concurrency,
                                    group_concurrency=args.group_concurrency,
                                    group_rate=args.group_rate,
                                    group_per=1.0 if args.group_per is None else args.group_per)
        found = (await client.stats(args.queue)).queues
        limits = found[0].limits if found else None
        rate = None if limits is None else limits.rate
        per = 1.0 if limits is None else limits.per
        concurrency = None if limits is None else limits.concurrency
        parts = []
        if rate is not None:
            parts.append(f"at most {rate:,} starts per {per:g} s (one every {per / rate:.3g} s)")
        if concurrency is not None:
            parts.append(f"at most {concurrency:,} active at once")
        group_rate = None if limits is None else limits.group_rate
        group_per = 1.0 if limits is None else limits.group_per
        group_concurrency = None if limits is None else limits.group_concurrency
        if group_rate is not None:
            parts.append(f"each group at most {group_rate:,} starts per {group_per:g} s")
        if group_concurrency is not None:
            parts.append(f"each group at most {group_concurrency:,} active at once")
        text = f"{args.queue}: " + ("; ".join(parts) if parts else "no limits")
        shown: dict[str, object] = {"queue": args.queue, "rate": rate,
                                    "per": per if rate is not None else None,
                                    "concurrency": concurrency}
        if group_rate is not None or group_concurrency is not None:
            # Only for a queue whose groups have limits: the others' output stays as it was.
            shown.update(group_rate=group_rate,
                         group_per=group_per if group_rate is not None else None,
                         group_concurrency=group_concurrency)
        return _report(args, shown, text)

    return run(connected(args.url, body))


def drain(args: argparse.Namespace) -> int:
    """``conveyor drain QUEUE``: remove every waiting and delayed job, after asking on a
    terminal (unless ``--yes``)."""
    if not args.yes and sys.stdin.isatty():
        found: dict[str, int] = {}

        async def read(client: Client) -> int:
            found.update(await client.counts(args.queue))
            return OK

        status = run(connected(args.url, read))
        if status != OK:
            return status
        pending = found["waiting"] + found["delayed"]
        # Asked outside the event loop, so that Ctrl-C at the prompt stops at once; on stderr,
        # so that stdout holds only the result.
        sys.stderr.write(f"Drain {pending:,} waiting and delayed jobs of {args.queue}? [y/N] ")
        sys.stderr.flush()
        try:
            answer = sys.stdin.readline()
        except KeyboardInterrupt:
            sys.stderr.write("\n")
            return INTERRUPTED
        if answer.strip().lower() not in ("y", "yes"):
            return fail(f"nothing drained from {args.queue}", REFUSED)

    async def body(client: Client) -> int:
        count = await client.drain(args.queue)
        return _report(args, {"queue": args.queue, "removed": count},
                       f"removed {_plural(count, 'waiting and delayed job')} of {args.queue}")

    return run(connected(args.url, body))


def clean(args: argparse.Namespace) -> int:
    """``conveyor clean QUEUE --state completed|failed [--older-than S]``."""

    async def body(client: Client) -> int:
        count = await client.clean(args.queue, args.state, older_than=args.older_than)
        return _report(args, {"queue": args.queue, "state": args.state, "removed": count},
                       f"removed {_plural(count, args.state + ' job')} of {args.queue}")

    return run(connected(args.url, body))
