"""Firewall rules computed from the topology's allowed flows (pure logic, no I/O).

Per host: INPUT, FORWARD and OUTPUT drop by default. In: loopback, established/related
and the ICMP that TCP needs are accepted; each allowed flow becomes one ACCEPT naming the
flow, bound to the interface and address it arrives at; SSH (and the ports the topology
forwards) are accepted only from the management source (the address the deploy's own SSH
session comes from) on the management interface; the rest is logged (rate-limited, NFLOG
to ulogd2, prefix naming the host) and dropped. Out: loopback, replies, each flow this
host starts (to its destination address and port, out of its interface), DNS, and
package downloads (apt's fetcher, which runs as `_apt`); the rest is
logged and refused, so a local process fails at once and says so. The `client` machine
stands for the Internet: its egress is left open. IPv6: the topology has no IPv6 flows,
so only loopback, replies and neighbour discovery pass, either way.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from provision.topology import PORTLESS, Host, Topology

LOG_GROUP = 0
"""NFLOG group ulogd2's default stack reads (written to /var/log/ulog/syslogemu.log)."""

OPEN_EGRESS_ROLES = ("client",)
"""Roles whose machines stand for the outside world: their OUTPUT stays open (a scan from
the client must test the balancers' own rules, not the client's)."""

APT_USER = "_apt"
"""apt downloads with its methods dropped to this user: the one egress to the package
mirror, whatever its address (read from the machine's own apt sources by apt itself)."""


class FirewallError(ValueError):
    """The rules cannot be written for this host (an address no interface holds)."""


@dataclass(frozen=True)
class Nics:
    """Where a host's packets enter and leave, read from its facts at deploy time."""

    by_address: Mapping[str, str]
    """Each IPv4 address of the host -> the interface that holds it."""
    management: str = ""
    """The interface the management source is reached through (`ip route get`)."""

    @classmethod
    def from_facts(cls, facts: Mapping[str, str]) -> Nics:
        by_address = {}
        for item in facts.get("interfaces", "").split():
            name, _, cidr = item.partition("=")
            by_address[cidr.split("/")[0]] = name
        return cls(by_address, facts.get("ssh_iface", ""))

    def of(self, host: Host, network: str) -> str:
        address = str(host.addresses[network])
        try:
            return self.by_address[address]
        except KeyError:
            held = ", ".join(f"{a} on {i}" for a, i in sorted(self.by_address.items()))
            raise FirewallError(
                f"{host.name}: no interface holds its {network} address {address} "
                f"(it has: {held or 'no IPv4 address'}); is the machine on that network?"
            ) from None

    def management_address(self) -> str:
        """The host's own address on the management interface ("" if it has none)."""
        return next((a for a, i in self.by_address.items() if i == self.management), "")


def egress_open(host: Host) -> bool:
    return any(host.has_role(role) for role in OPEN_EGRESS_ROLES)


@dataclass(frozen=True)
class Accept:
    source: str
    """A host name, or 'management' for the SSH rule."""
    source_address: str
    address: str
    port: int
    proto: str
    comment: str
    interface: str = ""
    """The interface it arrives on ("" when the host's interfaces are not known: docs)."""

    def rule(self) -> str:
        nic = f" -i {self.interface}" if self.interface else ""
        dest = f" -d {self.address}/32" if self.address else ""
        return (
            f"-A INPUT{nic} -s {self.source_address}{dest} {_match(self.proto, self.port)} "
            f'-m comment --comment "{self.comment}" -j ACCEPT'
        )


def _match(proto: str, port: int) -> str:
    return f"-p {proto}" + (f" -m {proto} --dport {port}" if proto not in PORTLESS else "")


def accepts(
    topology: Topology, host: Host, management: str, nics: Nics | None = None
) -> list[Accept]:
    """The ACCEPT rules of `host`, SSH first, then the flows in topology order. With the
    host's `nics`, each is bound to its interface, and the management ones to the host's
    own address there."""
    mgmt = str(ipaddress.ip_network(management, strict=False))
    mgmt_nic = nics.management if nics else ""
    mgmt_to = nics.management_address() if nics else ""
    rules = [
        Accept("management", mgmt, mgmt_to, 22, "tcp", "ssh from the management path", mgmt_nic)
    ]
    # Ports the topology forwards to the host's loopback arrive from the management path too.
    rules += [
        Accept(
            "management",
            mgmt,
            mgmt_to,
            guest,
            "tcp",
            f"forwarded to the host's 127.0.0.1:{local}",
            mgmt_nic,
        )
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
                nics.of(host, vip.network) if nics else "",
            )
            for service in vip.host_ports
        ]
    for path in topology.allowed_paths():
        if path.dest.name != host.name:
            continue
        src = path.source.addresses[path.network]
        comment = f"flow {path.source.name}->{host.name} {_what(path.proto, path.port)}: {path.why}"
        rules.append(
            Accept(
                path.source.name,
                f"{src}/32",
                str(path.address),
                path.port,
                path.proto,
                comment,
                nics.of(host, path.network) if nics else "",
            )
        )
    return rules


def _what(proto: str, port: int) -> str:
    return proto if proto in PORTLESS else f"{port}/{proto}"


def egress(topology: Topology, host: Host, nics: Nics | None = None) -> list[str]:
    """The OUTPUT ACCEPT rules of `host`: each flow it starts (out of its interface, to
    the destination address and port), DNS, DHCP, and apt's downloads.
    The template skips them for a host whose egress is open (egress_open)."""
    rules = []
    for path in topology.allowed_paths():
        if path.source.name != host.name:
            continue
        nic = f" -o {nics.of(host, path.network)}" if nics else ""
        rules.append(
            f"-A OUTPUT{nic} -d {path.address}/32 {_match(path.proto, path.port)} "
            f'-m comment --comment "flow {host.name}->{path.dest.name} '
            f'{_what(path.proto, path.port)}: {path.why}" -j ACCEPT'
        )
    for out in topology.egress:
        if host.has_role(out.role):
            rules.append(
                f"-A OUTPUT -d {out.to} -p {out.proto} -m {out.proto} --dport {out.port} "
                f'-m comment --comment "egress {out.role}->{out.to} {out.port}/{out.proto}: '
                f'{out.why}" -j ACCEPT'
            )
    # DNS to any server: docker's embedded resolver (127.0.0.11) forwards a machine's
    # queries to the host's resolvers from inside the machine's own network namespace, so
    # the real servers are not the ones /etc/resolv.conf names.
    rules += [
        f"-A OUTPUT -p {proto} -m {proto} --dport 53 "
        '-m comment --comment "dns (to any resolver: docker forwards from inside)" -j ACCEPT'
        for proto in ("udp", "tcp")
    ]
    rules += [
        "-A OUTPUT -p udp -m udp --sport 68 --dport 67 "
        '-m comment --comment "dhcp lease renewals (a VM\'s NAT interface)" -j ACCEPT',
        f"-A OUTPUT -p tcp -m owner --uid-owner {APT_USER} "
        '-m comment --comment "package downloads: apt\'s fetcher runs as _apt" -j ACCEPT',
    ]
    return rules


def stray_resets(topology: Topology, accepts_: list[Accept]) -> list[str]:
    """For the floating addresses (VIPs): answer a TCP packet of a connection this host does
    not know (conntrack INVALID) with a reset, from the sources allowed there.

    When the address moves, the clients' open connections arrive at the new holder, which
    never saw them. Dropped (the default for INVALID), each client waits out its own
    time-out (10 s for Locust) before it reconnects; reset, it reconnects at once."""
    vips = {str(v.address) for v in topology.vips.values()}
    return [
        f"-A INPUT{f' -i {a.interface}' if a.interface else ''} -s {a.source_address} "
        f"-d {a.address}/32 -p tcp -m tcp --dport {a.port} "
        f'-m conntrack --ctstate INVALID -m comment --comment "reset a moved connection '
        f'({a.source}, {a.port}/tcp)" -j REJECT --reject-with tcp-reset'
        for a in accepts_
        if a.address in vips and a.proto == "tcp"
    ]


SITE_PORTS = ("site-https", "site-http")


def restart_holds(topology: Topology, host: Host, accepts_: list[Accept]) -> list[str]:
    """On a load balancer, for each accepted way to the site's ports: a new connection that
    finds no listener (HAProxy restarting after a crash, or stopped while its address
    moves) is dropped, not refused, so the client's TCP sends it again a second later,
    when HAProxy is back or the other balancer has the address, instead of failing.

    `-m socket --nowildcard` matches a packet for which a socket exists, HAProxy's
    wildcard listener included; the SYN that matches none falls to the DROP."""
    if not host.has_role("lb"):
        return []
    ports = {topology.port(p) for p in SITE_PORTS}
    rules = []
    for a in accepts_:
        if a.proto != "tcp" or a.port not in ports:
            continue
        match = (
            f"-A INPUT{f' -i {a.interface}' if a.interface else ''} -s {a.source_address}"
            f"{f' -d {a.address}/32' if a.address else ''} -p tcp -m tcp --dport {a.port} "
            "--tcp-flags FIN,SYN,RST,ACK SYN"
        )
        rules += [
            f'{match} -m socket --nowildcard -m comment --comment "site port {a.port}: '
            f'HAProxy listens ({a.source})" -j ACCEPT',
            f'{match} -m comment --comment "site port {a.port}: no listener yet, the client '
            f'retries ({a.source})" -j DROP',
        ]
    return rules


def log_prefix(host: Host) -> str:
    # NFLOG prefixes are at most 64 bytes; host names are short.
    return f"fw-drop {host.name}: "


def egress_log_prefix(host: Host) -> str:
    return f"fw-egress {host.name}: "


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
