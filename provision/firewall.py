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

from provision.topology import Host, Topology

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
        return (
            f"-A INPUT -s {self.source_address}{dest} -p {self.proto} -m {self.proto} "
            f'--dport {self.port} -m comment --comment "{self.comment}" -j ACCEPT'
        )


def accepts(topology: Topology, host: Host, management: str) -> list[Accept]:
    """The ACCEPT rules of `host`, SSH first, then the flows in topology order."""
    mgmt = str(ipaddress.ip_network(management, strict=False))
    rules = [Accept("management", mgmt, "", 22, "tcp", "ssh from the management path")]
    for path in topology.allowed_paths():
        if path.dest.name != host.name:
            continue
        src = path.source.addresses[path.network]
        comment = f"flow {path.source.name}->{host.name} {path.port}/{path.proto}: {path.why}"
        rules.append(
            Accept(path.source.name, f"{src}/32", str(path.address), path.port, path.proto, comment)
        )
    return rules


def log_prefix(host: Host) -> str:
    # NFLOG prefixes are at most 64 bytes; host names are short.
    return f"fw-drop {host.name}: "
