"""Security's cost: end-to-end throughput and add-to-start latency, plaintext beside TLS and
authentication.

Each variant is a way for producers and workers to reach the broker: ``plain`` (TCP on
loopback), ``tls`` (``--tls-cert``/``--tls-key``; clients and workers connect to a
``conveyors://`` URL and verify the broker's certificate, a CA made by ``trustme`` for the run),
``auth`` (``--users``: every connection logs in with SCRAM-SHA-256 and every request is checked
against the user's permissions) and ``tls+auth`` (both).
Rounds alternate between the variants, each round starting one variant later (plain, tls,
auth, tls+auth; then tls, auth, tls+auth, plain; ...), so that a machine getting
faster or slower during the run weighs on both alike. Each round, on a fresh broker (fsync
everysec):

end to end
    ``throughput.py``'s: W worker processes of concurrency C (``examples.tasks:noop``)
    subscribed, one ``add_bulk`` of ``--jobs`` jobs, timed until the broker counts them all
    completed.
add to start
    ``latency.py``'s low-rate case: one worker of concurrency 1 (``examples.tasks:sleep``), one
    job at a time, ``--latency-jobs`` timed jobs; the handler's start time minus the time before
    ``add``.

Prints the figures of every round, the median per variant, and TLS's cost against plaintext;
then one JSON line. Target: TLS costs under 30 % of end-to-end throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trustme  # noqa: E402
from latency import measure as measure_latency  # noqa: E402
from measure import check, rounded  # noqa: E402
from throughput import end_to_end  # noqa: E402

from conveyor.broker import Permission, User, Users, make_secret, write_users  # noqa: E402
from conveyor.client import Client  # noqa: E402
from examples.processes import BrokerProcess, WorkerProcesses, wait_for_workers  # noqa: E402

TARGET_TLS_COST = 0.30
"""Most of the plaintext end-to-end throughput that TLS may cost (a fraction)."""
LATENCY_QUEUE = "latency"
BENCH_SECRET = "bench-secret"
"""The secret of the bench's one user (every permission on every queue)."""


@dataclass(frozen=True)
class Variant:
    """A way to reach the broker: its extra options, and the URL clients and workers use."""

    name: str
    broker_args: list[str] = field(default_factory=list)
    url: Callable[[str], str] = lambda address: address
    """The URL for the broker listening on ``HOST:PORT``."""


def variants(directory: Path) -> list[Variant]:
    """Every variant measured; the TLS one trusts a CA made for this run."""
    ca = trustme.CA()
    ca_file, cert_file, key_file = (directory / name for name in ("ca.pem", "broker.pem",
                                                                  "broker.key"))
    ca.cert_pem.write_to_path(str(ca_file))
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    # The producer here and the worker processes read the CA from the environment.
    os.environ["CONVEYOR_TLS_CA"] = str(ca_file)
    users_file = directory / "users.toml"
    everything = {permission: ("*",) for permission in Permission}
    write_users(users_file, Users({"bench": User("bench", make_secret(BENCH_SECRET),
                                                 rules=everything)}))
    tls = ["--tls-cert", str(cert_file), "--tls-key", str(key_file)]
    login = ["--users", str(users_file)]
    return [
        Variant("plain"),
        Variant("tls", tls, lambda address: f"conveyors://{address}"),
        Variant("auth", login, lambda address: f"conveyor://bench:{BENCH_SECRET}@{address}"),
        Variant("tls+auth", tls + login,
                lambda address: f"conveyors://bench:{BENCH_SECRET}@{address}"),
    ]


async def run_round(variant: Variant, args: argparse.Namespace) -> dict[str, Any]:
    broker = BrokerProcess("--fsync", "everysec", *variant.broker_args)
    broker.url = variant.url(broker.url)
    try:
        async with Client(broker.url, timeout=120) as client:
            e2e = await end_to_end(client, broker, args.jobs, args.workers, args.concurrency)
            pool = WorkerProcesses("examples.tasks:sleep", LATENCY_QUEUE, broker.url,
                                   processes=1)
            try:
                await wait_for_workers(client, LATENCY_QUEUE, 1, timeout=60)
                latency = await measure_latency(client, LATENCY_QUEUE, args.latency_jobs,
                                                args.warmup, args.interval)
            finally:
                pool.stop()
    finally:
        broker.stop()
    return {"variant": variant.name, "end_to_end_jobs_per_s": e2e["jobs_per_s"],
            "broker_us_per_job": e2e["broker_us_per_job"],
            "start_p50_ms": latency["add_to_start"]["p50_ms"],
            "start_p99_ms": latency["add_to_start"]["p99_ms"]}


def summary(rows: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, float]]:
    """The median of each figure over a variant's rounds."""
    keys = ["end_to_end_jobs_per_s", "broker_us_per_job", "start_p50_ms", "start_p99_ms"]
    return {name: {key: statistics.median(row[key] for row in rows if row["variant"] == name)
                   for key in keys} for name in names}


def print_report(figures: dict[str, Any]) -> None:
    print(f"security: {figures['jobs']:,} no-op jobs end to end ({figures['workers']} workers x "
          f"concurrency {figures['concurrency']}), {figures['latency_jobs']:,} single adds for "
          "add to start; fsync everysec")
    header = (f"{'round':>5} {'variant':>8} {'end to end jobs/s':>18} {'broker us/job':>14} "
              f"{'start p50 ms':>13} {'start p99 ms':>13}")
    print(header)
    for number, row in enumerate(figures["rounds"], 1):
        print(f"{number:>5} {row['variant']:>8} {row['end_to_end_jobs_per_s']:>18,.0f} "
              f"{row['broker_us_per_job']:>14.1f} {row['start_p50_ms']:>13.3f} "
              f"{row['start_p99_ms']:>13.3f}")
    print()
    print("median over the rounds")
    print(header)
    for name, row in figures["medians"].items():
        print(f"{'':>5} {name:>8} {row['end_to_end_jobs_per_s']:>18,.0f} "
              f"{row['broker_us_per_job']:>14.1f} {row['start_p50_ms']:>13.3f} "
              f"{row['start_p99_ms']:>13.3f}")
    print()
    for name, result in figures["checks"].items():
        verdict = "met" if result["met"] else "MISSED"
        print(f"target {name}: {result['value']:.1%} < {result['target']:.0%} {verdict}")
    print(json.dumps(rounded(figures)))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000,
                        help="end-to-end jobs per round (default: 100000)")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes for end to end (default: 2)")
    parser.add_argument("--concurrency", type=int, default=50,
                        help="concurrency of each of those workers (default: 50)")
    parser.add_argument("--latency-jobs", type=int, default=2_000,
                        help="timed single adds per round (default: 2000)")
    parser.add_argument("--warmup", type=int, default=200,
                        help="untimed single adds before those (default: 200)")
    parser.add_argument("--interval", type=float, default=0.001, metavar="SECONDS",
                        help="pause after each single add's result (default: 0.001)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds per variant, alternating (default: 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="conveyor-pki-") as directory:
        measured = variants(Path(directory))
        # Each round starts one variant later, so that no variant always runs right after the
        # same one (a fixed order showed a cost for authentication that was its place in it).
        rows = [await run_round(measured[(start + step) % len(measured)], args)
                for start in range(args.rounds) for step in range(len(measured))]
    medians = summary(rows, [variant.name for variant in measured])
    cost = 1 - (medians["tls"]["end_to_end_jobs_per_s"]
                / medians["plain"]["end_to_end_jobs_per_s"])
    figures: dict[str, Any] = {
        "bench": "security", "jobs": args.jobs, "workers": args.workers,
        "concurrency": args.concurrency, "latency_jobs": args.latency_jobs, "rounds": rows,
        "medians": medians,
        "checks": {"tls_end_to_end_cost": check(cost, "<", TARGET_TLS_COST)},
    }
    print_report(figures)


if __name__ == "__main__":
    asyncio.run(main())
