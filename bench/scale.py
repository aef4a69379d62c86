"""Scale the web tier out and back in under Locust, timed; writes docs/scaling.md and .png.

    TESTBED_TOPOLOGY=hardened .venv/bin/python -m bench.scale --runs 1

Each run: Locust with the drill personas at a fixed rate (10 users x 2 requests/s, every
request recorded with its outcome and the web server that answered), 10 s of load, then
`fab scale web=N+1` exactly as a user runs it, 15 s, `fab scale web=N`, 10 s more. The
figures: how long each `fab scale` took, the failed requests (the promise: none), and when
the new server took its first and its last request. The plot shows, per second, the
requests each web server answered and the failed ones, with the two commands shaded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from provision import PROJECT_ROOT, inventory, secrets, topology
from provision.drills.workload import Workload
from provision.ops.scale import counted_members
from provision.testkit import fab

DOC = PROJECT_ROOT / "docs" / "scaling.md"
PLOT = PROJECT_ROOT / "docs" / "scaling.png"
TIER = "web"


@dataclass
class Run:
    marks: dict[str, float] = field(default_factory=dict)
    records: list[dict[str, object]] = field(default_factory=list)
    new: str = ""

    def took(self, step: str) -> float:
        return self.marks[f"{step}_done"] - self.marks[step]

    @property
    def failed(self) -> int:
        return sum(r["outcome"] != "ok" for r in self.records)

    def served_by_new(self) -> list[float]:
        return sorted(float(r["start"]) for r in self.records if r["server"] == self.new)  # type: ignore[arg-type]


def one(topo: topology.Topology, folder: Path) -> Run:
    n = len(counted_members(topo, TIER))
    run = Run(new=f"{TIER}{n + 1}")
    site = inventory.site_entry(topo, None).url()
    load = Workload(folder, site, 10, 2.0, 900, secrets.site_ca_cert_path())
    load.start()
    try:
        run.marks["start"] = time.time()
        time.sleep(10)
        for step, count, after in (("out", n + 1, 15), ("in", n, 10)):
            run.marks[step] = time.time()
            fab("scale", f"{TIER}={count}")
            run.marks[f"{step}_done"] = time.time()
            print(f"  scale {step} to {count}: {run.took(step):.1f} s", flush=True)
            time.sleep(after)
    finally:
        load.stop()
        if run.new in topology.load(topo.name).hosts:
            fab("scale", f"{TIER}={n}")
    run.records = [json.loads(x) for x in load.history.read_text().splitlines() if x]
    return run


def plot(run: Run) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = run.marks["start"]
    servers = sorted({str(r["server"]) for r in run.records if r["server"]})
    end = max(float(r["start"]) for r in run.records) - t0  # type: ignore[arg-type]
    bins = list(range(int(end) + 2))
    data = [
        [float(r["start"]) - t0 for r in run.records if r["server"] == s and r["outcome"] == "ok"]  # type: ignore[arg-type]
        for s in servers
    ]
    failed = [float(r["start"]) - t0 for r in run.records if r["outcome"] != "ok"]  # type: ignore[arg-type]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.hist([*data, failed], bins=bins, stacked=True, label=[*servers, "failed"])
    for step, color in (("out", "#8c8"), ("in", "#c88")):
        ax.axvspan(run.marks[step] - t0, run.marks[f"{step}_done"] - t0, color=color, alpha=0.3)
        ax.text(run.marks[step] - t0, ax.get_ylim()[1] * 0.92, f" fab scale ({step})", fontsize=8)
    ax.set_xlabel("seconds")
    ax.set_ylabel("requests / s")
    ax.set_title(f"web tier 2 -> 3 -> 2 under load: {run.failed} failed", fontsize=9)
    ax.legend(loc="lower left", fontsize=7, ncol=len(servers) + 1)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=90)


def render(runs: list[Run], topo: topology.Topology) -> str:
    rows = []
    for i, r in enumerate(runs, 1):
        served = r.served_by_new()
        first = served[0] - r.marks["out"] if served else float("nan")
        last = r.marks["in"] - served[-1] if served else float("nan")
        rows.append(
            f"| {i} | {r.took('out'):.0f} | {first:.1f} | {len(served)} | {r.took('in'):.0f} "
            f"| {last:.1f} | {r.failed} of {len(r.records)} |"
        )
    outs = [r.took("out") for r in runs]
    ins = [r.took("in") for r in runs]
    return f"""# Scaling the web tier under load (measured)

Measured by `TESTBED_TOPOLOGY={topo.name} python -m bench.scale --runs {len(runs)}` on
{time.strftime("%Y-%m-%d")}, on this project's shared 2-core machine, docker provider: Locust
with the drill personas at 10 users x 2 requests/s on the site's floating address, 10 s
of load, `fab scale web=3`, 15 s, `fab scale web=2`, 10 s. Every request is recorded
with its outcome and the web server that answered (X-Served-By). Columns: how long
`fab scale web=3` took; when the new server answered its first request, counted from the
start of that command; how many it answered; how long `fab scale web=2` took; how long
before that command began it answered its last one; the failed requests of the run.

| run | out, s | first request, s | requests | in, s | last request, s before | failed |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Scale out takes {statistics.median(outs):.0f} s (median): `vagrant up` of the new machine,
then a deploy of every host (the new one is set up from scratch: packages, firewall, nginx,
the app, its agent), the balancers' reload last. Scale in takes {statistics.median(ins):.0f} s:
the drain (its sessions end at once under this load), `vagrant destroy`, then the deploy
without it. The promise is no failed request: the new server takes traffic only once its
health check passes after the balancers' reload (which hands its sockets over), and the
one that goes is drained before anything is removed. `acceptance/test_scale.py` asserts it.

![requests per second by web server, scale out then in](scaling.png)
"""


def written_by_hand(doc: Path) -> str:
    """The sections after the measured part (each a "## " heading): a new measurement
    replaces the table and the plot, never the account of earlier runs."""
    text = doc.read_text() if doc.exists() else ""
    start = text.find("\n## ")
    return text[start:] if start >= 0 else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    topo = topology.load()
    if not counted_members(topo, TIER) or topo.name == "seed":
        sys.exit(f"bench: topology {topo.name!r} has no counted web tier (try hardened)")
    runs = []
    for i in range(args.runs):
        print(f"run {i + 1}/{args.runs}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(one(topo, Path(tmp)))
        print(f"  failed: {runs[-1].failed} of {len(runs[-1].records)}", flush=True)
    plot(runs[-1])
    DOC.write_text(render(runs, topo) + written_by_hand(DOC))
    print(f"wrote {DOC.relative_to(PROJECT_ROOT)} and {PLOT.relative_to(PROJECT_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
