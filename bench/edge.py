"""What the load balancer costs: HTTPS through it against plain HTTP straight to one web
server, measured side by side with wrk inside the machines; a table and a plot in
docs/performance.md ("The load balancer's cost").

    .venv/bin/python -m bench.edge --runs 3        # seed (clear-text backends) only
    .venv/bin/python -m bench.edge --runs 1 --cpu  # and where the CPU went (docker provider)

For each route (the page, a read: GET /api/notes?limit=10, a write: POST /api/notes) and
each run, the two measurements follow each other (A, B, A, B, ...), so both see the same
machine:
- **through the balancer**: wrk on the client machine, to the site's address on port 443
  (HTTPS, keep-alive, the site's name in Host), the way users reach it;
- **one web server**: wrk on the balancer's own machine, to one web server's backend
  address on port 80 (plain HTTP, the same Host), the path HAProxy's requests take.
Same wrk settings for both (issue 14's: 2 threads, 16 connections, 10 s, keep-alive). The
ratio is through / direct: 1.0 would mean the balancer costs nothing. wrk is Debian's
package, installed on the two machines at the first run (apt is the one fetcher their
egress rules let out). The writes add notes to the site's database, as users' would.

With `reencrypt` on (hardened), the web servers take the balancers' client certificate
only: wrk cannot present one, so the bench refuses (exit 2) rather than measure another
path.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import statistics
import sys

from provision import PROJECT_ROOT, engine, inventory, topology, vagrant
from provision import cpuacct as cpu
from provision.testkit import WrkResult as Result
from provision.testkit import parse_wrk, wrk_command

DOC = PROJECT_ROOT / "docs" / "performance.md"
PLOT = PROJECT_ROOT / "docs" / "edge.png"
BEGIN = "<!-- bench/edge.py: begin (rewritten by python -m bench.edge) -->"
END = "<!-- bench/edge.py: end -->"
INSTALL = (
    "command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive "
    "apt-get install -y -q --no-install-recommends wrk >/dev/null"
)
ROUTES = {"page": "/", "read": "/api/notes?limit=10", "write": "/api/notes"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="A/B pairs per route (default 3)")
    parser.add_argument("--seconds", type=int, default=10, help="each wrk run (default 10)")
    parser.add_argument("--inventory", help="an inventory file instead of Vagrant's machines")
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs alone")
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="also print where the CPU went, per machine and program, per 1,000 requests "
        "(docker provider: read from this host's /proc; provision/cpuacct.py)",
    )
    args = parser.parse_args()
    topo = topology.load()
    if topo.option("reencrypt", False):
        print(f"bench.edge: {topo.name} re-encrypts to the web servers (mTLS): wrk has no "
              "client certificate; run it on seed", file=sys.stderr)  # fmt: skip
        return 2
    paths = topo.allowed_paths()
    entry = next(
        p for p in paths if p.source.has_role("client") and p.port == topo.port("site-https")
    )
    backend = next(
        p for p in paths if p.source.has_role("lb") and p.dest.has_role("web")
        and p.port == topo.port("backend-http")
    )  # fmt: skip
    client, lb = entry.source, backend.source
    site = topo.site.name
    endpoints = inventory.load(topo, args.inventory)
    results: dict[str, dict[str, list[Result]]] = {r: {"through": [], "direct": []} for r in ROUTES}
    spent: dict[tuple[str, str], dict[cpu.Key, float]] = collections.defaultdict(dict)
    requests: collections.Counter[tuple[str, str]] = collections.Counter()
    with (
        engine.Remote(client, endpoints[client.name]) as on_client,
        engine.Remote(lb, endpoints[lb.name]) as on_lb,
    ):
        for remote in (on_client, on_lb):
            remote.run(INSTALL)
        for run in range(1, args.runs + 1):
            for route, path in ROUTES.items():
                through = f"https://{entry.address}:{entry.port}{path}"
                direct = f"http://{backend.address}:{backend.port}{path}"
                for side, remote, url in (("through", on_client, through),
                                          ("direct", on_lb, direct)):  # fmt: skip
                    command = wrk_command(url, site, route, args.seconds)
                    if args.cpu:
                        with cpu.measured(topo.name, vagrant.project_id()) as used:
                            out = remote.run(command).stdout
                        for key, seconds in used().items():
                            total = spent[(route, side)]
                            total[key] = total.get(key, 0.0) + seconds
                    else:
                        out = remote.run(command).stdout
                    got = parse_wrk(out)
                    results[route][side].append(got)
                    requests[(route, side)] += round(got.rps * args.seconds)
                    print(f"run {run}/{args.runs} {route:5} {side:7} {got.rps:8.1f} req/s  "
                          f"p50 {got.p50_ms:6.1f} ms  non-2xx {got.non_2xx}  "
                          f"socket errors {got.socket_errors}")  # fmt: skip
    rows = summary(results)
    print(table(rows))
    if args.cpu:
        for (route, side), per_program in spent.items():
            print(f"\nCPU, {route} {side} ({requests[(route, side)]} requests in all runs):")
            print(cpu.table(per_program, requests[(route, side)]))
    if not args.no_write:
        write_doc(topo.name, args, rows, client.name, lb.name, backend.dest.name)
        plot(rows)
        print(f"wrote {DOC} and {PLOT}")
    return 0


Row = tuple[str, float, float, float, float, float, int]
"""route, through req/s, direct req/s, ratio, through p50 ms, direct p50 ms, non-2xx."""


def summary(results: dict[str, dict[str, list[Result]]]) -> list[Row]:
    rows = []
    for route, sides in results.items():
        through = statistics.median(r.rps for r in sides["through"])
        direct = statistics.median(r.rps for r in sides["direct"])
        rows.append((
            route, through, direct, through / direct,
            statistics.median(r.p50_ms for r in sides["through"]),
            statistics.median(r.p50_ms for r in sides["direct"]),
            sum(r.non_2xx + r.socket_errors for s in sides.values() for r in s),
        ))  # fmt: skip
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| route | through the balancer (HTTPS) req/s | one web server (HTTP) req/s | ratio "
        "| p50 through / direct (ms) | errors (non-2xx, socket) |",
        "|---|---|---|---|---|---|",
    ]
    for route, through, direct, ratio, p50t, p50d, bad in rows:
        lines.append(f"| {route} ({ROUTES[route]}) | {through:.0f} | {direct:.0f} | "
                     f"**{ratio:.2f}** | {p50t:.1f} / {p50d:.1f} | {bad} |")  # fmt: skip
    return "\n".join(lines)


def write_doc(
    topo_name: str, args: argparse.Namespace, rows: list[Row], client: str, lb: str, web: str
) -> None:
    today = dt.datetime.now(dt.UTC).date().isoformat()
    block = "\n".join([
        BEGIN,
        f"Measured by `python -m bench.edge --runs {args.runs} --seconds {args.seconds}` on "
        f"{today} ({topo_name}, docker provider, this 2-core machine; median of {args.runs} "
        f"A/B pairs per route): wrk on `{client}` through the balancer, and wrk on `{lb}` "
        f"straight to `{web}`, one after the other.",
        "",
        table(rows),
        "",
        "![through the balancer against one web server](edge.png)",
        END,
    ])  # fmt: skip
    text = DOC.read_text()
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = (
            text.rstrip("\n") + "\n\n## The load balancer's cost (bench/edge.py)\n\n" + block + "\n"
        )
    DOC.write_text(text)


def plot(rows: list[Row]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r[1] for r in rows], 0.4, label="through the balancer (HTTPS)")
    ax.bar([i + 0.2 for i in x], [r[2] for r in rows], 0.4, label="one web server (HTTP)")
    for i, r in zip(x, rows, strict=True):
        ax.annotate(f"{r[3]:.2f}", (i, max(r[1], r[2])), ha="center", va="bottom")
    ax.set_ylim(0, max(max(r[1], r[2]) for r in rows) * 1.25)
    ax.set_xticks(list(x), [f"{r[0]}\n{ROUTES[r[0]]}" for r in rows])
    ax.set_ylabel("requests/s (wrk, 16 connections)")
    ax.set_title("What the balancer costs (ratio above each pair)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
