"""``conveyor add QUEUE DATA_JSON [options]``: add one job and print its id; with ``--file``,
one job per line of a JSONL file (see ``jsonl.py``)."""

from __future__ import annotations

import argparse
from typing import cast

import msgspec

from conveyor.client import Backoff, Client, JobOptions, exponential

from .output import print_json
from .runner import OK, USAGE, connected, fail, run

__all__ = ["add", "backoff", "job_options"]


def backoff(args: argparse.Namespace) -> float | Backoff | None:
    """The job's backoff that ``--backoff`` or ``--backoff-exponential [--backoff-cap]`` ask
    for (None: none). Raises ``ValueError`` for ``--backoff-cap`` alone."""
    if args.backoff_cap is not None and args.backoff_exponential is None:
        raise ValueError("--backoff-cap applies to --backoff-exponential only")
    if args.backoff_exponential is not None:
        return exponential(args.backoff_exponential, cap=args.backoff_cap)
    return cast("float | None", args.backoff)


def job_options(args: argparse.Namespace) -> JobOptions:
    """The keyword arguments of ``Client.add``/``add_bulk`` that the options ask for.

    Raises ``ValueError`` for a combination that cannot be used.
    """
    options: JobOptions = {}
    wait = backoff(args)
    if args.name is not None:
        options["name"] = args.name
    if args.key is not None:
        options["id"] = args.key
    if args.priority:
        options["priority"] = args.priority
    if args.attempts != 1:
        options["attempts"] = args.attempts
    if wait is not None:
        options["backoff"] = wait
    if args.timeout is not None:
        options["timeout"] = args.timeout
    if args.delay:
        options["delay"] = args.delay
    if args.keep_result is not None:
        options["keep_result"] = args.keep_result
    if args.dedup is not None:
        if args.key is None:
            raise ValueError("--dedup applies with --id only")
        options["dedup"] = args.dedup
    if args.lifo:
        options["lifo"] = True
    if args.group is not None:
        options["group"] = args.group
    return options


def add(args: argparse.Namespace) -> int:
    """Add one job (``DATA_JSON``) or every line of ``--file``."""
    if (args.data is None) == (args.file is None):
        return fail("give the job's DATA_JSON or --file PATH (one of them)", USAGE)
    try:
        options = job_options(args)
    except ValueError as exc:
        return fail(str(exc), USAGE)
    if args.file is not None:
        if args.key is not None:
            return fail("--id names one job: it cannot apply to every line of --file", USAGE)
        from .jsonl import add_file
        return add_file(args, options)
    try:
        data = msgspec.json.decode(args.data)
    except msgspec.DecodeError as exc:
        return fail(f"DATA_JSON is not valid JSON: {exc}", USAGE)

    async def body(client: Client) -> int:
        job_id = await client.add(args.queue, data, **options)
        if args.json:
            print_json({"id": job_id})
        else:
            print(job_id, flush=True)
        return OK

    return run(connected(args.url, body))
