"""Firewall rules computed from the topology's allowed flows (pure logic, no I/O).

Per host: INPUT and FORWARD drop by default; loopback, established/related and
the ICMP that TCP needs are accepted; each allowed flow becomes one ACCEPT naming
the flow; SSH is accepted only from the management source (the address the
deploy's own SSH session comes from); the rest is logged (rate-limited, NFLOG to
ulogd2, prefix naming the host) and dropped. IPv6: the topology has no IPv6
flows, so only loopback, established traffic and neighbour discovery pass.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from provision.topology import PORTLESS, Host, Topology

LOG_GROUP = 0
"""NFLOG group ulogd2's default stack reads (written to /var/log/ulog/syslogemu.log)."""


@dataclass(frozen=True)
class Accept:
    source: str
    """A host name, or 'management' for the SSH rule."""
    source_address: str
    address: str
    port: int
    proto: str
    comment: str

    def rule(self) -> str:
        dest = f" -d {self.address}/32" if self.address else ""
        match = f"-p {self.proto}" + (
            f" -m {self.proto} --dport {self.port}" if self.proto not in PORTLESS else ""
        )
        return (
            f"-A INPUT -s {self.source_address}{dest} {match} "
            f'-m comment --comment "{self.comment}" -j ACCEPT'
        )


def accepts(topology: Topology, host: Host, management: str) -> list[Accept]:
    """The ACCEPT rules of `host`, SSH first, then the flows in topology order."""
    mgmt = str(ipaddress.ip_network(management, strict=False))
    rules = [Accept("management", mgmt, "", 22, "tcp", "ssh from the management path")]
    # Ports the topology forwards to the host's loopback arrive from the management path too.
    rules += [
        Accept("management", mgmt, "", guest, "tcp", f"forwarded to the host's 127.0.0.1:{local}")
        for guest, local in sorted(host.forward.items())
    ]
    # A floating address (VIP) this host may hold: the operator's machine (the network's
    # .1, the docker bridge or vboxnet) reaches the ports the topology opens to it there.
    for vip in topology.vips.values():
        if not host.has_role(vip.role) or vip.network not in host.addresses:
            continue
        gateway = topology.networks[vip.network].gateway
        rules += [
            Accept(
                "operator",
                f"{gateway}/32",
                str(vip.address),
                topology.port(service),
                "tcp",
                f"the operator's machine reaches {service} at vip {vip.name}",
            )
            for service in vip.host_ports
        ]
    for path in topology.allowed_paths():
        if path.dest.name != host.name:
            continue
        src = path.source.addresses[path.network]
        what = path.proto if path.proto in PORTLESS else f"{path.port}/{path.proto}"
        comment = f"flow {path.source.name}->{host.name} {what}: {path.why}"
        rules.append(
            Accept(path.source.name, f"{src}/32", str(path.address), path.port, path.proto, comment)
        )
    return rules


def stray_resets(topology: Topology, accepts_: list[Accept]) -> list[str]:
    """For the floating addresses (VIPs): answer a TCP packet of a connection this host does
    not know (conntrack INVALID) with a reset, from the sources allowed there.

    When the address moves, the clients' open connections arrive at the new holder, which
    never saw them. Dropped (the default for INVALID), each client waits out its own
    time-out (10 s for Locust) before it reconnects; reset, it reconnects at once."""
    vips = {str(v.address) for v in topology.vips.values()}
    return [
        f"-A INPUT -s {a.source_address} -d {a.address}/32 -p tcp -m tcp --dport {a.port} "
        f'-m conntrack --ctstate INVALID -m comment --comment "reset a moved connection '
        f'({a.source}, {a.port}/tcp)" -j REJECT --reject-with tcp-reset'
        for a in accepts_
        if a.address in vips and a.proto == "tcp"
    ]


def log_prefix(host: Host) -> str:
    # NFLOG prefixes are at most 64 bytes; host names are short.
    return f"fw-drop {host.name}: "


def matrix_markdown(topology: Topology) -> str:
    """The allowed-flows matrix as a Markdown table (docs/firewall.md embeds it)."""
    lines = [
        "| source | destination | address (network) | port | why |",
        "|---|---|---|---|---|",
    ]
    for p in topology.allowed_paths():
        lines.append(
            f"| {p.source.name} | {p.dest.name} | {p.address} ({p.network}) "
            f"| {p.port}/{p.proto} | {p.why} |"
        )
    lines.append("| management path | every host | every address | 22/tcp | SSH for deploys |")
    for host in topology:
        for guest, local in sorted(host.forward.items()):
            lines.append(
                f"| management path | {host.name} | every address | {guest}/tcp "
                f"| forwarded to the host's 127.0.0.1:{local} |"
            )
    return "\n".join(lines)


def parse_live_accepts(rules: str) -> list[tuple[str, str, str]]:
    """(source, destination port, comment) of each ACCEPT in `iptables -S INPUT` output."""
    import shlex

    found = []
    for line in rules.splitlines():
        words = shlex.split(line)
        if words[:2] != ["-A", "INPUT"] or words[-2:] != ["-j", "ACCEPT"] or "--dport" not in words:
            continue
        source = words[words.index("-s") + 1] if "-s" in words else "anywhere"
        port = words[words.index("--dport") + 1]
        proto = words[words.index("-p") + 1] if "-p" in words else "?"
        comment = words[words.index("--comment") + 1] if "--comment" in words else ""
        found.append((source, f"{port}/{proto}", comment))
    return found


BEGIN, END = "<!-- flow-matrix:begin -->", "<!-- flow-matrix:end -->"


def update_doc(doc: str, topology: Topology) -> str:
    """Replace the generated matrix between the markers of docs/firewall.md."""
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    generated = (
        f"\n<!-- generated by `python -m provision.firewall --write-docs` from "
        f"topologies/{topology.name}.yml; do not edit by hand -->\n"
        f"{matrix_markdown(topology)}\n"
    )
    return f"{head}{BEGIN}{generated}{END}{tail}"


if __name__ == "__main__":
    import argparse
    import sys

    from provision import PROJECT_ROOT
    from provision.topology import TopologyError, load

    parser = argparse.ArgumentParser(
        prog="python -m provision.firewall",
        description="Print a topology's allowed-flow matrix, or rewrite it in docs/firewall.md.",
    )
    parser.add_argument("topology", nargs="?", default="seed")
    parser.add_argument("--write-docs", action="store_true", help="update docs/firewall.md")
    args = parser.parse_args()
    try:
        topo = load(args.topology)
    except TopologyError as exc:
        sys.exit(f"error: {exc}")
    if args.write_docs:
        path = PROJECT_ROOT / "docs" / "firewall.md"
        path.write_text(update_doc(path.read_text(), topo))
        print(f"updated {path.relative_to(PROJECT_ROOT)}")
    else:
        print(matrix_markdown(topo))
