"""Measure database failover under a writer loop; write docs/failover-results.md.

    .venv/bin/python -m bench.failover --runs 3

Each run, for each scenario, with one HTTPS client posting notes as fast as it can
through the load balancer (provision/testkit.py's Writer):
  switchover      `fab db.switchover` (planned);
  manual-kill     SIGKILL of the primary's mariadbd, then `fab db.failover` at the
                  client's first failed write (an operator or script reacting at once);
  auto-kill       SIGKILL with dbwatch on (topology option auto_failover);
  auto-stop       the primary's machine stopped (`vagrant halt`, or the inventory's
                  power.stop) with dbwatch on.
Measured: the write outage the client saw (last acknowledged write before the first
failure to the first acknowledged write after it), and lost writes (acknowledged notes
missing or duplicated on the new primary). After each scenario the old primary is
rebuilt as a replica. Needs a running, deployed testbed; takes a few minutes per run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from provision import PROJECT_ROOT, dbcluster, engine, inventory, topology
from provision.power import Power
from provision.testkit import FabError, Site, Writer, not_present_once
from provision.testkit import fab as run_fab

TOPOLOGY = topology.load()

DOC = PROJECT_ROOT / "docs" / "failover-results.md"


def fab(*args: str) -> str:
    try:
        return run_fab(*args)
    except FabError as exc:
        sys.exit(f"bench: {exc}")


def primary(eps: dict[str, inventory.Endpoint]) -> str:
    return dbcluster.discover_primary(TOPOLOGY, dbcluster.states(TOPOLOGY, eps))


def lost(eps: dict[str, inventory.Endpoint], node: str, writer: Writer) -> int:
    with engine.Remote(TOPOLOGY.hosts[node], eps[node]) as r:
        return len(not_present_once(r, writer.acked))


def heal(eps: dict[str, inventory.Endpoint], option: str) -> None:
    """Every non-primary node replicates again (the deploy rebuilds a fenced one)."""
    fab("deploy", *(["--option", option] if option else []))


def scenario(name: str, eps: dict[str, inventory.Endpoint]) -> tuple[float, int]:
    option = "auto_failover=" + ("true" if name.startswith("auto") else "false")
    heal(eps, option)
    old = primary(eps)
    writer = Writer(Site.of(TOPOLOGY)).start()
    time.sleep(3)
    fault = time.monotonic()
    if name == "switchover":
        fab("db.switchover")
    elif name.endswith("kill"):
        with engine.Remote(TOPOLOGY.hosts[old], eps[old]) as r:
            r.run("pkill -9 -x mariadbd")
    else:
        Power(TOPOLOGY, eps).run("stop", old)
    if name == "manual-kill":
        while writer.failures_after(fault) == 0 and time.monotonic() - fault < 10:
            time.sleep(0.05)
        fab("db.failover")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        failed = [t for t, ok in writer.answers if not ok and t > fault]
        if (not failed and time.monotonic() - fault > 5) or (
            failed and any(ok and t > failed[0] for t, ok in writer.answers)
        ):
            break
        time.sleep(0.2)
    time.sleep(2)
    writer.stop()
    if name == "auto-stop":
        Power(TOPOLOGY, eps).run("start", old)
    new = primary(eps)
    result = (writer.outage_after(fault), lost(eps, new, writer))
    print(
        f"bench: {name}: {old} -> {new}: outage {result[0]:.2f} s, lost {result[1]} of "
        f"{len(writer.acked)} acknowledged",
        flush=True,
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    eps = inventory.load(TOPOLOGY)
    names = ["switchover", "manual-kill", "auto-kill", "auto-stop"]
    results: dict[str, list[tuple[float, int]]] = {n: [] for n in names}
    for i in range(args.runs):
        print(f"bench: run {i + 1}/{args.runs}", flush=True)
        for name in names:
            results[name].append(scenario(name, eps))
    heal(eps, "")
    home = TOPOLOGY.with_role("db-primary")[0].name
    if primary(eps) != home:
        fab("db.switchover", "--target", home)
    rows = []
    for name in names:
        outages = [o for o, _ in results[name]]
        rows.append(
            f"| {name} | {statistics.median(outages):.1f} s "
            f"| {min(outages):.1f}-{max(outages):.1f} s | {sum(n for _, n in results[name])} |"
        )
    DOC.write_text(f"""# Failover: measured write outage and lost writes

Measured by `python -m bench.failover --runs {args.runs}` on {time.strftime("%Y-%m-%d")} on this
project's 2-core machine, docker provider, topology `seed` (primary and replica on web1/web2).
{args.runs} run(s) of each scenario, one after another in one session; the machine is shared and
noisy, so read the figures as a scale. Method: see the docstring of `bench/failover.py`.

| scenario | write outage (median) | range | acknowledged writes lost (all runs) |
|---|---|---|---|
{chr(10).join(rows)}

- **switchover**: `fab db.switchover`, planned.
- **manual-kill**: SIGKILL of the primary's mariadbd; `fab db.failover` run at the client's
  first failed write.
- **auto-kill**, **auto-stop**: dbwatch on (`auto_failover`); SIGKILL of mariadbd, or the
  primary's machine stopped (`vagrant halt`).

The outage is what the HTTPS client saw: from its last acknowledged write before the first
failure to its first acknowledged write after it, so it includes detection (dbwatch waits for
one second without a writable node), applying what the replica had received, the writer
endpoints' 1 s health checks, and HAProxy bringing the web servers back. Anchors from the
issue: MHA 10-30 s, orchestrator 10-13 s, MaxScale ~10 s.
""")
    print(f"bench: wrote {DOC.relative_to(PROJECT_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
