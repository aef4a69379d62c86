"""Measure database failover under a writer loop; write docs/failover-results.md.

    .venv/bin/python -m bench.failover --runs 3

Each run, for each scenario, with one HTTPS client posting notes as fast as it can
through the load balancer (acceptance/drill.py):
  switchover      `fab db.switchover` (planned);
  manual-kill     SIGKILL of the primary's mariadbd, then `fab db.failover` at the
                  client's first failed write (an operator or script reacting at once);
  auto-kill       SIGKILL with dbwatch on (topology option auto_failover);
  auto-stop       `vagrant halt` of the primary's machine with dbwatch on.
Measured: the write outage the client saw (last acknowledged write before the first
failure to the first acknowledged write after it), and lost writes (acknowledged notes
missing or duplicated on the new primary). After each scenario the old primary is
rebuilt as a replica. Needs a running, deployed testbed; takes a few minutes per run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from acceptance.conftest import TOPOLOGY
from acceptance.drill import Writer
from provision import PROJECT_ROOT, dbcluster, engine, inventory
from provision.tasks import db_states

DOC = PROJECT_ROOT / "docs" / "failover-results.md"


def fab(*args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "fabric", *args], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, check=False)  # fmt: skip
    if res.returncode != 0:
        sys.exit(f"bench: fab {' '.join(args)} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    return res.stdout


def primary(eps: dict[str, inventory.Endpoint]) -> str:
    return dbcluster.discover_primary(TOPOLOGY, db_states(TOPOLOGY, eps))


def lost(eps: dict[str, inventory.Endpoint], node: str, writer: Writer) -> int:
    r = engine.Remote(TOPOLOGY.hosts[node], eps[node])
    r.connect()
    try:
        rows = dbcluster.mysql(
            r, f"SELECT text, COUNT(*) FROM testbed.notes WHERE text LIKE '{writer.prefix}-%' "
            "GROUP BY text;")  # fmt: skip
    finally:
        r.close()
    counts = {t: int(n) for t, n in rows}
    return sum(1 for t in writer.acked if counts.get(t) != 1)


def heal(eps: dict[str, inventory.Endpoint], option: str) -> None:
    """Every non-primary node replicates again (the deploy rebuilds a fenced one)."""
    fab("deploy", *(["--option", option] if option else []))


def scenario(name: str, eps: dict[str, inventory.Endpoint]) -> tuple[float, int]:
    option = "auto_failover=" + ("true" if name.startswith("auto") else "false")
    heal(eps, option)
    old = primary(eps)
    writer = Writer().start()
    time.sleep(3)
    fault = time.monotonic()
    if name == "switchover":
        fab("db.switchover")
    elif name.endswith("kill"):
        r = engine.Remote(TOPOLOGY.hosts[old], eps[old])
        r.connect()
        r.run("pkill -9 -x mariadbd")
        r.close()
    else:
        subprocess.run(["vagrant", "halt", old], cwd=PROJECT_ROOT, capture_output=True, check=True)
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
        subprocess.run(["vagrant", "up", old], cwd=PROJECT_ROOT, capture_output=True, check=True)
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
    eps = inventory.from_vagrant(TOPOLOGY)
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
