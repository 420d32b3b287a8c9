"""The POST actions: each asks the broker to change something and answers JSON
``{"ok": true, "message": ...}``, or ``{"ok": false, "message": ...}`` with a 4xx status (5xx when
the broker could not be reached) carrying the broker's own words.

A confirmation for destructive actions (drain, clean, remove) is the page's business: this layer
is reached only by a page's script, which proves it with the CSRF header (see ``security``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from conveyor.client import (
    Client,
    ConnectionLost,
    ConveyorError,
    Forbidden,
    InvalidQueue,
    InvalidState,
    ProtocolViolation,
    UnknownJob,
)

from .security import CSRF_HEADER, valid_csrf
from .state import dashboard_of

__all__ = ["MAX_JOB_ID", "action_routes", "error_status"]

CLEANABLE: Final = ("completed", "failed")
MAX_JOB_ID: Final = (1 << 63) - 1
"""The highest job id (an int64): a larger one is no job, and the client cannot send it."""

Action = Callable[[Client, Request, dict[str, Any]], Awaitable[str]]


class BadRequest(Exception):
    """The request's parameters cannot be used (400)."""


def error_status(error: ConveyorError) -> int:
    """The HTTP status that says what went wrong at the broker."""
    match error:
        case Forbidden():
            return 403
        case UnknownJob():
            return 404
        case InvalidState():
            return 409
        case InvalidQueue() | ProtocolViolation():
            return 400
        case ConnectionLost():
            return 503
        case _:
            return 502


def _plural(count: int, what: str) -> str:
    return f"{count} {what}" + ("" if count == 1 else "s")


def _job_id(request: Request) -> int:
    value: int = request.path_params["job"]
    if value > MAX_JOB_ID:
        raise BadRequest(f"no job has the id {value}: ids are below 2**63")
    return value


def _queue(request: Request) -> str:
    value: str = request.path_params["queue"]
    return value


async def _pause(client: Client, request: Request, body: dict[str, Any]) -> str:
    await client.pause(_queue(request))
    return f"Queue {_queue(request)} paused."


async def _resume(client: Client, request: Request, body: dict[str, Any]) -> str:
    await client.resume(_queue(request))
    return f"Queue {_queue(request)} resumed."


async def _retry_failed(client: Client, request: Request, body: dict[str, Any]) -> str:
    count = await client.retry_failed(_queue(request))
    return f"{_plural(count, 'failed job')} put back in line."


async def _drain(client: Client, request: Request, body: dict[str, Any]) -> str:
    count = await client.drain(_queue(request))
    return f"{_plural(count, 'waiting or delayed job')} removed."


async def _clean(client: Client, request: Request, body: dict[str, Any]) -> str:
    state = body.get("state")
    if state not in CLEANABLE:
        raise BadRequest("state must be completed or failed")
    older_than = body.get("older_than", 0)
    if isinstance(older_than, str):
        try:
            older_than = float(older_than or 0)
        except ValueError:
            raise BadRequest("older_than must be a number of seconds") from None
    if (isinstance(older_than, bool) or not isinstance(older_than, int | float)
            or not 0 <= older_than < float("inf")):
        raise BadRequest("older_than must be a number of seconds, 0 or more")
    count = await client.clean(_queue(request), state, float(older_than))
    return f"{_plural(count, f'{state} job')} removed."


async def _retry_job(client: Client, request: Request, body: dict[str, Any]) -> str:
    count = await client.retry_failed(job_id=_job_id(request))
    if not count:
        raise _NotFailed(f"job {_job_id(request)} is not failed")
    return f"Job {_job_id(request)} put back in line."


async def _promote(client: Client, request: Request, body: dict[str, Any]) -> str:
    await client.promote(_job_id(request))
    return f"Job {_job_id(request)} is waiting now."


async def _remove(client: Client, request: Request, body: dict[str, Any]) -> str:
    await client.remove(_job_id(request))
    return f"Job {_job_id(request)} removed."


class _NotFailed(Exception):
    """A retry of a job that is not failed changed nothing (409)."""


def _endpoint(actions: dict[str, Action]) -> Callable[[Request], Awaitable[JSONResponse]]:
    async def endpoint(request: Request) -> JSONResponse:
        dashboard = dashboard_of(request)
        if not valid_csrf(request.headers.get(CSRF_HEADER), dashboard.csrf_token):
            return _answer(403, f"missing or wrong {CSRF_HEADER} header: reload the page")
        action = actions.get(request.path_params["action"])
        if action is None:
            return _answer(404, f"no action {request.path_params['action']!r}")
        try:
            body = await _body(request)
            client = await dashboard.connected()
            return _answer(200, await action(client, request, body))
        except BadRequest as exc:
            return _answer(400, str(exc))
        except _NotFailed as exc:
            return _answer(409, str(exc))
        except ValueError as exc:  # a queue name the client refuses before sending
            return _answer(400, str(exc))
        except ConveyorError as exc:
            return _answer(error_status(exc), str(exc))

    return endpoint


async def _body(request: Request) -> dict[str, Any]:
    """The JSON object sent (an empty body is an empty object)."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest("the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body is not a JSON object")
    return body


def _answer(status: int, message: str) -> JSONResponse:
    return JSONResponse({"ok": status == 200, "message": message}, status_code=status)


def action_routes() -> list[Route]:
    """The POST routes of every action: ``/queues/{name}/{action}`` (a queue's name may hold
    ``/``: the action is the last segment) and ``/jobs/{id}/{action}``."""
    queue_actions: dict[str, Action] = {
        "pause": _pause, "resume": _resume, "retry-failed": _retry_failed, "drain": _drain,
        "clean": _clean,
    }
    job_actions: dict[str, Action] = {"retry": _retry_job, "promote": _promote,
                                      "remove": _remove}
    return [
        Route("/queues/{queue:path}/{action:str}", _endpoint(queue_actions), methods=["POST"]),
        Route("/jobs/{job:int}/{action:str}", _endpoint(job_actions), methods=["POST"]),
    ]
