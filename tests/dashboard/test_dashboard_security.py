"""What keeps others out: a POST without the page's CSRF token changes nothing, a request under
another Host name (DNS rebinding) is refused, and a dashboard logged in as a restricted broker
user shows and steers only what that user may."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

import pytest
from dashboard_support import Served, serve, users_file
from processes import running
from prometheus_client.parser import text_string_to_metric_families

from conveyor.broker import Broker
from conveyor.client import Client, JobFailed
from conveyor.worker import Job, Worker


async def test_a_post_without_the_csrf_token_changes_nothing(url: str, dashboard: Served) -> None:
    async with Client(url) as client:
        await client.add("emails", 1)
        for token in (None, "", "not-the-token"):
            response = await dashboard.post("/queues/emails/drain", token=token)
            assert response.status_code == 403
            assert "X-Conveyor-CSRF" in response.json()["message"]
        assert (await client.counts("emails"))["waiting"] == 1


async def test_a_request_for_another_host_name_is_refused(dashboard: Served) -> None:
    for host in ("evil.example", f"evil.example:{dashboard.port}", "127.0.0.1:1"):
        response = await dashboard.http.get("/", headers={"Host": host})
        assert response.status_code == 400, host
        response = await dashboard.http.get("/metrics", headers={"Host": host})
        assert response.status_code == 400, host
    for host in (f"127.0.0.1:{dashboard.port}", f"localhost:{dashboard.port}"):
        response = await dashboard.http.get("/", headers={"Host": host})
        assert response.status_code == 200, host
        assert response.headers["x-frame-options"] == "DENY"
        assert "script-src 'self'" in response.headers["content-security-policy"]


async def test_a_restricted_user_sees_and_steers_only_its_queues(
        make_broker: Callable[..., Awaitable[Broker]], tmp_path: Path) -> None:
    users = users_file(tmp_path / "users.toml", {
        "root": {"password": "root-secret", "produce": ["*"], "read": ["*"], "admin": ["*"]},
        "team": {"password": "team-secret", "read": ["team-*"], "admin": ["team-*"]},
    })
    broker = await make_broker(users=users)
    root = f"conveyor://root:root-secret@127.0.0.1:{broker.port}"
    async with Client(root) as client:
        ours = await client.add("team-mail", 1)
        theirs = await client.add("payroll", {"salary": 1}, id="payroll-key")
    async with serve(f"conveyor://team:team-secret@127.0.0.1:{broker.port}") as dashboard:
        overview = await dashboard.page("/")
        assert [row.attrs["data-queue"] for row in overview.find_all("tr")
                if "data-queue" in row.attrs] == ["team-mail"]
        await dashboard.page("/queues/team-mail")
        await dashboard.page(f"/jobs/{ours}")
        forbidden = await dashboard.page("/queues/payroll", status=403)
        assert "FORBIDDEN" in forbidden.find(id="error-message").text
        await dashboard.page(f"/jobs/{theirs}", status=403)
        response = await dashboard.post("/queues/payroll/drain")
        assert response.status_code == 403
        assert "FORBIDDEN" in response.json()["message"]
        response = await dashboard.post(f"/jobs/{theirs}/remove")
        assert response.status_code == 403
        # A key of another queue's job finds nothing (and says nothing of that queue).
        response = await dashboard.http.get("/find", params={"q": "payroll-key"})
        assert response.headers["location"] == "/?missing=payroll-key"
        metrics = (await dashboard.http.get("/metrics")).text
        assert "payroll" not in metrics
        queues = {sample.labels["queue"]
                  for family in text_string_to_metric_families(metrics)
                  for sample in family.samples if "queue" in sample.labels}
        assert queues == {"team-mail"}
        assert (await dashboard.post("/queues/team-mail/pause")).status_code == 200
    async with Client(root) as client:
        assert await client.get_job(theirs) is not None
        assert {q.name: q.paused for q in await client.queues()} == {"team-mail": True,
                                                                     "payroll": False}


HOSTILE_QUEUE = "<img src=x onerror=alert(1)>"
"""Everything in the pages that a producer or a worker chose is markup-shaped here."""


async def test_names_data_and_errors_that_look_like_markup_are_shown_as_text(
        url: str, dashboard: Served) -> None:
    def boom(job: Job) -> None:
        raise RuntimeError("<script>alert(3)</script>")

    worker = Worker(HOSTILE_QUEUE, boom, url=url, name="<svg onload=alert(4)>")
    async with Client(url) as client, running(worker):
        job_id = await client.add(HOSTILE_QUEUE, {"note": "</pre><script>alert(2)</script>"},
                                  name='"><script>alert(5)</script>', id="<b>key</b>")
        with pytest.raises(JobFailed):
            await client.wait(job_id, timeout=30)
        queue_path = "/queues/" + quote(HOSTILE_QUEUE, safe="")
        pages = {path: (await dashboard.http.get(path)) for path in (
            "/", queue_path, f"{queue_path}?state=failed", f"/jobs/{job_id}", "/workers")}
        found = await dashboard.http.get("/find?q=" + quote("<b>key</b>"))
    assert found.status_code == 303 and found.headers["location"] == f"/jobs/{job_id}"
    for path, response in pages.items():
        assert response.status_code == 200, (path, response.status_code)
        for raw in ("<img src=x", "<script>alert", "<svg onload", "<b>key"):
            assert raw not in response.text, (path, raw)
    # ...and the text is there, escaped, where the page shows it.
    job_page = pages[f"/jobs/{job_id}"].text
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in job_page
    assert "&lt;b&gt;key&lt;/b&gt;" in job_page
    assert "&lt;svg onload=alert(4)&gt;" in pages["/workers"].text
