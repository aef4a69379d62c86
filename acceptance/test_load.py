"""`fab load --workers 2`: Locust's own master and two workers on this machine load the
site at a fixed rate; the master's final reports hold both workers' requests, about
users x rate x seconds of them, none failed, and no Locust process is left behind.

Load goes to the site's entry from this machine only (127.0.0.1's forwarded port, or the
inventory's site address), as every `fab load` does.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

from provision.testkit import fab_run

USERS, RATE, SECONDS = 6, 2.0, 15
EXPECTED = USERS * RATE * SECONDS
TOLERANCE = 0.10
"""Measured on seed: 180 requests for the 180 asked, three runs out of three (every user
starts at once and the count is Locust's final one). 10 % leaves room for a busy machine and
still fails a run that lost a worker (half the requests) or two seconds of the run."""


def locust_processes_with(marker: str) -> list[str]:
    """Command lines of live processes that mention `marker` (this run's report prefix)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "locust" in cmdline and marker in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_two_locust_workers_both_report_and_the_master_counts_the_fixed_rate(
    tmp_path: Path,
) -> None:
    prefix = tmp_path / "load"
    res = fab_run(
        "load", "--workers", "2", "--users", str(USERS), "--rate", f"{RATE:g}",
        "--seconds", str(SECONDS), "--out", str(prefix),
    )  # fmt: skip
    output = res.stdout[-3000:] + res.stderr[-2000:]
    assert res.returncode == 0, output
    # Locust's final counts (--json-file, written after the last request ended).
    entries = json.loads(Path(f"{prefix}.json").read_text())
    requests = sum(int(e["num_requests"]) for e in entries)
    failures = sum(int(e["num_failures"]) for e in entries)
    # What each worker sent the master, counted on the master (qps.py's worker report).
    report = json.loads(Path(f"{prefix}_workers.json").read_text())
    per_worker = sorted(w["requests"] for w in report["workers"].values())
    print(f"\n{requests} requests ({per_worker} per worker), {failures} failed; {EXPECTED:g} asked")
    assert report["expected"] == 2 and len(per_worker) == 2, report
    assert all(n > 0 for n in per_worker), report
    # Three users each: neither worker carried the other.
    assert per_worker[0] >= 0.4 * requests, per_worker
    assert sum(per_worker) == requests, (per_worker, requests)
    assert abs(requests - EXPECTED) <= TOLERANCE * EXPECTED, requests
    assert failures == 0
    # The CSV's aggregated row and the summary line say the same.
    with Path(f"{prefix}_stats.csv").open() as f:
        total = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    assert int(total["Failure Count"]) == 0
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("load: 2 of 2 workers reported") and f" {requests} requests" in last
    assert Path(f"{prefix}.html").is_file()
    # Every process it started is gone: the master's command line names the prefix, the
    # workers' the master's port (the task's first line says which).
    port = re.search(r"master on 127\.0\.0\.1:(\d+)", res.stdout)
    assert port, res.stdout[:500]
    assert locust_processes_with(str(prefix)) == []
    assert locust_processes_with(f"--master-port {port.group(1)} ") == []
    assert len(list(tmp_path.glob("load_worker*.log"))) == 2
    assert os.path.getsize(f"{prefix}_stats_history.csv") > 0
