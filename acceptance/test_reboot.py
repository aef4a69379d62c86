"""After a machine restarts (stopped, then started again), its firewall and its name
resolution are back exactly as deployed.

Disruptive: it restarts a web host that does not hold the database primary (seed: web2,
which also holds a replica, so the one restart restores the database rules too), so
conftest runs it after every other test. With an inventory, the host's power commands
restart it (docs/inventory.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import testinfra

from acceptance.conftest import TOPOLOGY, connect
from provision.power import Power
from provision.testkit import fab

# Restarting the database primary would be a failover drill (test_failover.py).
HOST = next(h.name for h in TOPOLOGY.with_role("web") if not h.has_role("db-primary"))


def _rules(machine: testinfra.host.Host) -> list[str]:
    """`iptables -S` then `ip6tables -S` (filter table), through testinfra's iptables module."""
    return machine.iptables.rules(version=4) + machine.iptables.rules(version=6)


@pytest.mark.disruptive
def test_firewall_rules_are_unchanged_after_the_machine_restarts(
    machines: dict[str, testinfra.host.Host], ssh_config: Path, power: Power
) -> None:
    if not power.available(HOST):
        pytest.skip(f"the inventory gives no power commands for {HOST} (docs/inventory.md)")
    before = _rules(machines[HOST])
    assert before, "no rules read before the restart"
    hosts_before = machines[HOST].file("/etc/hosts").content_string
    assert any(h.name in hosts_before.split() for h in TOPOLOGY if h.name != HOST)
    power.restart(HOST)
    # A fresh connection: the session's one died with the machine.
    fresh = connect(HOST, ssh_config)
    try:
        after = _rules(fresh)
        assert after == before
        assert fresh.sysctl("kernel.hostname") == HOST
        # Docker writes its own /etc/hosts at every start; a boot unit puts ours back.
        assert fresh.file("/etc/hosts").content_string == hosts_before
    except Exception:
        fab("deploy", "--only", HOST)  # leave the machine as deployed for the next tests
        raise
