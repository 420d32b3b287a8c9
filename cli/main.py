"""``conveyor COMMAND``: parse the command line and run one subcommand.

Only the standard library is imported here, so ``conveyor --help`` stays quick: a subcommand's
module (and through it the client, the broker or the worker, and ``rich``) is imported when that
subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib
import math
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final, NoReturn

__all__ = ["main"]

STATES: Final = ("waiting", "delayed", "active", "completed", "failed", "waiting-children")
MAX_LIST: Final = 10_000
"""Most jobs one ``jobs`` listing may ask for (the broker's limit)."""
MAX_JOB_ID: Final = (1 << 63) - 1
# The protocol's MIN_PRIORITY and MAX_PRIORITY, written out: importing conveyor.protocol here
# would slow down every ``conveyor --help``.
MIN_PRIORITY: Final = -(1 << 31)
MAX_PRIORITY: Final = (1 << 31) - 1
# The protocol's MAX_LIMIT and MAX_LIMIT_PERIOD, written out (as the priorities above).
MAX_LIMIT: Final = 1_000_000_000
MAX_LIMIT_PERIOD: Final = 1e9
PERMISSIONS: Final = ("produce", "consume", "read", "admin")
_USER_NAME: Final = re.compile(r"[A-Za-z0-9_.@-]{1,64}")

_DELEGATED: Final = {
    "broker": "run a broker (conveyor broker --help lists its options)",
    "worker": "run worker processes for a handler or task registry (conveyor worker --help)",
    "dashboard": "serve the web dashboard and /metrics (conveyor dashboard --help)",
}


class _Parser(argparse.ArgumentParser):
    """Reports a usage mistake as one ``conveyor: ...`` line and exits 2."""

    def error(self, message: str) -> NoReturn:
        print(f"conveyor: {message} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(2)


class _Version(argparse.Action):
    """``--version``: the installed distribution's version, read only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from importlib.metadata import PackageNotFoundError, version
        try:
            text = version("conveyor")
        except PackageNotFoundError:
            text = "unknown (not installed)"
        print(f"conveyor {text}")
        parser.exit()


# Argument types: each raises ArgumentTypeError naming what it wanted.


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def seconds(text: str) -> float:
    """A duration: a number of seconds, 0 or more."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected seconds, 0 or more, got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """A duration above 0 seconds."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected seconds above 0, got {text!r}")
    return value


def _integer(text: str, low: int, high: int, wanted: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return value


def job_id(text: str) -> int:
    """A job id: an integer, 0 or more."""
    return _integer(text, 0, MAX_JOB_ID, "a job id (an integer, 0 or more)")


def count(text: str) -> int:
    """An integer, 0 or more."""
    return _integer(text, 0, MAX_JOB_ID, "an integer, 0 or more")


def attempts(text: str) -> int:
    """Tries in all: 1 to 1,000,000."""
    return _integer(text, 1, 1_000_000, "an integer from 1 to 1000000")


def limit(text: str) -> int:
    """A listing's size: 1 to ``MAX_LIST``."""
    return _integer(text, 1, MAX_LIST, f"an integer from 1 to {MAX_LIST}")


def priority(text: str) -> int:
    """A priority: a 32-bit integer, ``MIN_PRIORITY`` to ``MAX_PRIORITY``."""
    return _integer(text, MIN_PRIORITY, MAX_PRIORITY,
                    f"an integer from {MIN_PRIORITY} to {MAX_PRIORITY}")


def limit_count(text: str) -> int:
    """A rate's starts or a concurrency: 1 to ``MAX_LIMIT``."""
    return _integer(text, 1, MAX_LIMIT, f"an integer from 1 to {MAX_LIMIT}")


def limit_period(text: str) -> float:
    """A rate's period: seconds above 0, at most ``MAX_LIMIT_PERIOD``."""
    value = positive_seconds(text)
    if value > MAX_LIMIT_PERIOD:
        raise argparse.ArgumentTypeError(
            f"expected seconds above 0, at most {MAX_LIMIT_PERIOD:g}, got {text!r}")
    return value


def user_name(text: str) -> str:
    """A user name, as the users file allows it."""
    if not _USER_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"a user name is 1 to 64 of the characters A-Z a-z 0-9 _ . @ -, got {text!r}")
    return text


def permission_rule(text: str) -> tuple[str, str]:
    """``PERMISSION:GLOB``: a permission and the queue-name glob it is held on."""
    permission, colon, glob = text.partition(":")
    if not colon or permission not in PERMISSIONS or not glob:
        raise argparse.ArgumentTypeError(
            f"expected PERM:GLOB with PERM one of {', '.join(PERMISSIONS)} and a "
            f"queue-name glob (emails, reports.*, *), got {text!r}")
    return permission, glob


# The parser.


def _common() -> _Parser:
    parent = _Parser(add_help=False)
    parent.add_argument("--url", default=None, metavar="URL",
                        help="broker address: HOST:PORT, conveyor://[USER@]HOST[:PORT], or "
                             "conveyors://... for TLS (CA and client certificate from "
                             "$CONVEYOR_TLS_CA, $CONVEYOR_TLS_CERT, $CONVEYOR_TLS_KEY) "
                             "(default: $CONVEYOR_URL, else 127.0.0.1:7400)")
    parent.add_argument("--json", action="store_true",
                        help="machine-readable output on stdout (JSON; JSON lines when live)")
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The ``conveyor`` parser with every subcommand (``broker`` and ``worker`` hand their
    arguments on to their own parsers)."""
    parser = _Parser(prog="conveyor",
                     description="Run a Conveyor broker or workers, and look at or steer a "
                                 "running broker.")
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    common = [_common()]

    def command(name: str, run: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                                  parents=common)
        sub.set_defaults(run=run)
        return sub

    for name, help in _DELEGATED.items():
        commands.add_parser(name, help=help, add_help=False)

    sub = command("status", "read:status", "show every queue's counts, workers and rates")
    sub.add_argument("--watch", action="store_true",
                     help="refresh in place until Ctrl-C, like top")
    sub.add_argument("--interval", type=positive_seconds, default=1.0, metavar="SECONDS",
                     help="seconds between refreshes with --watch (default: %(default)s)")

    sub = command("jobs", "read:jobs", "list a queue's jobs in one state")
    sub.add_argument("queue", metavar="QUEUE")
    sub.add_argument("--state", required=True, choices=STATES)
    sub.add_argument("--limit", type=limit, default=50,
                     help=f"jobs to list, at most {MAX_LIST} (default: %(default)s)")
    sub.add_argument("--offset", type=count, default=0,
                     help="jobs to skip first (default: %(default)s)")

    sub = command("job", "read:job", "show one job: data, result, error and traceback, times")
    sub.add_argument("job", metavar="ID", type=job_id, nargs="?")
    sub.add_argument("--key", metavar="KEY",
                     help="the job added with this idempotency key (add --id) instead of an ID")

    sub = command("workers", "read:workers",
                  "list the connected workers: their queues, credit windows and jobs held")
    sub.add_argument("--queue", metavar="QUEUE",
                     help="only the workers subscribed to this queue")

    sub = command("events", "read:events", "follow a queue's events live until Ctrl-C")
    sub.add_argument("queue", metavar="QUEUE")

    _add_parser(command("add", "add:add", "add a job, or one job per line of a JSONL file"))

    sub = command("retry", "control:retry",
                  "put a queue's failed jobs (or one failed job) back in line")
    sub.add_argument("queue", metavar="QUEUE", nargs="?")
    sub.add_argument("--job", type=job_id, metavar="ID", help="retry this failed job only")

    for name, what in (("promote", "make a delayed job waiting now"),
                       ("remove", "remove a job that is not active")):
        sub = command(name, f"control:{name}", what)
        sub.add_argument("job", metavar="ID", type=job_id)

    for name, what in (("pause", "stop deliveries from a queue (it still accepts jobs)"),
                       ("resume", "restart deliveries from a paused queue")):
        sub = command(name, f"control:{name}", what)
        sub.add_argument("queue", metavar="QUEUE")

    sub = command("limit", "control:limit",
                  "show, set or clear a queue's rate and concurrency limits (and its groups')")
    sub.add_argument("queue", metavar="QUEUE")
    sub.add_argument("--rate", type=limit_count, metavar="N",
                     help="at most N jobs start in any --per seconds, evenly spaced")
    sub.add_argument("--per", type=limit_period, metavar="SECONDS",
                     help="the rate's period (default: 1)")
    sub.add_argument("--concurrency", type=limit_count, metavar="N",
                     help="at most N of the queue's jobs active at once, across all workers")
    sub.add_argument("--group-concurrency", type=limit_count, metavar="N",
                     help="at most N jobs of each group active at once")
    sub.add_argument("--group-rate", type=limit_count, metavar="N",
                     help="at most N jobs of each group start in any --group-per seconds")
    sub.add_argument("--group-per", type=limit_period, metavar="SECONDS",
                     help="the group rate's period (default: 1)")
    sub.add_argument("--clear", action="store_true", help="remove the queue's limits")

    sub = command("drain", "control:drain", "remove every waiting and delayed job of a queue")
    sub.add_argument("queue", metavar="QUEUE")
    sub.add_argument("--yes", "-y", action="store_true",
                     help="do not ask for confirmation (it is asked only on a terminal)")

    sub = command("clean", "control:clean", "remove a queue's completed or failed jobs")
    sub.add_argument("queue", metavar="QUEUE")
    sub.add_argument("--state", required=True, choices=("completed", "failed"))
    sub.add_argument("--older-than", type=seconds, default=0.0, metavar="SECONDS",
                     help="only jobs finished at least this long ago (default: all)")

    _schedule_parser(commands.add_parser(
        "schedule", help="add, remove or list repeatable jobs (schedules kept by the broker)",
        description="Add, remove or list repeatable jobs: the broker adds a job at each due "
                    "time of a schedule."), common)

    _user_parser(commands.add_parser(
        "user", help="edit the users file: add, passwd, remove, grant, revoke, list",
        description="Edit the users file that the broker reads with --users. A change applies "
                    "once the broker reloads the file (SIGHUP) or restarts."))
    return parser


def _schedule_parser(schedule: argparse.ArgumentParser,
                     common: Sequence[argparse.ArgumentParser]) -> None:
    actions = schedule.add_subparsers(title="actions", metavar="ACTION", required=True)

    def action(name: str, run: str, help: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                                 parents=common)
        sub.set_defaults(run=f"schedule:{run}")
        return sub

    sub = action("add", "add", "create or replace a schedule (by ID)")
    sub.add_argument("id", metavar="ID")
    sub.add_argument("queue", metavar="QUEUE")
    sub.add_argument("data", metavar="DATA_JSON", help="each job's payload, as JSON")
    when = sub.add_mutually_exclusive_group(required=True)
    when.add_argument("--every", type=positive_seconds, metavar="SECONDS",
                      help="a job every SECONDS, the first SECONDS from now")
    when.add_argument("--cron", metavar="EXPR",
                      help="a job at each time the cron expression matches (minute hour day "
                           "month weekday)")
    sub.add_argument("--tz", metavar="TZ", help="the IANA time zone of --cron (default: UTC)")
    sub.add_argument("--missed", choices=("once", "skip"), default="once",
                     help="due times passed while the broker was down: one job at start "
                          "(once, the default) or none (skip)")
    sub.add_argument("--name", help="what kind of job it is (a task registry's key)")
    _try_options(sub)
    sub = action("remove", "remove", "remove a schedule (its jobs already added stay)")
    sub.add_argument("id", metavar="ID")
    action("list", "list_schedules", "list the schedules with their next due times")


def _user_parser(user: argparse.ArgumentParser) -> None:
    actions = user.add_subparsers(title="actions", metavar="ACTION", required=True)
    file = _Parser(add_help=False)
    file.add_argument("--users", metavar="PATH",
                      help="the users file (default: $CONVEYOR_USERS, else ./conveyor-users.toml)")
    file.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    password = _Parser(add_help=False)
    source = password.add_mutually_exclusive_group()
    source.add_argument("--password-stdin", action="store_true",
                        help="read the password as one line of standard input (the default "
                             "when standard input is not a terminal; on a terminal it is asked "
                             "twice)")
    source.add_argument("--password-file", metavar="PATH",
                        help="read the password from this file (a trailing newline is dropped)")

    def rules(sub: argparse.ArgumentParser, *, required: bool) -> None:
        sub.add_argument("--permission", type=permission_rule, metavar="PERM:GLOB",
                         action="append", required=required,
                         help="PERM (produce, consume, read or admin) held on the queues "
                              "matching GLOB; repeat it for more")

    def action(name: str, run: str, help: str, *, secret: bool = False,
               named: bool = True) -> argparse.ArgumentParser:
        parents = [file, password] if secret else [file]
        sub = actions.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                                 parents=parents)
        sub.set_defaults(run=f"users:{run}")
        if named:
            sub.add_argument("name", metavar="NAME", type=user_name)
        return sub

    sub = action("add", "add", "add a user with a password (asked, never an argument), a "
                 "certificate or both", secret=True)
    rules(sub, required=False)
    sub.add_argument("--certificate", action="store_true",
                     help="a client certificate whose CN is NAME logs in as this user")
    sub.add_argument("--no-secret", action="store_true",
                     help="no password: only the certificate logs in (with --certificate)")
    action("passwd", "passwd", "give a user a new password", secret=True)
    action("remove", "remove", "remove a user")
    sub = action("grant", "grant", "give a user more permissions")
    rules(sub, required=True)
    sub = action("revoke", "revoke", "take permissions (exact globs) from a user")
    rules(sub, required=True)
    action("list", "list_users", "list the users, how they log in and their permissions",
           named=False)


def _try_options(sub: argparse.ArgumentParser) -> None:
    """The options of a job's tries, shared by ``add`` and ``schedule add``."""
    sub.add_argument("--priority", type=priority, default=0, help="higher runs first")
    sub.add_argument("--attempts", type=attempts, default=1, help="tries in all (default: 1)")
    backoff = sub.add_mutually_exclusive_group()
    backoff.add_argument("--backoff", type=seconds, metavar="SECONDS",
                         help="fixed wait between tries")
    backoff.add_argument("--backoff-exponential", type=seconds, metavar="BASE",
                         help="exponential wait between tries: BASE * 2^(attempt-1) seconds")
    sub.add_argument("--backoff-cap", type=seconds, metavar="SECONDS",
                     help="longest exponential wait (with --backoff-exponential)")
    sub.add_argument("--timeout", type=positive_seconds, metavar="SECONDS",
                     help="seconds one try may run")


def _add_parser(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("queue", metavar="QUEUE")
    sub.add_argument("data", metavar="DATA_JSON", nargs="?",
                     help="the job's payload, as JSON (or give --file)")
    sub.add_argument("--file", metavar="PATH",
                     help="add one job per line of this JSONL file ('-': standard input); the "
                          "options apply to every job")
    sub.add_argument("--name", help="what kind of job it is (a task registry's key)")
    sub.add_argument("--id", dest="key", metavar="KEY",
                     help="idempotency key: adding a key a retained job has adds nothing")
    _try_options(sub)
    sub.add_argument("--delay", type=seconds, default=0.0, metavar="SECONDS",
                     help="seconds before the job may run")
    sub.add_argument("--keep-result", type=seconds, metavar="SECONDS",
                     help="seconds the finished job is retained")
    sub.add_argument("--dedup", type=seconds, metavar="SECONDS",
                     help="seconds during which --id deduplicates (default: while the job is "
                          "retained)")
    sub.add_argument("--lifo", action="store_true",
                     help="run before the waiting jobs of its priority (last in, first out)")
    sub.add_argument("--group", metavar="GROUP",
                     help="the group (tenant) of the job: dispatch takes turns across groups")


def _delegate(name: str, argv: list[str]) -> int:
    prog = f"conveyor {name}"
    if name == "broker":
        from conveyor.broker.cli import main as broker_main
        return broker_main(argv, prog=prog)
    if name == "dashboard":
        # Says in one line when the dashboard extra is not installed.
        from conveyor.dashboard import main as dashboard_main
        return dashboard_main(argv, prog=prog)
    from conveyor.worker.cli import main as worker_main
    return worker_main(argv, prog=prog)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``conveyor`` command; return its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in _DELEGATED:
        return _delegate(args[0], args[1:])
    namespace = build_parser().parse_args(args)
    module_name, _, function = namespace.run.partition(":")
    module = importlib.import_module(f"conveyor.cli.{module_name}")
    run: Callable[[Any], int] = getattr(module, function)
    return run(namespace)
