"""Adding a JSONL file: ``conveyor add QUEUE --file PATH``, end to end, and its memory.

For each size in ``--lines`` (default 100,000 and 1,000,000), in a fresh temporary directory:

1. write a JSONL file of that many small payloads, one a line
   (``{"user": N, "email": "uN@example.com"}``, about 48 bytes a line);
2. start a broker (``python -m conveyor.broker --port 0 --data-dir TMP --fsync everysec``,
   ``--fsync`` to change it);
3. run ``python -m conveyor.cli add bench --file PATH --json --url ...`` on it, as an operator
   would, and wait for it to exit;
4. check that the broker counts every line as a waiting job, then stop the broker.

Reports, per size: jobs/s end to end (lines over the CLI process's wall time, from its start to its
exit, interpreter start-up included), the CLI's own figure (from its summary line: first read to
last acknowledgement), the wall time, the CLI's peak resident memory (``ru_maxrss`` of that one
child, from ``wait4``), and CPU per job of the CLI and of the broker (utime + stime, from
``wait4`` and ``/proc``). Memory stays flat when the peak RSS barely moves from one size to the
next: the file is streamed, never held whole.

Prints a table and one JSON line with every figure and the targets: at least 100,000 jobs/s end to
end for 1,000,000 lines (fsync everysec), and a peak RSS for the largest size at most 1.25 times
that for the smallest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from measure import CpuMeter, check, descendants, rounded  # noqa: E402

from conveyor.client import SyncClient  # noqa: E402
from examples.processes import ROOT, BrokerProcess  # noqa: E402

TARGET_JOBS_S = 100_000
"""jobs/s end to end, 1,000,000 lines, fsync everysec, 2 cores."""
TARGET_RSS_GROWTH = 1.25
"""Peak RSS of the CLI for the largest size over that for the smallest, at most."""
QUEUE = "bench"
CHUNK_LINES = 100_000
"""Lines formatted at a time while writing the file."""


def write_jsonl(path: Path, lines: int) -> int:
    """Write ``lines`` small JSON payloads, one a line; return the file's size in bytes."""
    with path.open("wb") as out:
        for start in range(0, lines, CHUNK_LINES):
            stop = min(start + CHUNK_LINES, lines)
            out.write("".join(f'{{"user": {n}, "email": "u{n}@example.com"}}\n'
                              for n in range(start, stop)).encode())
    return path.stat().st_size


def run_cli(path: Path, url: str) -> tuple[dict[str, Any], float, Any]:
    """Run ``conveyor add --file`` to its exit; return its JSON summary, its wall time, and its
    resource usage."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli", "add", QUEUE, "--file", str(path), "--json",
         "--url", url],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # wait4 reports this one child's usage (getrusage(RUSAGE_CHILDREN) would mix in brokers).
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.stdout is not None and process.stderr is not None
    out, err = process.stdout.read(), process.stderr.read()
    process.stdout.close()
    process.stderr.close()
    if process.returncode != 0:
        raise RuntimeError(f"conveyor add exited {process.returncode}: {err.decode()}")
    return json.loads(out), wall, usage


def run_size(lines: int, fsync: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="conveyor-add-file-") as directory:
        path = Path(directory) / "jobs.jsonl"
        size = write_jsonl(path, lines)
        broker = BrokerProcess("--fsync", fsync)
        try:
            meter = CpuMeter(descendants(broker.process.pid))
            meter.start()
            summary, wall, usage = run_cli(path, broker.url)
            meter.stop()
            with SyncClient(broker.url) as client:
                waiting = client.counts(QUEUE)["waiting"]
        finally:
            broker.stop()
    if summary["added"] != lines or waiting != lines:
        raise RuntimeError(f"{lines} lines: the CLI added {summary['added']}, the broker has "
                           f"{waiting} waiting")
    cli_cpu = usage.ru_utime + usage.ru_stime
    return {"lines": lines, "file_bytes": size, "jobs_per_s": lines / wall, "wall_seconds": wall,
            "cli_jobs_per_s": summary["jobs_per_s"], "cli_seconds": summary["seconds"],
            "cli_peak_rss_mb": usage.ru_maxrss * 1024 / 1e6,
            "cli_us_per_job": cli_cpu * 1e6 / lines,
            "broker_us_per_job": meter.seconds * 1e6 / lines}


def _checks(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    checks: dict[str, dict[str, Any]] = {}
    million = [row for row in rows if row["lines"] == 1_000_000]
    if million:
        checks["end_to_end_jobs_s_1m"] = check(million[0]["jobs_per_s"], ">=", TARGET_JOBS_S)
    if len(rows) > 1:
        smallest = min(rows, key=lambda row: row["lines"])
        largest = max(rows, key=lambda row: row["lines"])
        value = largest["cli_peak_rss_mb"] / smallest["cli_peak_rss_mb"]
        checks["rss_growth"] = check(value, "<=", TARGET_RSS_GROWTH)
    return checks


def _print_report(figures: dict[str, Any]) -> None:
    print(f"conveyor add QUEUE --file, ~48-byte JSON lines, fsync {figures['fsync']}")
    print(f"{'lines':>10} {'jobs/s':>9} {'wall s':>7} {'CLI jobs/s':>11} {'CLI peak RSS':>13} "
          f"{'CLI us/job':>11} {'broker us/job':>14}")
    for row in figures["results"]:
        print(f"{row['lines']:>10,} {row['jobs_per_s']:>9,.0f} {row['wall_seconds']:>7.2f} "
              f"{row['cli_jobs_per_s']:>11,.0f} {row['cli_peak_rss_mb']:>10.1f} MB "
              f"{row['cli_us_per_job']:>11.2f} {row['broker_us_per_job']:>14.2f}")
    checks = figures["checks"]
    if checks:
        print("targets")
        for name, result in checks.items():
            verdict = "met" if result["met"] else "MISSED"
            print(f"  {name:<22} {result['value']:>12,.2f} {result['op']} "
                  f"{result['target']:<10,} {verdict}")
    print(json.dumps(rounded(figures)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, nargs="+", default=[100_000, 1_000_000],
                        help="file sizes to run, in lines (default: 100000 1000000)")
    parser.add_argument("--fsync", choices=["always", "everysec", "no"], default="everysec",
                        help="the broker's fsync policy (default: everysec)")
    args = parser.parse_args()
    rows = [run_size(lines, args.fsync) for lines in sorted(args.lines)]
    figures: dict[str, Any] = {"bench": "add_file", "fsync": args.fsync, "results": rows,
                               "targets": {"end_to_end_jobs_s_1m_min": TARGET_JOBS_S,
                                           "rss_growth_max": TARGET_RSS_GROWTH}}
    figures["checks"] = _checks(rows)
    _print_report(figures)


if __name__ == "__main__":
    main()
