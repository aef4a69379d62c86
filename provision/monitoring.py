"""What the monitoring reads from the topology: which exporters each host runs, and where
its agent pushes. Pure logic, shared by the agent and monitor roles and the tests."""

from __future__ import annotations

from dataclasses import dataclass

from provision.topology import Host, Topology

PROMETHEUS_PORT = 9090
AGENT_LISTEN = "127.0.0.1:9091"
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


def targets(host: Host) -> list[Target]:
    """The exporters on `host`, all on loopback."""
    found = [Target("node", "127.0.0.1:9100", ",".join(host.roles))]
    if host.has_role("lb"):
        found.append(Target("haproxy", "127.0.0.1:8404", "lb"))
    if host.has_role("web"):
        found.append(Target("nginx", "127.0.0.1:9113", "web"))
    if host.has_role("app"):
        found.append(Target("app", "127.0.0.1:8000", "app"))
    if host.has_role("db-primary") or host.has_role("db-replica"):
        found.append(Target("mysqld", "127.0.0.1:9104", "db"))
    return found


def remote_write_url(topology: Topology, host: Host) -> str:
    mon = monitor_host(topology)
    assert mon is not None
    return f"http://{topology.address_for(host, mon)}:{PROMETHEUS_PORT}/api/v1/write"
