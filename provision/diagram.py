"""A picture of a topology, drawn from its file: a Mermaid flowchart (GitHub renders it
in Markdown) with the networks as boxes, each host in the networks it is on, floating
addresses, and one arrow per allowed flow between hosts (ports on the arrow).

    python -m provision.diagram --write-docs     # docs/topology-<name>.md for every topology

tests/test_diagram.py fails when a committed diagram no longer matches its file, so the
picture never drifts from the code.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

from provision import PROJECT_ROOT
from provision.topology import PORTLESS, TOPOLOGY_DIR, Topology, TopologyError, load


def _node(name: str) -> str:
    return name.replace("-", "_")


def mermaid(topology: Topology) -> str:
    lines = ["flowchart LR"]
    for net in topology.networks.values():
        lines.append(f'  subgraph {_node("net_" + net.name)}["{net.name} {net.cidr}"]')
        for host in topology:
            if net.name in host.addresses:
                label = f"{host.name}<br/>{', '.join(host.roles)}<br/>{host.addresses[net.name]}"
                lines.append(f'    {_node(host.name + "_" + net.name)}["{label}"]')
        for vip in topology.vips.values():
            if vip.network == net.name:
                lines.append(
                    f'    {_node("vip_" + vip.name)}(["vip {vip.name}<br/>{vip.address}"])'
                )
        lines.append("  end")
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in topology.allowed_paths():
        src = _node(f"{path.source.name}_{path.network}")
        holder = next((v for v in topology.vips.values() if v.address == path.address), None)
        dst = _node(f"vip_{holder.name}") if holder else _node(f"{path.dest.name}_{path.network}")
        what = path.proto if path.proto in PORTLESS else str(path.port)
        if what not in edges[(src, dst)]:
            edges[(src, dst)].append(what)
    for vip in topology.vips.values():
        for host in topology.with_role(vip.role):
            if vip.network in host.addresses:
                edges[(_node(f"vip_{vip.name}"), _node(f"{host.name}_{vip.network}"))].append(
                    "held by"
                )
    for (src, dst), labels in edges.items():
        lines.append(f"  {src} -->|{' '.join(labels)}| {dst}")
    return "\n".join(lines) + "\n"


def document(topology: Topology) -> str:
    return (
        f"# Topology `{topology.name}`\n\n"
        f"{topology.description}\n\n"
        f"Generated from `topologies/{topology.name}.yml` by `python -m provision.diagram "
        "--write-docs`; a unit test fails when it no longer matches the file. Arrows are "
        "the allowed flows (ports on the arrow); everything else is dropped by the "
        "destination's firewall.\n\n"
        f"```mermaid\n{mermaid(topology)}```\n"
    )


def doc_path(name: str) -> str:
    return f"docs/topology-{name}.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m provision.diagram", description=__doc__)
    parser.add_argument("topology", nargs="?", help="print this topology's diagram")
    parser.add_argument("--write-docs", action="store_true", help="write docs/topology-*.md")
    args = parser.parse_args(argv)
    try:
        if args.write_docs:
            for path in sorted(TOPOLOGY_DIR.glob("*.yml")):
                topo = load(path)
                (PROJECT_ROOT / doc_path(topo.name)).write_text(document(topo))
                print(f"wrote {doc_path(topo.name)}")
            return 0
        print(mermaid(load(args.topology)), end="")
    except TopologyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
