"""The Grafana dashboard in docs/ asks only for metrics that ``/metrics`` serves: every series
its panels query is scraped, after a workload, from a dashboard of a broker with a log."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from dashboard_support import serve
from processes import running
from prometheus_client.parser import text_string_to_metric_families

from conveyor.broker import Broker
from conveyor.client import Client
from conveyor.worker import Job, Worker

GRAFANA = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
METRIC = re.compile(r"\bconveyor_[a-z_]+")


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def test_the_grafana_dashboard_is_importable_json() -> None:
    dashboard = json.loads(GRAFANA.read_text())
    panels = _panels(dashboard)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "queue"} <= variables
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert METRIC.search(target["expr"]), (panel["title"], target["expr"])


async def test_every_series_the_grafana_dashboard_queries_is_scraped(
        make_broker: Callable[..., Awaitable[Broker]], tmp_path: Path) -> None:
    broker = await make_broker(data_dir=tmp_path / "data", fsync="always")
    url = f"127.0.0.1:{broker.port}"

    async def handle(job: Job) -> None:
        if job.attempt == 1:
            raise RuntimeError("first try fails")

    async with Client(url) as client, running(Worker("mail", handle, url=url, concurrency=2)):
        ids = await client.add_bulk("mail", [1, 2, 3], attempts=2)
        for job_id in ids:
            await client.wait(job_id, timeout=30)
        await client.add("reports", 1, delay=600)
        await client.pause("reports")
        async with serve(url) as dashboard:
            response = await dashboard.http.get("/metrics")
    assert response.status_code == 200
    scraped = {sample.name for family in text_string_to_metric_families(response.text)
               for sample in family.samples}
    queried = {name for panel in _panels(json.loads(GRAFANA.read_text()))
               for target in panel["targets"] for name in METRIC.findall(target["expr"])}
    assert queried, "the dashboard queries no conveyor metric"
    assert queried <= scraped, sorted(queried - scraped)
