"""The pages as a browser gets them from the server (before any script runs): each shows the
broker's figures where the DOM contract says, and links where a user would follow."""

from __future__ import annotations

import os
import socket

import pytest
from dashboard_support import TOKEN, Served, parse
from processes import eventually, running

from conveyor.client import Client, Flow, JobFailed
from conveyor.worker import Job, Worker


async def test_the_overview_lists_every_queue_with_its_counts(
        url: str, dashboard: Served) -> None:
    async with Client(url) as client:
        await client.add_bulk("emails", [{"to": n} for n in range(3)])
        await client.add("emails", {"later": True}, delay=600)
        await client.add("reports/monthly", 1)
        await client.pause("reports/monthly")
        page = await dashboard.page("/")
    assert page.find("meta", name="csrf-token").attrs["content"] == TOKEN
    table = page.find("table", id="queues")
    emails = table.find("tr", data_queue="emails")
    counts = {state: emails.find("td", data_count=state).text
              for state in ("waiting", "active", "delayed", "completed", "failed", "workers")}
    assert counts == {"waiting": "3", "active": "0", "delayed": "1", "completed": "0",
                      "failed": "0", "workers": "0"}
    assert emails.find("td", data_field="paused").text == "running"
    assert emails.find("svg").attrs["class"] == "sparkline"
    assert emails.find("a").attrs["href"] == "/queues/emails"
    reports = table.find("tr", data_queue="reports/monthly")
    assert reports.find("td", data_field="paused").text == "paused"
    # A name with "/" stays one path segment.
    assert reports.find("a").attrs["href"] == "/queues/reports%2Fmonthly"
    assert page.find("section", id="broker").find("b", data_broker="queues").text == "2"


async def test_the_queue_page_lists_jobs_by_state_in_pages_of_fifty(
        url: str, dashboard: Served) -> None:
    async with Client(url) as client:
        ids = await client.add_bulk("bulk", list(range(120)))
        await client.add("bulk", "soon", delay=600)
    first = await dashboard.page("/queues/bulk")
    assert first.find(id="paused-state").text == "running"
    assert first.find(data_count="waiting").text == "120"
    assert first.find("a", data_state="delayed").find(data_count="delayed").text == "1"
    rows = first.find("table", id="jobs").find_all("tr", data_job="")  # none without an id
    assert not rows
    listed = [int(row.attrs["data-job"]) for row in first.find("table", id="jobs").find_all("tr")
              if "data-job" in row.attrs]
    assert listed == ids[:50]
    row = first.find("tr", data_job=str(ids[0]))
    assert row.find("a").attrs["href"] == f"/jobs/{ids[0]}"
    assert "1–50 of 120" in first.find(id="page-info").text
    assert "href" not in first.find(id="prev-page").attrs
    third = await dashboard.page("/queues/bulk" + first.find(id="next-page").attrs["href"]
                                 .replace("page=2", "page=3"))
    listed = [int(row.attrs["data-job"]) for row in third.find_all("tr")
              if "data-job" in row.attrs]
    assert listed == ids[100:]
    assert "href" not in third.find(id="next-page").attrs
    assert third.find(id="prev-page").attrs["href"] == "?state=waiting&page=2"
    delayed = await dashboard.page("/queues/bulk?state=delayed")
    assert [row.attrs["data-job"] for row in delayed.find_all("tr") if "data-job" in row.attrs] \
        == [str(ids[-1] + 1)]
    for button in ("pause", "resume", "retry-failed", "drain", "clean"):
        delayed.find("button", id=button)
    assert delayed.find("form", id="find").find("input", name="q")


async def test_the_job_page_shows_a_failed_job_with_its_traceback(
        url: str, dashboard: Served) -> None:
    def explode(job: Job) -> None:
        raise RuntimeError(f"cannot send to {job.data['to']}")

    async with Client(url) as client, running(Worker("mail", explode, url=url)):
        job_id = await client.add("mail", {"to": "nobody@example.com"}, name="send",
                                  attempts=2, id="mail-42")
        with pytest.raises(JobFailed):
            await client.wait(job_id, timeout=30)
    page = await dashboard.page(f"/jobs/{job_id}")
    assert page.find(id="job-state").text == "failed"
    assert page.find(id="job-name").text == "send"
    assert '"to": "nobody@example.com"' in page.find(id="job-data").text
    assert page.find(id="job-attempts").text == "2/2"
    assert page.find(id="job-error-type").text == "RuntimeError"
    assert page.find(id="job-error-message").text == "cannot send to nobody@example.com"
    traceback = page.find("pre", id="job-traceback").text
    assert "Traceback (most recent call last)" in traceback and "explode" in traceback
    assert "hidden" not in page.find("button", id="retry").attrs
    assert "hidden" in page.find("button", id="promote").attrs
    assert [li.find("b").text for li in page.find("ol", id="timeline").find_all("li")] \
        == ["created", "failed"]


async def test_the_job_page_shows_a_result_and_a_missing_job_is_404(
        url: str, dashboard: Served) -> None:
    async with Client(url) as client, running(Worker("calc", lambda job: {"sum": sum(job.data)},
                                                     url=url)):
        job_id = await client.add("calc", [1, 2, 3])
        assert await client.wait(job_id, timeout=30) == {"sum": 6}
    page = await dashboard.page(f"/jobs/{job_id}")
    assert page.find(id="job-state").text == "completed"
    assert '"sum": 6' in page.find(id="job-result").text
    assert "hidden" in page.find("button", id="retry").attrs
    await dashboard.page("/jobs/987654", status=404)


async def test_find_goes_to_the_job_by_id_then_by_key_or_back_saying_so(
        url: str, dashboard: Served) -> None:
    async with Client(url) as client:
        by_key = await client.add("q", 1, id="order-7")
        by_id = await client.add("q", 2)
    for query, job_id in ((str(by_id), by_id), ("order-7", by_key)):
        response = await dashboard.http.get("/find", params={"q": query, "from": "/queues/q"})
        assert response.status_code == 303
        assert response.headers["location"] == f"/jobs/{job_id}"
    for odd in ("²", str(1 << 64)):  # a digit that is not 0-9, an id past the last
        response = await dashboard.http.get("/find", params={"q": odd})
        assert response.status_code == 303
    response = await dashboard.http.get("/find", params={"q": "nope", "from": "/queues/q"})
    assert response.headers["location"] == "/queues/q?missing=nope"
    page = await dashboard.page(response.headers["location"])
    assert "No job with the id or key 'nope'" in page.find(id="flash").text
    # Only a page of the dashboard: never another site.
    response = await dashboard.http.get("/find", params={"q": "nope", "from": "//evil.example/"})
    assert response.headers["location"] == "/?missing=nope"


async def test_the_workers_page_lists_each_worker_connection(
        url: str, dashboard: Served) -> None:
    worker = Worker("thumbs", lambda job: None, url=url, concurrency=3, name="thumbnailer")
    async with running(worker), Client(url) as client:
        await eventually(lambda: _subscribed(client, "thumbs"), "the worker subscribed")
        page = await dashboard.page("/workers")
    table = page.find("table", id="workers")
    (row,) = [row for row in table.find_all("tr") if "data-worker" in row.attrs]
    assert row.find(data_field="name").text == "thumbnailer"
    assert row.find(data_field="host").text == socket.gethostname()
    assert row.find(data_field="pid").text == str(os.getpid())
    assert "thumbs" in row.find(data_field="queues").text
    assert row.find(data_field="window").text == "3"
    assert row.find(data_field="address").text.startswith("127.0.0.1:")


async def _subscribed(client: Client, queue: str) -> bool:
    return (await client.counts(queue))["workers"] == 1


async def test_static_assets_are_served_locally(dashboard: Served) -> None:
    for path, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        response = await dashboard.http.get(path)
        assert response.status_code == 200 and kind in response.headers["content-type"]
    page = await dashboard.page("/")
    sources = [node.attrs.get("src") or node.attrs.get("href") or ""
               for node in page.find_all() if node.tag in ("script", "link", "img")]
    assert sources and all(source.startswith(("/", "http://127.0.0.1")) for source in sources)
    assert "https://" not in (await dashboard.http.get("/")).text


async def test_numbers_past_the_wire_range_do_not_break_the_broker_connection(
        url: str, dashboard: Served) -> None:
    # The client cannot encode an offset or an id past 64 bits: sent anyway, it would end the
    # dashboard's one broker connection, and every page with it.
    async with Client(url) as client:
        await client.add("q", 1)
    for page in (str(10**30), "-3", "x"):
        response = await dashboard.http.get("/queues/q", params={"page": page})
        assert response.status_code == 200, page
    response = await dashboard.http.get(f"/jobs/{10**30}/events")
    assert response.status_code == 404
    overview = await dashboard.page("/")
    assert overview.find("tr", data_queue="q").find(data_count="waiting").text == "1"


async def test_a_huge_payload_is_shown_cut_with_a_note(url: str, dashboard: Served) -> None:
    async with Client(url) as client:
        job_id = await client.add("big", {"blob": "x" * 600_000})
    response = await dashboard.http.get(f"/jobs/{job_id}")
    assert len(response.content) < 200_000  # the page, not the payload, sets its size
    data = parse(response.text).find(id="job-data").text
    assert data.startswith('{ "blob": "xxx')
    assert data.endswith("more characters not shown")


async def test_the_queue_page_shows_the_queues_limits(url: str, dashboard: Served) -> None:
    async with Client(url) as client:
        await client.add("calls", 1)
        assert (await dashboard.page("/queues/calls")).find(id="limits").text == "none"
        await client.set_limits("calls", rate=1000, per=1.0, concurrency=5)
        page = await dashboard.page("/queues/calls")
        assert page.find(id="limits").text == "at most 1,000 starts per 1 s; at most 5 active"
        await client.clear_limits("calls")
        assert (await dashboard.page("/queues/calls")).find(id="limits").text == "none"


async def test_the_queue_page_counts_and_lists_parents_waiting_for_their_children(
        url: str, dashboard: Served) -> None:
    async with Client(url) as client:
        added = await client.add_flow(Flow("reports", "monthly", children=[
            Flow("pages", n) for n in range(3)]))
    page = await dashboard.page("/queues/reports?state=waiting-children")
    assert page.find(data_count="waiting-children").text == "1"
    listed = [int(row.attrs["data-job"]) for row in page.find("table", id="jobs").find_all("tr")
              if "data-job" in row.attrs]
    assert listed == [added.id]
    metrics = (await dashboard.http.get("/metrics")).text
    assert 'conveyor_queue_jobs{queue="reports",state="waiting-children"} 1.0' in metrics


async def test_the_queue_page_lists_the_queues_schedules(url: str, dashboard: Served) -> None:
    async with Client(url) as client:
        await client.add("reports", 0)
        await client.set_schedule("nightly", "reports", {}, cron="0 2 * * *",
                                  tz="Europe/Paris", name="<b>rollup</b>")
        await client.set_schedule("often", "reports", {}, every=90)
        await client.set_schedule("elsewhere", "emails", {}, every=60)
    page = await dashboard.page("/queues/reports")
    rows = page.find("table", id="schedules").find_all("tr", data_schedule="nightly")
    assert len(rows) == 1
    assert "cron 0 2 * * * (Europe/Paris)" in rows[0].text
    assert "<b>rollup</b>" in rows[0].text  # shown as text, not markup
    often = page.find("tr", data_schedule="often")
    assert "every 1 min 30 s" in often.text
    assert not page.find_all("tr", data_schedule="elsewhere")
    empty = await dashboard.page("/queues/emails")
    assert not empty.find_all("table", id="schedules")  # a queue the broker does not know yet
