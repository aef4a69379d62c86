"""Acceptance tests run against the real machines of a running, deployed testbed.

Where the machines are: Vagrant's (``vagrant ssh-config``) by default, or any servers
listed in an inventory file, with ``pytest acceptance/ --inventory FILE`` or
``$TESTBED_INVENTORY`` (docs/inventory.md). The same suite runs either way: tests find
hosts by role in the topology file the deploy used, and every `fab` they run gets the
same inventory. Bring the Vagrant testbed up with ./testbed up.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import testinfra

from provision import STATE_DIR, firewall, inventory, topology
from provision.inventory import Endpoint
from provision.power import Power

TOPOLOGY = topology.load()
HOST_NAMES = [h.name for h in TOPOLOGY]
FILE_OPTIONS = topology.file_options(TOPOLOGY.name)
"""The topology file's own options: what a test that changes one sets back."""


def not_allowed(source: str) -> str:
    """What acceptance/probe.py reports for a connection `source` may not make: its own
    firewall refuses to send it ("denied"), unless its egress is open (the client, which
    stands for the outside world): then the destination drops it ("filtered")."""
    return "filtered" if firewall.egress_open(TOPOLOGY.hosts[source]) else "denied"


def file_option_is_live(name: str) -> bool:
    """True when option `name` is on in the topology file and no deploy overrode it since:
    switching it on again would be a full deploy that changes nothing."""
    return bool(FILE_OPTIONS.get(name)) and name not in topology.saved_options(TOPOLOGY.name)


OPTION_TIERS = {
    "auto_failover": ("db", "monitor"),
    "edge_requests_per_10s": ("lb",),
    "edge_conns_per_client": ("lb",),
}
"""The tiers whose roles read an option (auto_failover: the db role's lease and failover
account, dbwatch on the monitor). Switching one deploys those hosts, and the hosts whose
firewall flows it changes, not the whole testbed; other options deploy every host. The
edge limits: HAProxy's config on the balancers."""


def option_hosts(name: str) -> list[str]:
    """The hosts a deploy that switches option `name` changes; [] for every host."""
    tiers = OPTION_TIERS.get(name)
    if tiers is None:
        return []

    def paths(value: bool) -> set[tuple[str, str, int]]:
        topo = topology.load(TOPOLOGY.name, {name: value})
        return {(p.source.name, p.dest.name, p.port) for p in topo.allowed_paths()}

    changed = paths(True) ^ paths(False)
    hosts = {h.name for tier in tiers for h in TOPOLOGY.in_tier(tier)}
    hosts |= {src for src, _, _ in changed} | {dest for _, dest, _ in changed}
    return [h for h in HOST_NAMES if h in hosts]


def deploy_option(name: str, value: object) -> None:
    """`fab deploy --option NAME=VALUE`, on the hosts the option changes."""
    from provision.testkit import fab

    hosts = option_hosts(name)
    only = ["--only", ",".join(hosts)] if hosts else []
    shown = str(value).lower() if isinstance(value, bool) else str(value)
    fab("deploy", "--option", f"{name}={shown}", *only)


def restore_option(name: str) -> None:
    """Set option `name` back to the file's value (options persist across deploys)."""
    if name not in topology.saved_options(TOPOLOGY.name):
        return  # the file's value is the live one
    deploy_option(name, FILE_OPTIONS.get(name, False))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--inventory",
        default=os.environ.get(inventory.INVENTORY_ENV, ""),
        help="YAML inventory of the servers to test instead of Vagrant's machines "
        f"(default: ${inventory.INVENTORY_ENV}; docs/inventory.md)",
    )


def pytest_configure(config: pytest.Config) -> None:
    given = config.getoption("--inventory", default="")
    if given:
        # Every fab a test runs, and provision's own lookups, use the same servers.
        os.environ[inventory.INVENTORY_ENV] = str(Path(given).resolve())


def pytest_report_header(config: pytest.Config) -> str:
    where = inventory.selected() or "Vagrant (vagrant ssh-config)"
    return f"testbed: topology {TOPOLOGY.name!r}, machines from {where}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.acceptance)
    # Tests that restart a machine run last, so they cannot break the others' sessions.
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)


@pytest.fixture(scope="session")
def endpoints() -> dict[str, Endpoint]:
    try:
        return inventory.load(TOPOLOGY)
    except inventory.InventoryError as exc:
        pytest.fail(
            f"cannot reach the machines: {exc} (is the testbed up? ./testbed up)", pytrace=False
        )


@pytest.fixture(scope="session")
def ssh_config(endpoints: dict[str, Endpoint]) -> Path:
    """An ssh_config naming every host, written from the endpoints (Vagrant or inventory)."""
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    path = STATE_DIR / "ssh-config-acceptance"
    blocks = []
    for ep in endpoints.values():
        lines = [
            f"Host {ep.name}",
            f"  HostName {ep.hostname}",
            f"  Port {ep.port}",
            f"  User {ep.user}",
        ]
        if ep.key_file:
            lines += [f'  IdentityFile "{ep.key_file}"', "  IdentitiesOnly yes"]
        lines += ["  StrictHostKeyChecking no", "  UserKnownHostsFile /dev/null"]
        blocks.append("\n".join(lines))
    path.write_text("\n\n".join(blocks) + "\n")
    path.chmod(0o600)
    return path


def connect(name: str, ssh_config: Path) -> testinfra.host.Host:
    """A fresh testinfra connection to `name` (root through sudo)."""
    return testinfra.get_host(f"paramiko://{name}", ssh_config=str(ssh_config), sudo=True)


@pytest.fixture(scope="session")
def machines(ssh_config: Path) -> Iterator[dict[str, testinfra.host.Host]]:
    yield {name: connect(name, ssh_config) for name in HOST_NAMES}


@pytest.fixture
def synthetic_checks_paused(machines: dict[str, testinfra.host.Host]) -> Iterator[None]:
    """The monitor's blackbox exporter stopped for one test: its checks of the site are
    requests too (one per balancer every 5 s), in the web servers' round-robin and in the
    balancers' counters, which a test that counts or orders requests must not see."""
    from provision import monitoring

    mon = monitoring.monitor_host(TOPOLOGY)
    assert mon is not None
    machines[mon.name].check_output("systemctl stop prometheus-blackbox-exporter")
    try:
        yield
    finally:
        machines[mon.name].check_output("systemctl start prometheus-blackbox-exporter")


@pytest.fixture(scope="session")
def power(endpoints: dict[str, Endpoint]) -> Power:
    """Stops and starts whole machines (Vagrant, or the inventory's power commands)."""
    return Power(TOPOLOGY, endpoints)
