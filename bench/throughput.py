"""Throughput of the running topology under the same Locust settings; docs/throughput.md.

    TESTBED_TOPOLOGY=seed     .venv/bin/python -m bench.throughput --runs 3
    TESTBED_TOPOLOGY=hardened .venv/bin/python -m bench.throughput --runs 3

Each run is `locust -f loadtests/qps.py --headless` at the site's entry (127.0.0.1's
forwarded port for seed, the floating address for hardened) with the same settings for
every topology: --users users, all spawned at once, each asking as fast as it is answered
(LOAD_RATE 1000 per user: no think time), for --seconds. The requests per second, the
median and 95th percentile latency and the failures are read from Locust's CSV. Results
are kept per topology in docs/throughput.json, so the page compares the last runs of each;
one testbed runs at a time, so the two topologies are measured one after the other on
the same machine, and the machine is shared: read the ratio, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provision import PROJECT_ROOT, inventory, secrets, topology

DOC = PROJECT_ROOT / "docs" / "throughput.md"
DATA = PROJECT_ROOT / "docs" / "throughput.json"
NOTES = "<!-- notes below are kept when bench/throughput.py rewrites this page -->"


def one_run(url: str, users: int, seconds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(
            os.environ,
            LOAD_RATE="1000",
            TESTBED_CA=str(secrets.site_ca_cert_path()),
            LOCUST_MAX_FAILURE_RATIO="1",
            LOCUST_MAX_P95_MS="1000000",
        )
        cmd = [
            sys.executable, "-m", "locust", "-f", "loadtests/qps.py", "--headless",
            "--host", url, "--users", str(users), "--spawn-rate", str(users),
            "--run-time", f"{seconds}s", "--csv", f"{tmp}/run", "--only-summary",
        ]  # fmt: skip
        res = subprocess.run(
            cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=False
        )
        stats = Path(f"{tmp}/run_stats.csv")
        if not stats.exists():
            sys.exit(f"bench: locust wrote no stats (exit {res.returncode}): {res.stderr[-1500:]}")
        with stats.open() as f:
            total = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    requests = int(total["Request Count"])
    return {
        "rps": requests / seconds,
        "requests": requests,
        "failures": int(total["Failure Count"]),
        "p50_ms": float(total["50%"]),
        "p95_ms": float(total["95%"]),
    }


def render(data: dict[str, dict[str, object]]) -> str:
    rows = []
    for name, r in sorted(data.items()):
        rps = r["rps"]
        assert isinstance(rps, list)
        rows.append(
            f"| {name} | {r['machines']} | {r['runs']} | {statistics.median(rps):.0f} "
            f"({min(rps):.0f}-{max(rps):.0f}) | {r['p50_ms']} | {r['p95_ms']} | "
            f"{r['failures']} of {r['requests']} | {r['date']} |"
        )
    ratio = ""
    if "seed" in data and "hardened" in data:
        seed_rps = statistics.median(data["seed"]["rps"])  # type: ignore[arg-type]
        hard_rps = statistics.median(data["hardened"]["rps"])  # type: ignore[arg-type]
        ratio = f"\n**hardened / seed: {hard_rps / seed_rps:.2f}** (median requests per second).\n"
    first = next(iter(data.values()))
    return f"""# Throughput, seed and hardened (measured)

Measured by `python -m bench.throughput` (see its docstring) on this
project's machine ({os.cpu_count()} cores, shared), docker provider: Locust with
{first["users"]} users asking as fast as they are answered (qps.py's personas: page, health,
note lists and reads, writes), {first["seconds"]} s per run, aimed at each topology's site
entry. Median of the runs, with min-max.

| topology | machines | runs | requests/s | p50 ms | p95 ms | failed | measured |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}
{ratio}
What differs on the path of a request: `seed` sends it lb1 (TLS ends) -> a web server in
clear -> the database on the web servers; `hardened` sends it to the floating address ->
lb1 or lb2 (TLS ends) -> a web server over mTLS (a second TLS session per backend
connection, reused by HAProxy) -> a database host over TLS. Locust, the nine machines and
the docker host share the same two cores, so the absolute numbers are the machine's, and
the runs of the two topologies are minutes apart: read the ratio as a scale.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=40)
    parser.add_argument("--users", type=int, default=20)
    args = parser.parse_args()
    topo = topology.load()
    url = inventory.site_entry(topo, None).url()
    results = []
    for i in range(args.runs):
        r = one_run(url, args.users, args.seconds)
        print(
            f"{topo.name} run {i + 1}/{args.runs}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.0f} ms, "
            f"p95 {r['p95_ms']:.0f} ms, {r['failures']} failed",
            flush=True,
        )
        results.append(r)
        time.sleep(3)
    data = json.loads(DATA.read_text()) if DATA.exists() else {}
    data[topo.name] = {
        "machines": len(topo.hosts),
        "runs": args.runs,
        "users": args.users,
        "seconds": args.seconds,
        "rps": [round(r["rps"], 1) for r in results],
        "p50_ms": statistics.median(r["p50_ms"] for r in results),
        "p95_ms": statistics.median(r["p95_ms"] for r in results),
        "failures": sum(int(r["failures"]) for r in results),
        "requests": sum(int(r["requests"]) for r in results),
        "date": time.strftime("%Y-%m-%d"),
    }
    DATA.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    # Notes written by hand below the marker (an experiment, an explanation) are kept.
    kept = DOC.read_text().partition(NOTES)[2] if DOC.exists() else ""
    DOC.write_text(render(data) + (f"\n{NOTES}{kept}" if kept else ""))
    print(f"wrote {DOC.relative_to(PROJECT_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
