"""The actions a page's buttons send (the confirmation dialog is the page's: the POST itself is
tested here): each changes the broker's state and answers JSON saying what it did, or why not."""

from __future__ import annotations

import asyncio

from dashboard_support import Served
from processes import eventually, running

from conveyor.client import Client, JobState
from conveyor.worker import Job, Worker


async def _fail(job: Job) -> None:
    raise ValueError("no")


async def test_pause_and_resume_a_queue(url: str, dashboard: Served) -> None:
    async with Client(url) as client:
        await client.add("emails", 1)
        response = await dashboard.post("/queues/emails/pause")
        assert response.status_code == 200
        assert response.json() == {"ok": True, "message": "Queue emails paused."}
        assert [q.paused for q in await client.queues() if q.name == "emails"] == [True]
        page = await dashboard.page("/queues/emails")
        assert page.find(id="paused-state").text == "paused"
        assert "hidden" in page.find("button", id="pause").attrs
        response = await dashboard.post("/queues/emails/resume")
        assert response.json()["ok"]
        assert [q.paused for q in await client.queues() if q.name == "emails"] == [False]


async def test_a_queue_whose_name_holds_a_slash_is_steered_by_its_own_url(
        url: str, dashboard: Served) -> None:
    async with Client(url) as client:
        await client.add("reports/daily", 1)
        await client.add("reports/daily", 2, delay=600)
        response = await dashboard.post("/queues/reports%2Fdaily/drain")
        assert response.json() == {"ok": True, "message": "2 waiting or delayed jobs removed."}
        counts = await client.counts("reports/daily")
        assert (counts["waiting"], counts["delayed"]) == (0, 0)


async def test_retry_failed_jobs_of_a_queue_and_one_job(url: str, dashboard: Served) -> None:
    async with Client(url) as client:
        async with running(Worker("flaky", _fail, url=url, concurrency=3)):
            ids = await client.add_bulk("flaky", [1, 2, 3])
            await eventually(lambda: _count(client, "flaky", "failed", 3), "three failed")
        response = await dashboard.post(f"/jobs/{ids[0]}/retry")
        assert response.json() == {"ok": True, "message": f"Job {ids[0]} put back in line."}
        assert (await client.get_job(ids[0])).state is JobState.WAITING  # type: ignore[union-attr]
        # A job that is not failed: nothing to retry.
        response = await dashboard.post(f"/jobs/{ids[0]}/retry")
        assert response.status_code == 409 and not response.json()["ok"]
        response = await dashboard.post("/queues/flaky/retry-failed")
        assert response.json() == {"ok": True, "message": "2 failed jobs put back in line."}
        assert (await client.counts("flaky"))["waiting"] == 3


async def test_promote_and_remove_a_job(url: str, dashboard: Served) -> None:
    async with Client(url) as client:
        later = await client.add("q", 1, delay=600)
        doomed = await client.add("q", 2)
        response = await dashboard.post(f"/jobs/{later}/promote")
        assert response.json()["ok"]
        assert (await client.get_job(later)).state is JobState.WAITING  # type: ignore[union-attr]
        response = await dashboard.post(f"/jobs/{later}/promote")
        assert response.status_code == 409
        assert "INVALID_STATE" in response.json()["message"]
        response = await dashboard.post(f"/jobs/{doomed}/remove")
        assert response.json() == {"ok": True, "message": f"Job {doomed} removed."}
        assert await client.get_job(doomed) is None
        response = await dashboard.post(f"/jobs/{doomed}/remove")
        assert response.status_code == 404 and not response.json()["ok"]


async def test_an_active_job_cannot_be_removed(url: str, dashboard: Served) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def hold(job: Job) -> None:
        started.set()
        await release.wait()

    async with Client(url) as client, running(Worker("slow", hold, url=url)):
        job_id = await client.add("slow", 1)
        await started.wait()
        response = await dashboard.post(f"/jobs/{job_id}/remove")
        release.set()
    assert response.status_code == 409
    assert "INVALID_STATE" in response.json()["message"]


async def test_clean_removes_finished_jobs_of_one_state(url: str, dashboard: Served) -> None:
    async with Client(url) as client:
        async with running(Worker("mixed", lambda job: job.data, url=url)):
            ids = await client.add_bulk("mixed", [1, 2])
            for job_id in ids:
                await client.wait(job_id, timeout=30)
        response = await dashboard.post("/queues/mixed/clean",
                                        {"state": "completed", "older_than": 3600})
        assert response.json() == {"ok": True, "message": "0 completed jobs removed."}
        response = await dashboard.post("/queues/mixed/clean",
                                        {"state": "completed", "older_than": "0"})
        assert response.json() == {"ok": True, "message": "2 completed jobs removed."}
        assert [await client.get_job(job_id) for job_id in ids] == [None, None]
        for bad in ({"state": "waiting"}, {"state": "failed", "older_than": -1}, {}):
            response = await dashboard.post("/queues/mixed/clean", bad)
            assert response.status_code == 400 and not response.json()["ok"], bad


async def test_an_unknown_action_or_a_body_that_is_not_json_is_refused(
        dashboard: Served) -> None:
    response = await dashboard.post("/queues/q/explode")
    assert response.status_code == 404
    response = await dashboard.http.post("/queues/q/pause", content=b"{nope",
                                         headers={"X-Conveyor-CSRF": "test-csrf-token"})
    assert response.status_code == 400 and response.json()["message"] == "the body is not JSON"
    # Changing anything takes a POST.
    assert (await dashboard.http.get("/queues/q/pause")).status_code == 200  # the queue page
    response = await dashboard.http.get("/jobs/1/remove")
    assert response.status_code in (404, 405)
    response = await dashboard.post(f"/jobs/{1 << 63}/remove")
    assert response.status_code == 400 and "2**63" in response.json()["message"]


async def _count(client: Client, queue: str, state: str, wanted: int) -> bool:
    return (await client.counts(queue))[state] == wanted
