"""Flows: a parent with 10,000 children, end to end, against the same jobs added plainly.

One broker (fsync everysec), W worker processes of concurrency C on the children's queue and one
worker process on the parents' queue (``examples.tasks:noop`` both). Rounds alternate:

- plain: ``add_bulk`` of ``--children`` + 1 jobs to the children's queue, timed until the
  broker counts all of them completed;
- flow: ``add_flow`` of one parent (on its own queue) with ``--children`` children, timed until
  the parent completed (``wait``): every child ran, then the parent.

Reports each variant's median end-to-end throughput (jobs a second, the parent counted) and the
flow's share of the plain figure (target: at least 50 %), and the time to read the 10,000
children's results back (``children_results``). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from measure import check, print_checks, rounded, wait_finished  # noqa: E402

from conveyor.client import Client, Flow  # noqa: E402
from examples.processes import BrokerProcess, WorkerProcesses, wait_for_workers  # noqa: E402

TARGET_SHARE = 0.5
"""The least share of the plain throughput a flow must reach."""
CHILDREN = "flow-children"
PARENTS = "flow-parents"


async def plain_round(client: Client, jobs: int, done_before: int) -> float:
    start = time.perf_counter()
    await client.add_bulk(CHILDREN, [{}] * jobs)
    end = await wait_finished(client, CHILDREN, done_before + jobs)
    return jobs / (end - start)


async def flow_round(client: Client, children: int) -> tuple[float, float]:
    start = time.perf_counter()
    added = await client.add_flow(Flow(PARENTS, {}, children=[Flow(CHILDREN, {})] * children))
    await client.wait(added.id, timeout=600)
    end = time.perf_counter()
    results = await client.children_results(added.id)
    read = time.perf_counter() - end
    assert len(results) == children, len(results)
    return (children + 1) / (end - start), read


async def measure(url: str, children: int, rounds: int) -> dict[str, Any]:
    plain: list[float] = []
    flows: list[float] = []
    reads: list[float] = []
    async with Client(url, timeout=120) as client:
        await wait_for_workers(client, CHILDREN, 1, timeout=60)
        await wait_for_workers(client, PARENTS, 1, timeout=60)
        await plain_round(client, 1_000, 0)  # warm up
        done = 1_000
        for _ in range(rounds):
            plain.append(await plain_round(client, children + 1, done))
            done += children + 1
            throughput, read = await flow_round(client, children)
            done += children
            flows.append(throughput)
            reads.append(read)
    return {
        "children": children, "rounds": rounds,
        "plain_jobs_per_s": statistics.median(plain),
        "flow_jobs_per_s": statistics.median(flows),
        "share": statistics.median(flows) / statistics.median(plain),
        "plain_rounds": plain, "flow_rounds": flows,
        "children_results_read_ms": statistics.median(reads) * 1000,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--children", type=int, default=10_000,
                        help="children of the flow (default: 10000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each (default: 5)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    parser.add_argument("--concurrency", type=int, default=50,
                        help="concurrency of each worker (default: 50)")
    args = parser.parse_args()
    broker = BrokerProcess("--fsync", "everysec")
    pool = WorkerProcesses("examples.tasks:noop", CHILDREN, broker.url, processes=args.workers,
                           concurrency=args.concurrency)
    parents = WorkerProcesses("examples.tasks:noop", PARENTS, broker.url, processes=1)
    try:
        figures = await measure(broker.url, args.children, args.rounds)
    finally:
        parents.stop()
        pool.stop()
        broker.stop()
    figures["checks"] = {"share": check(figures["share"], ">=", TARGET_SHARE)}
    print(f"flows: 1 parent + {args.children:,} children vs {args.children + 1:,} plain jobs, "
          f"{args.workers} workers x concurrency {args.concurrency}, fsync everysec, "
          f"{args.rounds} rounds each, medians")
    print(f"  plain {figures['plain_jobs_per_s']:,.0f} jobs/s   flow "
          f"{figures['flow_jobs_per_s']:,.0f} jobs/s   share {figures['share']:.1%}")
    print(f"  reading the {args.children:,} children's results: "
          f"{figures['children_results_read_ms']:.1f} ms")
    print_checks(figures["checks"])
    print(json.dumps(rounded(figures)))


if __name__ == "__main__":
    asyncio.run(main())
