"""Firewall rules generated from the topology (pure logic; no machine needed)."""

from __future__ import annotations

import pytest

from provision import PROJECT_ROOT, firewall, topology
from provision.engine import File, HostContext, render
from provision.roles import firewall as firewall_role

SEED = topology.load("seed")
MGMT = "172.17.0.1"


def _rules(name: str) -> str:
    host = SEED.hosts[name]
    return render(
        "firewall",
        "rules.v4.j2",
        host=host,
        accepts=firewall.accepts(SEED, host, MGMT),
        stray_resets=firewall.stray_resets(SEED, firewall.accepts(SEED, host, MGMT)),
        log_group=firewall.LOG_GROUP,
        prefix=firewall.log_prefix(host),
    )


@pytest.mark.parametrize("name", list(SEED.hosts))
def test_input_and_forward_policies_are_drop(name: str) -> None:
    rules = _rules(name)
    assert ":INPUT DROP [0:0]" in rules
    assert ":FORWARD DROP [0:0]" in rules


@pytest.mark.parametrize("name", list(SEED.hosts))
def test_the_management_source_reaches_ssh_and_forwarded_ports_only(name: str) -> None:
    host = SEED.hosts[name]
    mgmt = [a.port for a in firewall.accepts(SEED, host, MGMT) if a.source == "management"]
    assert mgmt == [22, *sorted(host.forward)]


@pytest.mark.parametrize("name", list(SEED.hosts))
def test_ssh_is_accepted_only_from_the_management_source(name: str) -> None:
    ssh = [line for line in _rules(name).splitlines() if "--dport 22 " in line]
    assert ssh == [line for line in ssh if f"-s {MGMT}/32 " in line]
    assert len(ssh) == 1


def test_web1_accepts_http_from_the_load_balancer_on_the_private_network_only() -> None:
    rules = _rules("web1")
    assert "-s 192.168.57.10/32 -d 192.168.57.21/32 -p tcp -m tcp --dport 80 " in rules
    assert "192.168.56.100" not in rules


def test_the_client_accepts_nothing_but_management_ssh() -> None:
    accepts = firewall.accepts(SEED, SEED.hosts["client"], MGMT)
    assert [(a.source, a.port) for a in accepts] == [("management", 22)]


def test_every_allowed_path_has_exactly_one_accept_on_its_destination() -> None:
    for path in SEED.allowed_paths():
        rules = firewall.accepts(SEED, path.dest, MGMT)
        matching = [
            a
            for a in rules
            if a.address == str(path.address)
            and a.port == path.port
            and a.source_address == f"{path.source.addresses[path.network]}/32"
        ]
        assert len(matching) == 1, path


def test_drops_are_logged_with_a_prefix_naming_the_host() -> None:
    assert '--nflog-prefix "fw-drop lb1: "' in _rules("lb1")


def test_parse_live_accepts_reads_source_port_and_comment() -> None:
    live = (
        "-P INPUT DROP\n"
        "-A INPUT -i lo -j ACCEPT\n"
        "-A INPUT -s 192.168.57.10/32 -d 192.168.57.21/32 -p tcp -m tcp --dport 80 -m comment "
        '--comment "flow lb1->web1 80/tcp: x" -j ACCEPT\n'
    )
    assert firewall.parse_live_accepts(live) == [
        ("192.168.57.10/32", "80/tcp", "flow lb1->web1 80/tcp: x")
    ]


def test_the_flow_matrix_in_the_docs_is_generated_from_the_seed_topology() -> None:
    doc = (PROJECT_ROOT / "docs" / "firewall.md").read_text()
    assert firewall.update_doc(doc, SEED) == doc, "run: python -m provision.firewall --write-docs"


def test_the_firewall_role_reads_the_management_source_from_the_host_facts() -> None:
    ctx = HostContext(SEED, SEED.hosts["web1"], {"ssh_client": "10.0.2.2"})
    steps = firewall_role.steps(ctx)
    v4 = next(s for s in steps if isinstance(s, File) and s.path == firewall_role.RULES_V4)
    assert "-s 10.0.2.2/32 -p tcp -m tcp --dport 22 " in str(v4.content)
