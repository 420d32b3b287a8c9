"""Running one command against the broker: the event loop, the client, and exit statuses.

Every expected failure becomes one ``conveyor: ...`` line on stderr and an exit status: 1 when the
broker refused the request or could not be reached, 2 for a usage mistake (a bad address, option
value or payload), 130 on Ctrl-C (0 for the commands that run until Ctrl-C).
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, TypeVar

from conveyor.client import Client, ConveyorError, UnknownJob

__all__ = ["CommandFailed", "UsageError", "connected", "fail", "guarded", "run"]

OK: Final = 0
REFUSED: Final = 1
USAGE: Final = 2
INTERRUPTED: Final = 130
"""128 + SIGINT, as a shell reports a command stopped by Ctrl-C."""
CLIENT_NAME: Final = "conveyor-cli"

T = TypeVar("T")


class UsageError(Exception):
    """A command-line mistake found after parsing (exit status 2)."""


class CommandFailed(Exception):
    """The command could not do what was asked (exit status 1); the message says why."""


def fail(message: str, status: int = REFUSED) -> int:
    """Print ``conveyor: message`` on stderr; return ``status``."""
    print(f"conveyor: {message}", file=sys.stderr, flush=True)
    return status


def _run_loop(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    result: T = uvloop.run(coro)
    return result


def run(coro: Coroutine[Any, Any, int], *, interrupted: int = INTERRUPTED) -> int:
    """Run ``coro`` to its exit status, as ``guarded`` does.

    ``interrupted``: the status after Ctrl-C (0 for commands that run until it).
    """
    return guarded(functools.partial(_run_loop, coro), interrupted=interrupted)


def guarded(command: Callable[[], int], *, interrupted: int = INTERRUPTED) -> int:
    """Call ``command`` for its exit status; turn expected errors into one line and a status.

    ``interrupted``: the status after Ctrl-C.
    """
    try:
        return command()
    except KeyboardInterrupt:
        return interrupted
    except UsageError as exc:
        return fail(str(exc), USAGE)
    except CommandFailed as exc:
        return fail(str(exc), REFUSED)
    except UnknownJob as exc:
        # The wire message names the code; the job's id is what a user needs.
        return fail(str(exc).removeprefix("UNKNOWN_JOB: "), REFUSED)
    except ConveyorError as exc:
        return fail(str(exc), REFUSED)
    except (ValueError, TypeError) as exc:
        # The client raises these for arguments it cannot send: a bad address, queue name,
        # option value or payload.
        return fail(str(exc), USAGE)
    except BrokenPipeError:
        # The reader of our output went away (``conveyor events Q | head``): nothing to report,
        # and nothing more to flush at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return OK


async def connected(url: str | None, body: Callable[[Client], Awaitable[T]]) -> T:
    """Connect to the broker at ``url``, run ``body`` with the client, and close it."""
    async with Client(url, name=CLIENT_NAME) as client:
        return await body(client)
