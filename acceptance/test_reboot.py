"""After a machine restarts (`vagrant reload`), its firewall is back exactly as it was.

Disruptive: it restarts web2, so conftest runs it after every other test.
"""

from __future__ import annotations

import subprocess

import pytest
import testinfra

from acceptance.conftest import TOPOLOGY, fab
from provision import PROJECT_ROOT

RULES = "iptables -S; ip6tables -S"


@pytest.mark.disruptive
def test_firewall_rules_are_unchanged_after_vagrant_reload(
    machines: dict[str, testinfra.host.Host], ssh_config: object
) -> None:
    name = "web2"
    before = machines[name].check_output(RULES)
    res = subprocess.run(
        ["vagrant", "reload", name], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    # A fresh connection: the session's one died with the machine.
    fresh = testinfra.get_host(f"paramiko://{name}", ssh_config=str(ssh_config), sudo=True)
    try:
        after = fresh.check_output(RULES)
        assert after == before
        assert TOPOLOGY.hosts[name].name == fresh.check_output("hostname")
    finally:
        # Docker rewrites /etc/hosts on restart; put the machine back as deployed.
        fab("deploy", "--only", name)
