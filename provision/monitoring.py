"""What the monitoring reads from the topology: which exporters each host runs, and where
its agent pushes. Pure logic, shared by the agent and monitor roles and the tests."""

from __future__ import annotations

from dataclasses import dataclass

from provision import layout
from provision.topology import Host, Topology

SCRAPE_INTERVAL = "5s"


@dataclass(frozen=True)
class Target:
    job: str
    address: str
    role: str
    path: str = "/metrics"


def monitor_host(topology: Topology) -> Host | None:
    hosts = topology.with_role("monitor")
    return hosts[0] if hosts else None


def reporting_hosts(topology: Topology) -> list[Host]:
    """Hosts whose agent can reach the monitor (the outside client cannot, by design)."""
    mon = monitor_host(topology)
    if mon is None:
        return []
    return [h for h in topology if h is mon or topology.shared_networks(h, mon)]


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
    return found


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


def remote_write_url(topology: Topology, host: Host) -> str:
    mon = monitor_host(topology)
    assert mon is not None
    port = topology.port("prometheus")
    return f"{scheme(topology)}://{topology.address_for(host, mon)}:{port}/api/v1/write"
