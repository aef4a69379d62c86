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

from provision import secrets, site, tls
from provision.engine import (
    File,
    Handler,
    HostContext,
    Packages,
    Role,
    Service,
    Step,
    StepError,
    interface_of,
    reload_handler,
    render,
    restart_handler,
)
from provision.topology import Host, Topology

CERT = "/etc/haproxy/certs/site.pem"
CA = "/etc/haproxy/testbed-ca.pem"
CLIENT_CERT = "/etc/haproxy/certs/backend-client.pem"
"""The balancers' client certificate: web servers accept TLS only from its holder (mTLS)."""
CONFIG = "/etc/haproxy/haproxy.cfg"
HTTP_REQUEST_TIMEOUT = "5s"


def limit(topo: Topology, name: str) -> int:
    """An edge limit (topology option): per client address, connections held at once
    (edge_conns_per_client) and requests per 10 s (edge_requests_per_10s); connections in
    all (edge_maxconn, HAProxy's global maxconn)."""
    value = topo.option(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"topology option {name}: expected a positive whole number, got {value!r}")
    return value


"""How long a client may take to send its request headers (slowloris guard)."""


@dataclass(frozen=True)
class Backend:
    name: str
    address: str
    port: int


def port_map(topology: Topology, lb: Host) -> list[tuple[int, int]]:
    """(host port of site-http, host port of site-https) when both are forwarded to the
    host's loopback: a redirect that arrives through the forwarded http port must name the
    forwarded https port."""
    http, https = topology.forwarded(lb, "site-http"), topology.forwarded(lb, "site-https")
    return [(http, https)] if http and https else []


def stats_bind_address(topo: Topology, lb: Host) -> str:
    """Where the stats page listens: the one address of `lb` the flows let its readers
    reach it at (the haproxy-stats port), else the machine's primary address. Never a
    floating address: the standby balancer could not bind it."""
    at = {
        p.address
        for p in topo.allowed_paths()
        if p.dest.name == lb.name and p.service == "haproxy-stats"
    }
    floating = sorted(str(a) for a in at if a not in lb.addresses.values())
    if floating:
        raise StepError(
            f"{lb.name}: the flows reach the stats page only at the floating address "
            f"{', '.join(floating)}; HAProxy on the standby balancer could not bind it. "
            "Give the stats flow a network where the balancers have no floating address."
        )
    if len(at) > 1:
        raise StepError(
            f"{lb.name}: the flows reach the stats page at {sorted(map(str, at))}; "
            "HAProxy binds one"
        )
    return str(at.pop()) if at else str(lb.primary_address)


def steps(ctx: HostContext) -> list[Step]:
    topo, host = ctx.topology, ctx.host
    reencrypt = bool(topo.option("reencrypt", False))
    port = site.backend_port(topo)
    stats_port = topo.port("haproxy-stats")
    backends = [
        Backend(w.name, str(topo.address_for(host, w)), port) for w in topo.with_role("web")
    ]
    stats_address = stats_bind_address(topo, host)
    config = render(
        "lb",
        "haproxy.cfg.j2",
        policy=tls.INTERMEDIATE,
        cert=CERT,
        ca=CA,
        client_cert=CLIENT_CERT,
        site=topo.site.name,
        hosts=site.accepted_hosts(topo, host),
        port_map=port_map(topo, host),
        https_port=topo.port("site-https"),
        http_port=topo.port("site-http"),
        backends=backends,
        reencrypt=reencrypt,
        stats_bind=f"{stats_address}:{stats_port}",
        stats_port=stats_port,
        http_request_timeout=HTTP_REQUEST_TIMEOUT,
        edge_conns_per_client=limit(topo, "edge_conns_per_client"),
        edge_requests_per_10s=limit(topo, "edge_requests_per_10s"),
        edge_maxconn=limit(topo, "edge_maxconn"),
    )
    return [
        Packages(("haproxy", "socat"), name="Ensure HAProxy and socat are installed."),
        File(
            CA,
            secrets.ca().cert_pem,
            notify=["reload haproxy"],
            name="Ensure the testbed CA is installed (to verify backends).",
        ),
        File(
            CERT,
            site.site_certificate(topo).bundle,
            mode="0600",
            owner="haproxy",
            group="haproxy",
            notify=["reload haproxy"],
            name=f"Ensure the certificate for {topo.site.name} is installed (0600).",
        ),
        *(
            [
                File(
                    CLIENT_CERT,
                    site.balancer_client_certificate().bundle,
                    mode="0600",
                    owner="haproxy",
                    group="haproxy",
                    notify=["reload haproxy"],
                    name="Ensure the balancers' client certificate is installed (0600).",
                )
            ]
            if reencrypt
            else []
        ),
        File(
            CONFIG,
            config,
            validate="haproxy -c -q -f {path}",
            notify=["reload haproxy"],
            name="Ensure haproxy.cfg terminates TLS and balances the web servers.",
        ),
        File(
            HAPROXY_DROPIN,
            HAPROXY_DROPIN_TEXT,
            notify=["daemon-reload"],
            name="Ensure stopping HAProxy lets the requests in flight finish.",
        ),
        Service("haproxy", name="Ensure HAProxy is enabled and running."),
        *keepalived_steps(ctx),
    ]


HAPROXY_DROPIN = "/etc/systemd/system/haproxy.service.d/60-webinfra-testbed.conf"
HAPROXY_DROPIN_TEXT = """\
# Managed by webinfra-testbed (provision/roles/lb). A stop, such as the machine shutting
# down, is HAProxy's soft stop (SIGUSR1 to the master): it stops listening, closes idle
# keep-alive connections, answers the requests in flight with `Connection: close`, and
# exits (at most `hard-stop-after` later). SIGTERM, the default, is a hard stop that
# resets every request in flight: the failures the machine-stop drill counted
# (docs/lb-failover.md).
[Service]
KillSignal=SIGUSR1
"""
KEEPALIVED_DROPIN = "/etc/systemd/system/keepalived.service.d/60-webinfra-testbed.conf"
KEEPALIVED_DROPIN_TEXT = """\
# Managed by webinfra-testbed (provision/roles/lb). Started before HAProxy, so stopped
# after it (systemd stops units in the reverse order): when the machine shuts down, the
# floating address stays here until HAProxy has finished the requests in flight, then
# moves. New connections meanwhile find no listener and are held, not refused
# (docs/firewall.md, restart_holds): the client's TCP retries them at the other balancer.
[Unit]
Before=haproxy.service
"""
DAEMON_RELOAD = Handler(
    "daemon-reload", "Reload systemd (a unit's drop-in changed).", "systemctl daemon-reload"
)


KEEPALIVED_CONFIG = "/etc/keepalived/keepalived.conf"


def keepalived_steps(ctx: HostContext) -> list[Step]:
    """keepalived, when the topology gives the balancers a floating address (vips:)."""
    topo, host = ctx.topology, ctx.host
    vips = [v for v in topo.vips.values() if host.has_role(v.role) and v.role == "lb"]
    if not vips:
        return []
    vip = vips[0]
    lbs = topo.with_role("lb")
    shared = [n for n in host.addresses if all(n in p.addresses for p in lbs)]
    if not shared:
        raise StepError(f"{host.name}: the load balancers share no network to run VRRP on")
    # VRRP runs where the flows let the balancers send it to each other (a `network:` on
    # the vrrp flow included); without such a flow, where they talk to each other (as
    # Topology.network_between picks: not the users' network unless it is the only one).
    flowed = sorted(
        {
            p.network
            for p in topo.allowed_paths()
            if p.proto == "vrrp" and p.source.name == host.name
        }
    )
    if len(flowed) > 1:
        raise StepError(f"{host.name}: the vrrp flows name several networks: {flowed}")
    inside = [n for n in shared if not topo.networks[n].users]
    vrrp_net = flowed[0] if flowed else (inside or shared)[0]
    own = str(host.addresses[vrrp_net])
    vrrp_if, vip_if = (
        interface_of(ctx.facts, own),
        interface_of(ctx.facts, str(host.addresses[vip.network])),
    )
    if not vrrp_if or not vip_if:
        raise StepError(
            f"{host.name}: no interface holds {own} or {host.addresses[vip.network]} "
            f"(facts: {ctx.facts.get('interfaces', 'none')})"
        )
    config = render(
        "lb",
        "keepalived.conf.j2",
        host=host.name,
        vip=vip,
        prefix=topo.networks[vip.network].cidr.prefixlen,
        vrrp_interface=vrrp_if,
        vip_interface=vip_if,
        own_address=own,
        peers=[str(p.addresses[vrrp_net]) for p in lbs if p.name != host.name],
        # The first balancer of the file is preferred at start; nopreempt keeps it simple.
        priority=150 - 10 * lbs.index(host),
        router_id=51,
        stats_port=topo.port("haproxy-stats"),
    )
    return [
        Packages(("keepalived", "curl"), name="Ensure keepalived (and curl) are installed."),
        File(
            KEEPALIVED_CONFIG,
            config,
            mode="0600",
            validate="keepalived -t -f {path}",
            notify=["restart keepalived"],
            name=f"Ensure keepalived shares {vip.address} with the other balancers.",
        ),
        File(
            KEEPALIVED_DROPIN,
            KEEPALIVED_DROPIN_TEXT,
            notify=["daemon-reload"],
            name="Ensure keepalived stops after HAProxy when the machine shuts down.",
        ),
        Service("keepalived", name="Ensure keepalived is enabled and running."),
    ]


ROLE = Role(
    "lb",
    "lb",
    steps,
    handlers=[DAEMON_RELOAD, reload_handler("haproxy"), restart_handler("keepalived")],
)
