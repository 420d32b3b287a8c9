"""The pages (overview, queue, job, workers), the job lookup, the live streams and ``/metrics``.

Every page is rendered whole on the server, so that it reads right without its script; the
script (static/app.js) then keeps it live from ``/events`` or ``/jobs/{id}/events``. The broker
is asked as the dashboard's user: what that user may not read is a 403 page, a broker that
cannot be reached a 503 page with a banner saying so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlencode

import jinja2
import msgspec
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from conveyor.client import (
    Client,
    ConnectionLost,
    ConveyorError,
    Forbidden,
    JobInfo,
    decode_value,
)
from conveyor.protocol import MAX_OFFSET, MAX_PAGE, GetJobs, Jobs, JobState

from . import metrics, views
from .actions import MAX_JOB_ID, error_status
from .feed import job_updates
from .sse import EventSourceResponse
from .state import dashboard_of

__all__ = ["PAGE_SIZE", "events", "find", "job", "job_events", "metrics_page", "overview",
           "queue", "templates", "workers"]

PAGE_SIZE: Final = 50
"""Jobs listed on one page of a queue."""
LAST_PAGE: Final = MAX_OFFSET // PAGE_SIZE + 1
"""The highest page number asked for: past it the offset would not fit the wire's int64 (the
client could not encode the request, and the connection every page shares would be lost)."""

templates = Jinja2Templates(env=jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True, trim_blocks=True, lstrip_blocks=True))
templates.env.filters.update(rate=views.rate_text, duration=views.duration_text,
                             time=views.time_text, size=views.bytes_text)
templates.env.filters["segment"] = lambda text: quote(str(text), safe="")
"""A queue's name as one URL path segment (its "/" too)."""
templates.env.globals.update(STATES=views.STATES)

Handler = Callable[[Request], Awaitable[Response]]


def _render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    dashboard = dashboard_of(request)
    return templates.TemplateResponse(request, name, {
        "csrf_token": dashboard.csrf_token,
        "refresh": dashboard.refresh,
        "broker": None,
        "flash": None,
        **context,
    }, status_code=status)


def _page(handler: Handler) -> Handler:
    """Turn the broker's refusals into pages: 403, 503 (unreachable), 502 (anything else)."""

    async def page(request: Request) -> Response:
        try:
            return await handler(request)
        except ConveyorError as exc:
            status = error_status(exc)
            if isinstance(exc, ConnectionLost):
                title, text = "Broker unreachable", str(exc)
            elif isinstance(exc, Forbidden):
                title, text = "Forbidden", exc.message
            else:
                title, text = "The broker refused", str(exc)
            return _render(request, "error.html", {"page": "error", "title": title,
                                                  "message": text, "status": status,
                                                  "down": isinstance(exc, ConnectionLost)},
                           status)

    return page


def _not_found(request: Request, message: str) -> Response:
    return _render(request, "error.html", {"page": "error", "title": "Not found",
                                          "message": message, "status": 404, "down": False}, 404)


def _flash(request: Request) -> str | None:
    missing = request.query_params.get("missing")
    return None if missing is None else f"No job with the id or key {missing!r}."


@_page
async def overview(request: Request) -> Response:
    """``/``: every queue with its counts, rates and throughput."""
    stats = await dashboard_of(request).stats()
    return _render(request, "overview.html", {
        "page": "overview", "broker": views.broker_view(stats.broker),
        "queues": [views.queue_view(queue) for queue in stats.queues],
        "flash": _flash(request),
    })


@_page
async def queue(request: Request) -> Response:
    """``/queues/{name}``: one queue's figures, actions and a page of its jobs in one state."""
    name: str = request.path_params["queue"]
    state = request.query_params.get("state", "waiting")
    if state not in views.STATES:
        state = "waiting"
    try:
        number = min(max(int(request.query_params.get("page", "1")), 1), LAST_PAGE)
    except ValueError:
        number = 1
    dashboard = dashboard_of(request)
    client = await dashboard.connected()
    try:
        stats = await client.stats(name)
    except ValueError as exc:  # a name the client refuses to send
        return _not_found(request, str(exc))
    offset = (number - 1) * PAGE_SIZE
    jobs, total = await _jobs_page(client, name, state, offset)
    found = next((q for q in stats.queues if q.name == name), None)
    schedules = [views.schedule_view(info) for info in await client.schedules()
                 if info.schedule.queue == name] if found is not None and found.schedules else []
    return _render(request, "queue.html", {
        "page": "queue", "broker": views.broker_view(stats.broker), "name": name,
        "queue": None if found is None else views.queue_view(found),
        "state": state, "jobs": [views.job_view(job) for job in jobs], "total": total,
        "schedules": schedules,
        "number": number, "first": offset + 1, "last": offset + len(jobs),
        "prev": _page_link(name, state, number - 1) if number > 1 else None,
        "next": _page_link(name, state, number + 1) if offset + len(jobs) < total else None,
        "flash": _flash(request),
    })


def _page_link(name: str, state: str, number: int) -> str:
    return f"?{urlencode({'state': state, 'page': number})}"


async def _jobs_page(client: Client, name: str, state: str,
                     offset: int) -> tuple[list[JobInfo], int]:
    """A page of ``name``'s jobs in ``state`` and how many there are in that state in all (the
    ``jobs`` reply carries the total, which ``Client.get_jobs`` leaves out)."""
    reply = await client.connection.request(lambda req: GetJobs(
        req=req, queue=name, state=JobState(state), offset=offset, limit=min(PAGE_SIZE, MAX_PAGE)))
    assert isinstance(reply, Jobs)
    fields = JobInfo.__struct_fields__
    decoded = []
    for wire in reply.jobs:
        record = msgspec.structs.asdict(wire)
        for value in ("data", "result", "progress"):
            record[value] = decode_value(record[value])
        decoded.append(JobInfo(**{key: record[key] for key in fields if key in record}))
    return decoded, reply.total


@_page
async def job(request: Request) -> Response:
    """``/jobs/{id}``: one job's record and its timeline."""
    job_id: int = request.path_params["job"]
    dashboard = dashboard_of(request)
    client = await dashboard.connected()
    info = await client.get_job(job_id) if job_id <= MAX_JOB_ID else None
    if info is None:
        return _not_found(request, f"The broker retains no job {job_id}.")
    view = views.job_view(info)
    timeline = [{"what": "created", "time": view["created"], "detail": ""}]
    if info.run_at is not None and info.state.value == "delayed":
        timeline.append({"what": "due", "time": view["run"], "detail": "runs no sooner"})
    if info.finished_at is not None:
        timeline.append({"what": info.state.value, "time": view["finished"],
                         "detail": f"attempt {view['attempts_text']}"})
    return _render(request, "job.html", {"page": "job", "job": view, "timeline": timeline,
                                        "flash": _flash(request)})


@_page
async def workers(request: Request) -> Response:
    """``/workers``: every worker connection on a queue the dashboard's user may read."""
    stats = await dashboard_of(request).stats()
    now = time.time()
    return _render(request, "workers.html", {
        "page": "workers", "broker": views.broker_view(stats.broker),
        "workers": [views.worker_view(worker, now) for worker in stats.workers],
        "flash": _flash(request),
    })


@_page
async def find(request: Request) -> Response:
    """``/find?q=``: the job page of the job with that id (first) or idempotency key, else
    back to the page the search came from, saying nothing was found."""
    text = request.query_params.get("q", "").strip()
    back = request.query_params.get("from", "/")
    if not back.startswith("/") or back.startswith("//") or "\\" in back:
        back = "/"  # only a page of this dashboard: never an open redirect
    client = await dashboard_of(request).connected()
    found = None
    if text.isascii() and text.isdigit() and int(text) <= MAX_JOB_ID:
        found = await client.get_job(int(text))
    if found is None and text:
        found = await client.find_job(text)
    if found is not None:
        return RedirectResponse(f"/jobs/{found.id}", status_code=303)
    return RedirectResponse(f"{quote(back)}?{urlencode({'missing': text})}", status_code=303)


async def events(request: Request) -> EventSourceResponse:
    """``/events``: the statistics snapshots, live (server-sent events)."""
    dashboard = dashboard_of(request)
    return EventSourceResponse(dashboard.feed.updates(), closing=dashboard.closing)


async def job_events(request: Request) -> Response | EventSourceResponse:
    """``/jobs/{id}/events``: one job's record and events, live (server-sent events)."""
    dashboard = dashboard_of(request)
    job_id: int = request.path_params["job"]
    if job_id > MAX_JOB_ID:  # no such job, and an id the client could not send
        return Response(f"no job has the id {job_id}", status_code=404)
    return EventSourceResponse(
        job_updates(dashboard.connected, dashboard.watches, job_id,
                    retry=max(dashboard.refresh, 1.0), closing=dashboard.closing),
        closing=dashboard.closing)


async def metrics_page(request: Request) -> Response:
    """``/metrics``: the broker's statistics, asked afresh, in the Prometheus text format."""
    try:
        stats = await dashboard_of(request).stats()
    except ConveyorError:
        stats = None
    # Rendering is prometheus-client's own (synchronous) work, seconds for thousands of
    # queues: in a thread, so that the pages and their live streams go on meanwhile.
    text = await asyncio.to_thread(metrics.render, stats)
    return Response(text, media_type=metrics.CONTENT_TYPE)
