"""Measure every host of the running testbed with lynis (a Debian package): its hardening
index and the findings left; write docs/lynis.md.

    TESTBED_TOPOLOGY=hardened .venv/bin/python -m bench.lynis [--inventory FILE]

Each host in turn (`--parallel N` for more at once), over the deploy's own SSH (as
root): `apt-get install lynis` (apt's fetcher is the one process the firewalls' egress
rules let out), then `lynis audit system --quick --no-colors`; the report is read from
/var/log/lynis-report.dat (`hardening_index`, `warning[]`, `suggestion[]`). Lynis stays
installed; it changes nothing else. One run per host: the index is deterministic for a
given machine state.

One at a time by default: lynis on all nine machines at once starved this 2-core host so
much that the database nodes' polls timed out again and again, the failover controller
promoted twice, and the cluster ended with every node fenced (safe, but down until an
operator acts; docs/database.md).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from provision import PROJECT_ROOT, engine, inventory, topology

DOC = PROJECT_ROOT / "docs" / "lynis.md"
AUDIT = (
    "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends lynis "
    ">/dev/null && lynis audit system --quick --no-colors >/dev/null 2>&1; "
    "cat /var/log/lynis-report.dat"
)


@dataclass
class Audit:
    host: str
    index: int = -1
    warnings: list[tuple[str, str]] = field(default_factory=list)
    suggestions: list[tuple[str, str]] = field(default_factory=list)
    error: str = ""


def parse_report(host: str, text: str) -> Audit:
    """lynis-report.dat: `key=value` lines; list entries are `key[]=ID|text|...`."""
    audit = Audit(host)
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "hardening_index" and value.strip().isdigit():
            audit.index = int(value)
        elif key in ("warning[]", "suggestion[]"):
            parts = value.split("|")
            entry = (parts[0], parts[1] if len(parts) > 1 else "")
            (audit.warnings if key == "warning[]" else audit.suggestions).append(entry)
    if audit.index < 0:
        audit.error = "no hardening_index in the report"
    return audit


def audit(host: topology.Host, endpoint: inventory.Endpoint) -> Audit:
    try:
        with engine.Remote(host, endpoint) as remote:
            return parse_report(host.name, remote.run(AUDIT).stdout)
    except Exception as exc:  # one host's failure is reported, the others still measured
        return Audit(host.name, error=str(exc)[:300])


def markdown(topo: topology.Topology, audits: list[Audit]) -> str:
    today = dt.datetime.now(dt.UTC).date().isoformat()
    lines = [
        "# Host hardening, measured with lynis",
        "",
        f"Measured by `TESTBED_TOPOLOGY={topo.name} python -m bench.lynis` on {today}, docker",
        "provider, one run per host (`lynis audit system --quick`, Debian 12's lynis). The",
        "goal of issue 12 is an index of at least 80 on every machine; what is left, and what",
        "cannot apply inside a container, is below.",
        "",
        "| host | roles | hardening index | warnings | suggestions |",
        "|---|---|---|---|---|",
    ]
    for a in audits:
        roles = ", ".join(topo.hosts[a.host].roles)
        if a.error:
            lines.append(f"| {a.host} | {roles} | not measured: {a.error} | | |")
        else:
            lines.append(
                f"| {a.host} | {roles} | {a.index} | {len(a.warnings)} | {len(a.suggestions)} |"
            )
    measured = [a for a in audits if not a.error]
    for title, attr in (("Warnings", "warnings"), ("Suggestions", "suggestions")):
        counts = collections.Counter(e for a in measured for e in getattr(a, attr))
        if not counts:
            continue
        lines += ["", f"## {title}, by how many hosts have them", ""]
        lines += ["| test | finding | hosts |", "|---|---|---|"]
        for (test, text), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"| {test} | {text.replace('|', '/')} | {n} of {len(measured)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inventory", default="", help="inventory file (default: Vagrant)")
    parser.add_argument("--no-write", action="store_true", help="print, do not write docs/")
    parser.add_argument(
        "--parallel", type=int, default=1, help="hosts audited at once (default 1: see above)"
    )
    args = parser.parse_args()
    topo = topology.load()
    endpoints = inventory.load(topo, args.inventory or None)
    print(
        f"lynis on {len(topo.hosts)} hosts of {topo.name}, {args.parallel} at a time "
        "(about a minute each)...",
        flush=True,
    )
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        audits = list(pool.map(lambda h: audit(h, endpoints[h.name]), topo))
    for a in audits:
        print(f"  {a.host:<10} {a.error or f'index {a.index}'}", flush=True)
    text = markdown(topo, audits)
    if args.no_write:
        print(text)
    else:
        DOC.write_text(text)
        print(f"wrote {DOC.relative_to(PROJECT_ROOT)}")
    return 0 if all(not a.error for a in audits) else 1


if __name__ == "__main__":
    sys.exit(main())
