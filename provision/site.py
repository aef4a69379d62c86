"""The site as the load balancers serve it: its certificate, the Host names it answers
to, and the port the load balancers reach the web tier on. Read by the lb, web and agent
roles and by `fab tls.renew`, so no role borrows these from another."""

from __future__ import annotations

from provision import secrets
from provision.topology import Host, Topology

BALANCER_CLIENT = "lb-client"
"""The name in the balancers' client certificate; the web servers accept no other (mTLS)."""


LOOPBACK = "127.0.0.1"
"""The host's forwarded ports reach the site on the loopback address."""


def authority(topology: Topology) -> secrets.KeyPair:
    """The site CA, constrained to the site's names, the topology's networks and the
    loopback address: the one CA users trust, which can vouch for nothing else."""
    networks = [str(n.cidr) for n in topology.networks.values()] + [f"{LOOPBACK}/32"]
    return secrets.site_ca(topology.site.names, networks)


def site_certificate(topology: Topology, renew: bool = False) -> secrets.KeyPair:
    """The certificate for the site's names, the load balancers' addresses and 127.0.0.1,
    signed by the site CA."""
    ips = sorted(
        {str(a) for lb in topology.with_role("lb") for a in lb.addresses.values()}
        | {str(v.address) for v in topology.vips.values() if v.role == "lb"}
    )
    return secrets.leaf(
        "site",
        list(topology.site.names),
        [*ips, LOOPBACK],
        renew=renew,
        authority=authority(topology),
    )


def accepted_hosts(topology: Topology, lb: Host) -> list[str]:
    """Host header values (port stripped) the site answers to; others get 421."""
    vips = [str(v.address) for v in topology.vips.values() if lb.has_role(v.role)]
    return [*topology.site.names, *(str(a) for a in lb.addresses.values()), *vips, "127.0.0.1"]


def backend_port(topology: Topology) -> int:
    """The port the load balancers reach web servers on: the lb -> web flow's port."""
    ports = {f.port for f in topology.flows if f.source == "lb" and f.dest == "web"}
    if len(ports) != 1:
        raise ValueError(f"topology {topology.name}: expected one lb -> web flow, found {ports}")
    return ports.pop()


def balancer_client_certificate() -> secrets.KeyPair:
    """What the load balancers show the web servers when re-encrypting: clientAuth only, so
    no server certificate of the testbed CA can pass as it, and it can serve no site."""
    return secrets.leaf(BALANCER_CLIENT, [BALANCER_CLIENT], [], client=True)
