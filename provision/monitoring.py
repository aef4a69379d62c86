"""What the monitoring reads from the topology: which exporters each host runs, where its
agent pushes, and where its logs go. Pure logic, shared by the agent, monitor and logs
roles, `fab logs` and the tests."""

from __future__ import annotations

from dataclasses import dataclass

from provision import layout, secrets
from provision.topology import Host, Topology

SCRAPE_INTERVAL = "5s"


@dataclass(frozen=True)
class Target:
    job: str
    address: str
    role: str
    path: str = "/metrics"
    labels_from_source: bool = False
    """The exporter's own `host` label wins over the scraping host's (honor_labels): mtail
    counts other hosts' log lines, each under the host that logged it."""


def monitor_host(topology: Topology) -> Host | None:
    hosts = topology.with_role("monitor")
    return hosts[0] if hosts else None


def reporting_hosts(topology: Topology) -> list[Host]:
    """Hosts whose agent a flow lets push to the monitor (the outside client, which shares
    only the users' network with it, may not), and the monitor itself."""
    mon = monitor_host(topology)
    if mon is None:
        return []
    if "prometheus" not in topology.ports:
        return [mon]
    port = topology.port("prometheus")
    pushing = {
        p.source.name
        for p in topology.allowed_paths()
        if p.dest is mon and p.port == port and p.proto == "tcp"
    }
    return [h for h in topology if h is mon or h.name in pushing]


def targets(topology: Topology, host: Host) -> list[Target]:
    """The exporters on `host`, all on loopback."""
    found = [Target("node", layout.NODE_EXPORTER_LISTEN, ",".join(host.roles))]
    if host.has_role("lb"):
        stats = topology.port("haproxy-stats")
        found.append(Target("haproxy", f"127.0.0.1:{stats}", "lb"))
    if host.has_role("web"):
        found.append(Target("nginx", layout.NGINX_EXPORTER_LISTEN, "web"))
    if host.has_role("app"):
        found.append(Target("app", layout.APP_LISTEN, "app"))
    if host.has_role("db-primary") or host.has_role("db-replica"):
        found.append(Target("mysqld", layout.MYSQLD_EXPORTER_LISTEN, "db"))
    if host.has_role("monitor"):
        found.append(Target("mtail", layout.MTAIL_LISTEN, "monitor", labels_from_source=True))
        found.append(Target("blackbox", layout.BLACKBOX_LISTEN, "monitor"))
    return found


@dataclass(frozen=True)
class Probe:
    """A synthetic check the monitor's blackbox exporter runs, as a client would."""

    module: str
    """The blackbox module (templates/blackbox.yml.j2): site_https, site_redirect, tcp_connect."""
    target: str
    host: str
    """The host checked (the series' `host` label), not the monitor that checks it."""
    role: str
    service: str
    """The name under `ports:` of the port checked."""
    network: str = ""
    """The network the check goes over: the private one, or the users' (as a user would)."""


SITE_MODULES = {"site-https": ("site_https", "https"), "site-http": ("site_redirect", "http")}
NO_TCP_PROBE = {"mysql"}
"""Ports a bare connect must not touch: MariaDB counts a connection closed before its
handshake as an error of the client's host, and refuses that host (the monitor, whose
controller promotes replicas) after max_connect_errors of them. The dbcheck agent beside
each node answers for it."""


def probes(topology: Topology) -> list[Probe]:
    """Every check the monitor runs: a TCP connect to each port a flow lets it reach, and on
    the site's ports, the site itself (HTTPS for the site's name, with the testbed CA) and
    the redirect to HTTPS: at each balancer's private address, and at the site's public
    address as a user reaches it (the floating address where there is one, checked once,
    under the address's name). Only what the flows allow, at the address they allow."""
    mon = monitor_host(topology)
    if mon is None:
        return []
    floating = {v.address: v for v in topology.vips.values()}
    found: set[Probe] = set()
    for path in topology.allowed_paths():
        if path.source is not mon or path.proto != "tcp" or path.service in NO_TCP_PROBE:
            continue
        vip = floating.get(path.address)
        host = vip.name if vip else path.dest.name
        role = vip.role if vip else ",".join(path.dest.roles)
        address, port, net = path.address, path.port, path.network
        found.add(Probe("tcp_connect", f"{address}:{port}", host, role, path.service, net))
        if path.service in SITE_MODULES:
            module, scheme_ = SITE_MODULES[path.service]
            url = f"{scheme_}://{address}:{port}/"
            found.add(Probe(module, url, host, role, path.service, net))
    return sorted(found, key=lambda p: (p.module, p.host, p.target))


AGENT_USER = "agent"
"""The monitor's basic-auth user the agents push as (option monitor_tls)."""
OPERATOR_USER = "operator"
"""The monitor's basic-auth user for people and tests: queries, the dashboard."""
TLS_DIR = "/etc/prometheus/tls"
CA_FILE = f"{TLS_DIR}/ca.crt"
AGENT_PASSWORD_FILE = "/etc/prometheus/agent.password"
OPERATOR_PASSWORD_FILE = "/etc/prometheus/operator.password"
WEB_CONFIG = "/etc/prometheus/web.yml"


def uses_tls(topology: Topology) -> bool:
    """Option `monitor_tls`: the monitor's Prometheus answers HTTPS only, to its users only."""
    return bool(topology.option("monitor_tls", False))


def scheme(topology: Topology) -> str:
    return "https" if uses_tls(topology) else "http"


def password_secret(user: str) -> str:
    """The name of the secret (provision/secrets.py) holding a monitor user's password."""
    return f"prometheus-{user}"


def server_certificate(topology: Topology, host: Host) -> secrets.KeyPair:
    """The monitor's certificate from the internal CA: its name (the agents' server_name,
    the log senders' permitted peer), every address it has, and loopback (the operator's
    forwarded port). Shared by Prometheus (monitor role) and rsyslog (logs role)."""
    ips = [str(a) for a in host.addresses.values()] + ["127.0.0.1"]
    return secrets.leaf("monitor-prometheus", [host.name, "localhost"], ips)


def remote_write_url(topology: Topology, host: Host) -> str:
    mon = monitor_host(topology)
    assert mon is not None
    port = topology.port("prometheus")
    return f"{scheme(topology)}://{topology.address_for(host, mon)}:{port}/api/v1/write"


# --------------------------------------------------------------------------- central logs

LOG_DIR = "/var/log/remote"
"""On the monitor: one file per host, <host>.log, its own included (the logs role)."""
SYSLOG_TLS_DIR = "/etc/rsyslog-tls"
SYSLOG_CA_FILE = f"{SYSLOG_TLS_DIR}/ca.crt"
SYSLOG_CERT_FILE = f"{SYSLOG_TLS_DIR}/host.crt"
"""A sender's client certificate, or the monitor's server certificate."""
SYSLOG_KEY_FILE = f"{SYSLOG_TLS_DIR}/host.key"
SYSLOG_CONFIG = "/etc/rsyslog.d/60-webinfra-testbed.conf"


def log_senders(topology: Topology) -> list[Host]:
    """Hosts that ship their logs to the monitor: every host sharing a network with it
    (the outside client shares none), the monitor itself not (it writes its own)."""
    mon = monitor_host(topology)
    return [h for h in reporting_hosts(topology) if h is not mon]


def log_file(host_name: str) -> str:
    """Where the monitor keeps a host's logs."""
    return f"{LOG_DIR}/{host_name}.log"


def syslog_target(topology: Topology, host: Host) -> str:
    """The monitor's address `host` ships its logs to (on a network they share)."""
    mon = monitor_host(topology)
    assert mon is not None
    return str(topology.address_for(host, mon))


def syslog_listen_addresses(topology: Topology) -> list[str]:
    """The monitor's addresses its senders reach it at (its private one): rsyslog listens
    there only, never on the management interface."""
    return sorted({syslog_target(topology, h) for h in log_senders(topology)})


# --------------------------------------------------------------------------- SNMP

SNMP_MODULE = "testbed"
"""The snmp_exporter module (monitor role, templates/snmp.yml.j2): what it walks, as whom."""
SNMP_AUTH = ("SHA-256", "SHA256")
"""SNMPv3 authentication: net-snmp's name for it, then snmp_exporter's."""
SNMP_PRIV = ("AES", "AES")
"""SNMPv3 privacy (AES-128): net-snmp's name, then snmp_exporter's."""
SNMP_OIDS = {
    "system": ".1.3.6.1.2.1.1",
    "interfaces": ".1.3.6.1.2.1.2",
    "ifXTable": ".1.3.6.1.2.1.31",
    "hrSystem": ".1.3.6.1.2.1.25.1",
    "ucdMemory": ".1.3.6.1.4.1.2021.4",
    "laTable": ".1.3.6.1.4.1.2021.10",
}
"""The only subtrees the SNMP user may read (snmpd's view): what the monitor polls."""
SNMP_CLIENT_CONFIG = "/root/.snmp/snmp.conf"
"""On the monitor: the net-snmp tools' defaults for root, the testbed's user and passwords
(`snmpget 192.168.57.21 .1.3.6.1.2.1.1.5.0` asks as it)."""


@dataclass(frozen=True)
class SnmpUser:
    """The testbed's one SNMPv3 user (authPriv), generated at the first deploy."""

    name: str
    auth_password: str
    priv_password: str


def snmp_user() -> SnmpUser:
    """A user name and two passwords, generated once per testbed (provision/secrets.py)."""
    return SnmpUser(
        name=f"monitor-{secrets.password('snmp-user')[:12]}",
        auth_password=secrets.password("snmp-auth"),
        priv_password=secrets.password("snmp-priv"),
    )


def snmp_address(topology: Topology, host: Host) -> str:
    """Where `host`'s snmpd listens: its address on the network it shares with the monitor
    (the private one), never the management or public interface."""
    mon = monitor_host(topology)
    assert mon is not None
    return str(host.addresses[topology.network_between(mon, host) or next(iter(host.addresses))])


def snmp_targets(topology: Topology) -> list[Probe]:
    """Every host the monitor polls over SNMP (snmp_exporter): each reporting host, at
    snmp_address, the monitor included (its own snmpd, over loopback)."""
    port = topology.port("snmp")
    return [
        Probe(SNMP_MODULE, f"{snmp_address(topology, h)}:{port}", h.name, ",".join(h.roles), "snmp")
        for h in reporting_hosts(topology)
    ]
