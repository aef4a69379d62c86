"""Firewall rules generated from the topology (pure logic; no machine needed)."""

from __future__ import annotations

import re

import pytest

from provision import PROJECT_ROOT, firewall, topology
from provision.engine import File, HostContext, render
from provision.roles import firewall as firewall_role

SEED = topology.load("seed")
MGMT = "172.17.0.1"


def _nics(name: str) -> firewall.Nics:
    """What a docker machine's facts say: eth0 on the management bridge, then one
    interface per topology network in the topology's order."""
    host = SEED.hosts[name]
    by_address = {"172.17.0.5": "eth0"}
    by_address.update({str(a): f"eth{i}" for i, a in enumerate(host.addresses.values(), 1)})
    return firewall.Nics(by_address, "eth0")


def _rules(name: str, version: int = 4) -> str:
    host = SEED.hosts[name]
    nics = _nics(name)
    accepts = firewall.accepts(SEED, host, MGMT, nics)
    return render(
        "firewall",
        f"rules.v{version}.j2",
        host=host,
        accepts=accepts,
        stray_resets=firewall.stray_resets(SEED, accepts),
        restart_holds=firewall.restart_holds(SEED, host, accepts),
        egress=None if firewall.egress_open(host) else firewall.egress(SEED, host, nics),
        log_group=firewall.LOG_GROUP,
        prefix=firewall.log_prefix(host),
        egress_prefix=firewall.egress_log_prefix(host),
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
    assert "-i eth1 -s 192.168.57.10/32 -d 192.168.57.21/32 -p tcp -m tcp --dport 80 " in rules
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
    facts = {
        "ssh_client": "10.0.2.2",
        "interfaces": "lo=127.0.0.1/8 eth0=10.0.2.15/24 eth1=192.168.57.21/24",
        "ssh_iface": "eth0",
    }
    steps = firewall_role.steps(HostContext(SEED, SEED.hosts["web1"], facts))
    v4 = next(s for s in steps if isinstance(s, File) and s.path == firewall_role.RULES_V4)
    assert "-i eth0 -s 10.0.2.2/32 -d 10.0.2.15/32 -p tcp -m tcp --dport 22 " in str(v4.content)


@pytest.mark.parametrize("name", list(SEED.hosts))
@pytest.mark.parametrize("version", [4, 6])
def test_output_drops_by_default_except_on_the_client(name: str, version: int) -> None:
    policy = "ACCEPT" if name == "client" else "DROP"
    assert f":OUTPUT {policy} [0:0]" in _rules(name, version)


def test_ssh_is_bound_to_the_management_interface_and_the_hosts_own_address_there() -> None:
    ssh = [line for line in _rules("web1").splitlines() if "--dport 22 " in line]
    assert ssh == [
        f"-A INPUT -i eth0 -s {MGMT}/32 -d 172.17.0.5/32 -p tcp -m tcp --dport 22 "
        '-m comment --comment "ssh from the management path" -j ACCEPT'
    ]


def test_every_allowed_path_has_exactly_one_egress_accept_on_its_source() -> None:
    for path in SEED.allowed_paths():
        if firewall.egress_open(path.source):
            continue
        rules = firewall.egress(SEED, path.source, _nics(path.source.name))
        matching = [
            r
            for r in rules
            if f" -d {path.address}/32 -p {path.proto} " in r
            and (path.proto == "vrrp" or f"--dport {path.port} " in r)
        ]
        assert len(matching) == 1, (path, matching)


def test_web1_may_start_only_its_flows_dns_dhcp_and_apt() -> None:
    out = [line for line in _rules("web1").splitlines() if line.startswith("-A OUTPUT")]
    started = [line for line in out if "-j ACCEPT" in line and "--comment" in line]
    flows = [p for p in SEED.allowed_paths() if p.source.name == "web1"]
    assert len(started) == len(flows) + 4  # + DNS over udp and tcp, dhcp and apt
    assert all("-o eth1 " in line for line in started if '"flow ' in line)
    assert "-m owner --uid-owner _apt" in "\n".join(started)
    assert out[-1] == "-A OUTPUT -j REJECT --reject-with icmp-admin-prohibited"


def test_an_address_no_interface_holds_is_an_error_naming_the_host() -> None:
    nics = firewall.Nics({"172.17.0.5": "eth0"}, "eth0")
    with pytest.raises(firewall.FirewallError, match=r"web1: no interface holds its private"):
        firewall.accepts(SEED, SEED.hosts["web1"], MGMT, nics)


def test_nics_are_read_from_the_host_facts() -> None:
    nics = firewall.Nics.from_facts(
        {
            "interfaces": "lo=127.0.0.1/8 eth0=172.17.0.5/16 eth1=192.168.57.21/24",
            "ssh_iface": "eth0",
        }
    )
    assert nics.of(SEED.hosts["web1"], "private") == "eth1"
    assert nics.management_address() == "172.17.0.5"


def test_a_site_connection_that_finds_no_listener_is_held_not_refused_on_the_balancer() -> None:
    rules = _rules("lb1").splitlines()
    holds = [r for r in rules if "--tcp-flags FIN,SYN,RST,ACK SYN" in r]
    # For each way to 443 and 80 (the client, and the operator's forwards): a listener
    # accepts, and no listener drops, both before the flow's own accept.
    assert len(holds) == 2 * len(
        [a for a in firewall.accepts(SEED, SEED.hosts["lb1"], MGMT) if a.port in (80, 443)]
    )
    first_accept = next(i for i, r in enumerate(rules) if '"flow client->lb1 443/tcp' in r)
    drop = next(i for i, r in enumerate(rules) if "no listener yet" in r and "--dport 443" in r)
    assert drop < first_accept and rules[drop].endswith("-j DROP")
    assert "-m socket --nowildcard" in rules[drop - 1]
    assert not any("no listener yet" in r for r in _rules("web1").splitlines())


def _with_egress(entries: str) -> topology.Topology:
    text = (PROJECT_ROOT / "topologies" / "seed.yml").read_text() + f"\negress:\n{entries}"
    return topology.parse(text, "seed-egress.yml")


def test_an_egress_entry_opens_that_address_and_port_to_its_roles_hosts_only() -> None:
    topo = _with_egress(
        "  - {from: monitor, to: 198.51.100.25, port: 587, proto: tcp, why: alert mail}\n"
    )
    mail = [r for r in firewall.egress(topo, topo.hosts["monitor"]) if "198.51.100.25" in r]
    assert mail == [
        "-A OUTPUT -d 198.51.100.25/32 -p tcp -m tcp --dport 587 "
        '-m comment --comment "egress monitor->198.51.100.25/32 587/tcp: alert mail" -j ACCEPT'
    ]
    assert not any("198.51.100.25" in r for r in firewall.egress(topo, topo.hosts["lb1"]))


@pytest.mark.parametrize(
    "entry,key",
    [
        ("{from: nobody, to: 198.51.100.25, port: 587}", "egress[0].from"),
        ("{from: monitor, to: smtp.example.org, port: 587}", "egress[0].to"),
        ("{from: monitor, to: 198.51.100.25, port: 0}", "egress[0].port"),
        ("{from: monitor, to: 198.51.100.25, port: 587, proto: icmp}", "egress[0].proto"),
        ("{from: monitor, to: 198.51.100.25}", "egress[0]"),
    ],
)
def test_a_malformed_egress_entry_names_its_key(entry: str, key: str) -> None:
    with pytest.raises(topology.TopologyError, match=rf"seed-egress.yml: {re.escape(key)}"):
        _with_egress(f"  - {entry}\n")
