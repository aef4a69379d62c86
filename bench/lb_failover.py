"""Measure load-balancer failover on a topology with a floating site address (hardened);
write docs/lb-failover.md and docs/lb-failover.png.

    TESTBED_TOPOLOGY=hardened .venv/bin/python -m bench.lb_failover --runs 2

Each run, for each fault, with 4 HTTPS clients requesting GET /health on the site's
address as fast as they can (a new TLS connection per request, 2 s timeout, like many
independent users), for 12 s before and 18 s after the fault:
  haproxy-kill   SIGKILL of haproxy on the balancer holding the address (systemd restarts it);
  haproxy-stop   haproxy stopped on the holder (it stays down until the heal);
  machine-stop   the holder's machine stopped (`vagrant halt`, or the inventory's power.stop).
Measured: the gap the clients saw (the longest time around the fault in which no request
completed successfully, whether they failed or hung),
the failed share, and which balancer holds the address before, after, and once the faulty
one is back (keepalived's nopreempt keeps the address where it is).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field

from provision import PROJECT_ROOT, engine, inventory, topology
from provision.power import Power
from provision.testkit import Site

DOC = PROJECT_ROOT / "docs" / "lb-failover.md"
REST_MARKER = "## Under Locust"
"""The doc's sections from this heading on are not the bench's: a run keeps them."""
PLOT = PROJECT_ROOT / "docs" / "lb-failover.png"
CLIENTS = 4
BEFORE, AFTER = 12.0, 18.0
FAULTS = ("haproxy-kill", "haproxy-stop", "machine-stop")
HEADER = (
    "| fault | runs | gap, s: median (max) | failed, % of the run: median (max) "
    "| address moved | stayed when the balancer came back |"
)


@dataclass
class Run:
    fault: str
    answers: list[tuple[float, float, bool]] = field(default_factory=list)
    """(start, end, ok) of every request, monotonic seconds."""
    at: float = 0.0
    holders: tuple[str, str, str] = ("", "", "")

    def gap(self) -> float:
        """The longest time, from just before the fault to the end of the run, in which no
        request completed successfully: what a user sees, whether the requests in it
        failed or only hung (a TCP retransmission while the address moved)."""
        ends = sorted(a[1] for a in self.answers if a[2] and a[1] >= self.at - 1.0)
        if not ends:
            return float("inf")
        return max(b - a for a, b in zip(ends, ends[1:], strict=False)) if len(ends) > 1 else 0.0

    def failed_share(self) -> float:
        return sum(1 for a in self.answers if not a[2]) / max(len(self.answers), 1)


def holder(topo: topology.Topology, eps: dict[str, inventory.Endpoint], vip: str) -> str:
    for lb in topo.with_role("lb"):
        try:
            with engine.Remote(lb, eps[lb.name]) as r:
                if vip in r.run("ip -4 -o addr show", check=False).stdout:
                    return lb.name
        except Exception:  # a stopped balancer holds nothing
            continue
    return "none"


def load(site: Site, run: Run, stop: threading.Event) -> None:
    while not stop.is_set():
        started = time.monotonic()
        try:
            ok = site.request("GET", "/health").status == 200
        except Exception:
            ok = False
        run.answers.append((started, time.monotonic(), ok))
        if not ok:
            time.sleep(0.02)


def one(fault: str, topo: topology.Topology, eps: dict[str, inventory.Endpoint]) -> Run:
    vip = str(next(v for v in topo.vips.values() if v.role == "lb").address)
    site = Site.of(topo)
    site = Site(site.name, inventory.SiteEntry(vip, site.entry.https, site.entry.http))
    before = holder(topo, eps, vip)
    run, stop = Run(fault), threading.Event()
    threads = [threading.Thread(target=load, args=(site, run, stop)) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(BEFORE)
    host = topo.hosts[before]
    power = Power(topo, eps)
    run.at = time.monotonic()
    if fault == "machine-stop":
        power.run("stop", before)
    else:
        with engine.Remote(host, eps[before]) as r:
            r.run(
                "systemctl kill -s KILL haproxy"
                if fault == "haproxy-kill"
                else "systemctl stop haproxy"
            )
    time.sleep(AFTER)
    stop.set()
    for t in threads:
        t.join()
    after = holder(topo, eps, vip)
    if fault == "machine-stop":
        power.run("start", before)
    else:
        with engine.Remote(host, eps[before]) as r:
            r.run("systemctl start haproxy")
    time.sleep(5)
    run.holders = (before, after, holder(topo, eps, vip))
    print(
        f"bench: {fault}: {before} -> {after} (back: {run.holders[2]}); gap {run.gap():.2f} s, "
        f"{sum(1 for a in run.answers if not a[2])} of {len(run.answers)} failed",
        flush=True,
    )
    return run


def plot(runs: list[Run]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = {r.fault: r for r in runs}
    fig, axes = plt.subplots(len(last), 1, figsize=(9, 2.2 * len(last)), sharex=True)
    for ax, (fault, run) in zip(axes, last.items(), strict=True):
        t0 = run.at
        ok = [a[0] - t0 for a in run.answers if a[2]]
        bad = [a[0] - t0 for a in run.answers if not a[2]]
        bins = [x / 4 for x in range(int(-BEFORE * 4), int(AFTER * 4) + 1)]
        ax.hist([ok, bad], bins=bins, stacked=True, color=["#4a8", "#d44"], label=["ok", "failed"])
        ax.axvline(0, color="k", linestyle="--", linewidth=1)
        ax.set_title(
            f"{fault}: {run.holders[0]} -> {run.holders[1]}, gap {run.gap():.2f} s", fontsize=9
        )
        ax.set_ylabel("req / 0.25 s")
    axes[-1].set_xlabel("seconds from the fault")
    axes[0].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=90)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    topo = topology.load()
    if not any(v.role == "lb" for v in topo.vips.values()):
        sys.exit(f"bench: topology {topo.name!r} has no floating site address (try hardened)")
    eps = inventory.load(topo)
    runs = [one(fault, topo, eps) for _ in range(args.runs) for fault in FAULTS]
    plot(runs)
    rows = []
    for fault in FAULTS:
        mine = [r for r in runs if r.fault == fault]
        gaps = [r.gap() for r in mine]
        shares = [100 * r.failed_share() for r in mine]
        moved = sum(1 for r in mine if r.holders[1] != r.holders[0])
        stayed = sum(1 for r in mine if r.holders[2] == r.holders[1])
        rows.append(
            f"| {fault} | {len(mine)} | {statistics.median(gaps):.2f} (max {max(gaps):.2f}) "
            f"| {statistics.median(shares):.2f} (max {max(shares):.2f}) | {moved} of {len(mine)} "
            f"| {stayed} of {len(mine)} |"
        )
    # What follows the plot (the drill runner's figures, written by hand) is kept.
    rest = DOC.read_text().partition(REST_MARKER) if DOC.exists() else ("", "", "")
    DOC.write_text(
        f"""# Load-balancer failover (measured)

Measured by `TESTBED_TOPOLOGY={topo.name} python -m bench.lb_failover --runs {args.runs}` on
{time.strftime("%Y-%m-%d")}, docker provider, this machine (2 cores, shared): {CLIENTS} HTTPS
clients on the site's floating address (GET /health, a new TLS connection per request,
2 s timeout), {BEFORE:.0f} s before and {AFTER:.0f} s after the fault; {args.runs} runs of each.

{HEADER}
|---|---|---|---|---|---|
{chr(10).join(rows)}

The gap is the longest time, from a second before the fault to the end of the run, in
which no request completed successfully (with 4 clients a request completes every ~20 ms
in normal running): it counts requests that hung while the address moved (a TCP
retransmission) as well as those that failed. The failed share is over the whole
{BEFORE + AFTER:.0f} s run at the clients' full speed; over a 60 s run the same failures are a
smaller share.

- **haproxy-kill**: systemd restarts haproxy at once; when that is quicker than
  keepalived's check (every second, one failure faults) the address stays, otherwise it
  moves: either way the gap is about the restart, and what was in flight on the killed
  process is lost.
- **haproxy-stop**: HAProxy soft-stops (SIGUSR1: it answers what is in flight, closes idle
  connections); keepalived keeps the address while it is stopping, then the holder
  faults and tells its peer (VRRPv3, priority 0), which takes the address and sends
  gratuitous ARPs. New connections meanwhile are held, not refused.
- **machine-stop**: the machine shuts down the same way: HAProxy's soft stop first, then
  keepalived (ordered after it), which hands the address over; a machine that dies
  without stopping is replaced after three missed adverts (1.5 s).
- **Coming back**: both balancers start as BACKUP with `nopreempt`, so a balancer that
  returns does not take the address back: one move per failure, not two.

![requests per quarter second around each fault (last run)](lb-failover.png)
"""
        + (f"\n{rest[1]}{rest[2]}" if rest[1] else "")
    )
    print(f"wrote {DOC.relative_to(PROJECT_ROOT)} and {PLOT.relative_to(PROJECT_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
