"""The `lb` role: HAProxy terminating TLS for the site and balancing the web servers.

Frontend 443 with the Mozilla intermediate profile (provision/tls.py) and HSTS;
frontend 80 answering every request with a 301 to the https URL; round-robin over
the web servers with active health checks on /health, redispatch and retries; an
`X-Served-By` header naming the server that answered; stats and the built-in
Prometheus exporter on the private network only. Config changes are validated
with `haproxy -c` and applied with a reload, which drops no connection.
"""

from __future__ import annotations

from dataclasses import dataclass

from provision import secrets, tls
from provision.engine import (
    File,
    HostContext,
    Packages,
    Role,
    Service,
    Step,
    reload_handler,
    render,
)
from provision.roles import web
from provision.topology import Host, Topology

CERT = "/etc/haproxy/certs/site.pem"
CA = "/etc/haproxy/testbed-ca.pem"
CONFIG = "/etc/haproxy/haproxy.cfg"
STATS_PORT = 8404
HTTP_REQUEST_TIMEOUT = "5s"
"""How long a client may take to send its request headers (slowloris guard)."""


@dataclass(frozen=True)
class Backend:
    name: str
    address: str
    port: int


def site_certificate(topology: Topology, renew: bool = False) -> secrets.KeyPair:
    """The certificate for the site's names, the load balancers' addresses and 127.0.0.1."""
    ips = sorted({str(a) for lb in topology.with_role("lb") for a in lb.addresses.values()})
    return secrets.leaf("site", list(topology.site.names), [*ips, "127.0.0.1"], renew=renew)


def accepted_hosts(topology: Topology, lb: Host) -> list[str]:
    """Host header values (port stripped) the site answers to; others get 421."""
    return [*topology.site.names, *(str(a) for a in lb.addresses.values()), "127.0.0.1"]


def port_map(lb: Host) -> list[tuple[int, int]]:
    """(host port of 80, host port of 443) when both are forwarded to the host's loopback:
    a redirect that arrives through the forwarded http port must name the forwarded https
    port."""
    http, https = lb.forward.get(80), lb.forward.get(443)
    return [(http, https)] if http and https else []


def steps(ctx: HostContext) -> list[Step]:
    topo, host = ctx.topology, ctx.host
    reencrypt = bool(topo.option("reencrypt", False))
    port = web.backend_port(topo)
    backends = [
        Backend(w.name, str(topo.address_for(host, w)), port) for w in topo.with_role("web")
    ]
    stats_address = str(host.addresses.get("private", host.primary_address))
    config = render(
        "lb",
        "haproxy.cfg.j2",
        policy=tls.INTERMEDIATE,
        cert=CERT,
        ca=CA,
        site=topo.site.name,
        hosts=accepted_hosts(topo, host),
        port_map=port_map(host),
        backends=backends,
        reencrypt=reencrypt,
        stats_bind=f"{stats_address}:{STATS_PORT}",
        stats_port=STATS_PORT,
        http_request_timeout=HTTP_REQUEST_TIMEOUT,
    )
    return [
        Packages(("haproxy",), name="Ensure HAProxy is installed."),
        File(
            CA,
            secrets.ca().cert_pem,
            notify=["reload haproxy"],
            name="Ensure the testbed CA is installed (to verify backends).",
        ),
        File(
            CERT,
            site_certificate(topo).bundle,
            mode="0600",
            owner="haproxy",
            group="haproxy",
            secret=True,
            notify=["reload haproxy"],
            name=f"Ensure the certificate for {topo.site.name} is installed (0600).",
        ),
        File(
            CONFIG,
            config,
            validate="haproxy -c -q -f {path}",
            notify=["reload haproxy"],
            name="Ensure haproxy.cfg terminates TLS and balances the web servers.",
        ),
        Service("haproxy", name="Ensure HAProxy is enabled and running."),
    ]


ROLE = Role("lb", "lb", steps, handlers=[reload_handler("haproxy")])
