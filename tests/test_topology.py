"""provision/topology.py: the seed topology, its flows and views, and every way to get it wrong."""

from __future__ import annotations

import copy
import ipaddress
import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from provision import box, topology, vagrant
from provision.topology import SSH_PORT_BASE, TOPOLOGY_DIR, Topology, TopologyError

SEED_PATH = TOPOLOGY_DIR / "seed.yml"
SEED_TEXT = SEED_PATH.read_text()
SEED_DOC: dict[str, Any] = yaml.safe_load(SEED_TEXT)
SEED_HOSTS = ("lb1", "web1", "web2", "monitor", "client")


# --------------------------------------------------------------------------- the seed topology


def test_seed_topology_is_named_seed(seed: Topology) -> None:
    assert seed.name == "seed"


def test_seed_topology_has_the_five_specified_hosts_in_file_order(seed: Topology) -> None:
    assert [h.name for h in seed] == list(SEED_HOSTS)


@pytest.mark.parametrize(
    ("host", "roles"),
    [
        ("lb1", ("lb",)),
        ("web1", ("web", "app", "db-primary")),
        ("web2", ("web", "app", "db-replica")),
        ("monitor", ("monitor",)),
        ("client", ("client",)),
    ],
    ids=SEED_HOSTS,
)
def test_seed_host_carries_its_roles(seed: Topology, host: str, roles: tuple[str, ...]) -> None:
    assert seed.hosts[host].roles == roles


def test_web1_is_the_only_database_primary(seed: Topology) -> None:
    assert [h.name for h in seed.with_role("db-primary")] == ["web1"]


def test_web2_is_the_only_database_replica(seed: Topology) -> None:
    assert [h.name for h in seed.with_role("db-replica")] == ["web2"]


def test_client_is_only_on_the_public_network(seed: Topology) -> None:
    assert list(seed.hosts["client"].addresses) == ["public"]


def test_load_balancer_is_on_both_networks(seed: Topology) -> None:
    assert sorted(seed.hosts["lb1"].addresses) == ["private", "public"]


def test_site_answers_to_www_and_bare_domain(seed: Topology) -> None:
    assert seed.site.names == ("www.foobar.com", "foobar.com")


def test_seed_document_survives_a_yaml_round_trip() -> None:
    """The malformed cases below start from this dump; it must itself be valid."""
    reparsed = topology.parse(yaml.safe_dump(SEED_DOC, sort_keys=False))
    assert [(h.name, h.roles, dict(h.addresses)) for h in reparsed] == [
        (h.name, h.roles, dict(h.addresses)) for h in topology.load("seed")
    ]


def test_loading_by_path_gives_the_same_topology_as_by_name(seed: Topology) -> None:
    assert topology.load(str(SEED_PATH)).hosts == seed.hosts


def test_unknown_topology_name_is_rejected_naming_the_known_ones() -> None:
    with pytest.raises(TopologyError) as info:
        topology.load("nonexistent")
    known = sorted(p.stem for p in TOPOLOGY_DIR.glob("*.yml"))
    assert "no such topology file" in str(info.value)
    assert all(name in str(info.value) for name in known)


# --------------------------------------------------------------------------- flows


@pytest.mark.parametrize(
    ("source", "dest", "network", "port"),
    [
        ("client", "lb1", "public", 443),
        ("client", "lb1", "public", 80),
        ("lb1", "web1", "private", 80),
        ("lb1", "web2", "private", 80),
        ("web1", "web2", "private", 3306),
        ("web2", "web1", "private", 3306),
        ("lb1", "monitor", "private", 9090),
        ("web1", "monitor", "private", 9090),
    ],
    ids=lambda v: str(v),
)
def test_flow_is_allowed(seed: Topology, source: str, dest: str, network: str, port: int) -> None:
    assert seed.is_allowed(source, dest, network, port)


@pytest.mark.parametrize(
    ("source", "dest", "network", "port", "proto"),
    [
        pytest.param("client", "web1", "public", 80, "tcp", id="client-web1-no-shared-network"),
        pytest.param("client", "web1", "private", 80, "tcp", id="client-web1-not-on-private"),
        pytest.param("client", "lb1", "private", 443, "tcp", id="client-lb1-on-private"),
        pytest.param("client", "lb1", "public", 443, "udp", id="client-lb1-443-udp"),
        pytest.param("client", "lb1", "public", 22, "tcp", id="client-lb1-unlisted-port"),
        pytest.param("lb1", "web1", "public", 80, "tcp", id="lb1-web1-on-public"),
        pytest.param("lb1", "web1", "private", 3306, "tcp", id="lb1-web1-database"),
        pytest.param("web1", "lb1", "private", 80, "tcp", id="web1-lb1-reverse-direction"),
        pytest.param("monitor", "web1", "private", 3306, "tcp", id="monitor-web1-database"),
        pytest.param("client", "monitor", "public", 9090, "tcp", id="client-monitor-metrics"),
    ],
)
def test_flow_is_not_allowed(
    seed: Topology, source: str, dest: str, network: str, port: int, proto: str
) -> None:
    assert not seed.is_allowed(source, dest, network, port, proto)


@pytest.mark.parametrize("backend", ["web1", "web2", "monitor"])
def test_client_never_reaches_a_private_host_on_any_port(seed: Topology, backend: str) -> None:
    assert [
        p for p in seed.allowed_paths() if (p.source.name, p.dest.name) == ("client", backend)
    ] == []


def test_no_allowed_path_leads_from_a_host_to_itself(seed: Topology) -> None:
    assert [p for p in seed.allowed_paths() if p.source.name == p.dest.name] == []


def test_app_to_db_primary_flow_does_not_make_web1_talk_to_itself(seed: Topology) -> None:
    assert not seed.is_allowed("web1", "web1", "private", 3306)


def test_allowed_paths_are_unique(seed: Topology) -> None:
    keys = [(p.source.name, p.dest.name, p.network, p.port, p.proto) for p in seed.allowed_paths()]
    assert len(keys) == len(set(keys))


def test_every_allowed_path_targets_the_destination_address_on_its_network(
    seed: Topology,
) -> None:
    assert all(p.address == p.dest.addresses[p.network] for p in seed.allowed_paths())


# --------------------------------------------------------------------------- addresses and tiers


@pytest.mark.parametrize(
    ("viewer", "target", "address"),
    [
        pytest.param("client", "lb1", "192.168.56.10", id="client-sees-lb1-public"),
        pytest.param("web1", "lb1", "192.168.57.10", id="web1-sees-lb1-private"),
        pytest.param("lb1", "web2", "192.168.57.22", id="lb1-sees-web2-private"),
        pytest.param("lb1", "client", "192.168.56.100", id="lb1-sees-client-public"),
        pytest.param("web1", "client", "192.168.56.100", id="no-shared-network-falls-back"),
        # lb1 and the monitor share both networks: they talk over the private one, the
        # public one being the users' (users: true), whichever the file lists first.
        pytest.param("lb1", "monitor", "192.168.57.30", id="lb1-sees-monitor-private"),
        pytest.param("monitor", "lb1", "192.168.57.10", id="monitor-sees-lb1-private"),
        pytest.param("client", "monitor", "192.168.56.30", id="client-sees-monitor-public"),
    ],
)
def test_address_for_uses_a_network_the_viewer_shares(
    seed: Topology, viewer: str, target: str, address: str
) -> None:
    assert seed.address_for(seed.hosts[viewer], seed.hosts[target]) == ipaddress.IPv4Address(
        address
    )


def test_flows_open_only_the_network_two_hosts_talk_over_unless_they_name_another(
    seed: Topology,
) -> None:
    # Written from seed.yml: the monitor shares both networks with lb1 and the public one
    # with the client. Its stats reads go over the private network only; the site's
    # checks also over the public one, at the address users reach; the client, on the
    # public network with it, may reach none of its ports.
    def paths(src: str, dst: str) -> set[tuple[str, int]]:
        return {
            (str(p.address), p.port)
            for p in seed.allowed_paths()
            if p.source.name == src and p.dest.name == dst
        }

    assert paths("monitor", "lb1") == {
        ("192.168.57.10", 8404), ("192.168.57.10", 443), ("192.168.57.10", 80),
        ("192.168.57.10", 161), ("192.168.56.10", 443), ("192.168.56.10", 80),
    }  # fmt: skip
    assert paths("lb1", "monitor") == {("192.168.57.30", 9090), ("192.168.57.30", 6514)}
    assert paths("client", "monitor") == set()
    assert paths("monitor", "client") == set()


def test_without_the_users_mark_hosts_talk_over_the_first_network_they_share() -> None:
    doc = copy.deepcopy(SEED_DOC)
    del doc["networks"]["public"]["users"]
    topo = topology.parse(yaml.safe_dump(doc, sort_keys=False), "plain.yml")
    assert topo.address_for(topo.hosts["lb1"], topo.hosts["monitor"]) == ipaddress.IPv4Address(
        "192.168.56.30"
    )


@pytest.mark.parametrize(
    ("tier", "hosts"),
    [
        ("common", list(SEED_HOSTS)),
        ("db", ["web1", "web2"]),
        ("app", ["web1", "web2"]),
        ("web", ["web1", "web2"]),
        ("lb", ["lb1"]),
        ("monitor", ["monitor"]),
    ],
    ids=["common", "db", "app", "web", "lb", "monitor"],
)
def test_in_tier_lists_the_hosts_deployed_in_that_tier(
    seed: Topology, tier: str, hosts: list[str]
) -> None:
    assert [h.name for h in seed.in_tier(tier)] == hosts


def test_every_tier_of_a_host_is_in_the_deploy_order_except_client(seed: Topology) -> None:
    tiers = {t for h in seed for t in h.tiers}
    assert tiers - set(topology.TIER_ORDER) == {"client"}


# --------------------------------------------------------------------------- vagrant view


@pytest.fixture(scope="module")
def view() -> dict[str, Any]:
    return vagrant.vagrant_view(topology.load("seed"))


def test_vagrant_view_has_one_machine_per_host_in_order(view: dict[str, Any]) -> None:
    assert [m["name"] for m in view["machines"]] == list(SEED_HOSTS)


def test_vagrant_view_gives_each_machine_its_own_ssh_port(view: dict[str, Any]) -> None:
    # 2200 + the last byte of the machine's first address (lb1 .10, web1 .21, ...).
    ports = {m["name"]: m["ssh_port"] for m in view["machines"]}
    assert ports == {"lb1": 2210, "web1": 2221, "web2": 2222, "monitor": 2230, "client": 2300}


def test_vagrant_view_lists_lb1_on_both_networks_with_ip_netmask_and_prefix(
    view: dict[str, Any],
) -> None:
    lb1 = view["machines"][0]
    assert lb1["networks"] == [
        {"name": "public", "ip": "192.168.56.10", "netmask": "255.255.255.0", "prefix": 24},
        {"name": "private", "ip": "192.168.57.10", "netmask": "255.255.255.0", "prefix": 24},
    ]


@pytest.mark.parametrize(
    ("host", "forwards"),
    [
        ("lb1", [{"guest": 443, "host": 8443}, {"guest": 80, "host": 8080}]),
        ("web1", []),
        ("client", []),
    ],
    ids=["lb1", "web1", "client"],
)
def test_vagrant_view_lists_forwarded_ports(
    view: dict[str, Any], host: str, forwards: list[dict[str, int]]
) -> None:
    machine = next(m for m in view["machines"] if m["name"] == host)
    assert machine["forwards"] == forwards


def test_vagrant_view_names_containers_after_topology_host_and_checkout(
    view: dict[str, Any],
) -> None:
    assert [m["container"] for m in view["machines"]] == [
        f"testbed-seed-{h}-{vagrant.project_id()}" for h in SEED_HOSTS
    ]


def test_vagrant_view_uses_the_current_box_image(view: dict[str, Any]) -> None:
    assert view["docker_image"] == box.image_tag()


def test_vagrant_view_is_json_serialisable(view: dict[str, Any]) -> None:
    assert json.loads(json.dumps(view)) == view


# --------------------------------------------------------------------------- malformed documents

Build = Callable[[], str]


def _dump(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def _parent(doc: Any, dotted: str) -> tuple[Any, Any]:
    """`hosts.lb1.forward.443` -> (the forward mapping, 443); digits are ints (ports, indexes)."""
    parts: list[Any] = [int(p) if p.isdigit() else p for p in dotted.split(".")]
    for part in parts[:-1]:
        doc = doc[part]
    return doc, parts[-1]


def setting(dotted: str, value: Any) -> Build:
    def build() -> str:
        doc = copy.deepcopy(SEED_DOC)
        parent, last = _parent(doc, dotted)
        parent[last] = value
        return _dump(doc)

    return build


def deleting(dotted: str) -> Build:
    def build() -> str:
        doc = copy.deepcopy(SEED_DOC)
        parent, last = _parent(doc, dotted)
        del parent[last]
        return _dump(doc)

    return build


def renaming(dotted: str, new: str) -> Build:
    def build() -> str:
        doc = copy.deepcopy(SEED_DOC)
        parent, last = _parent(doc, dotted)
        parent[new] = parent.pop(last)
        return _dump(doc)

    return build


def appending(dotted: str, value: Any) -> Build:
    def build() -> str:
        doc = copy.deepcopy(SEED_DOC)
        parent, last = _parent(doc, dotted)
        parent[last].append(copy.deepcopy(value))
        return _dump(doc)

    return build


def raw(text: str) -> Build:
    return lambda: text


WEB2_LINE = SEED_TEXT.splitlines().index("  web2:") + 1

MALFORMED = [
    pytest.param(
        setting("hosts.web2.addresses.private", "192.168.57.21"),
        "hosts.web2.addresses.private",
        "duplicate address 192.168.57.21, already used by web1",
        id="duplicate-address",
    ),
    pytest.param(
        setting("hosts.web1.roles", ["web", "cache"]),
        "hosts.web1.roles",
        "unknown role 'cache'",
        id="unknown-role",
    ),
    pytest.param(
        setting("hosts.web1.roles", ["web", "web"]),
        "hosts.web1.roles",
        "a role is listed twice",
        id="role-listed-twice",
    ),
    pytest.param(
        setting("hosts.web1.roles", []),
        "hosts.web1.roles",
        "expected a non-empty list of roles",
        id="no-roles",
    ),
    pytest.param(
        setting("hosts.1web", SEED_DOC["hosts"]["monitor"]),
        "hosts.1web",
        "a host name must start with a letter",
        id="host-name-starts-with-digit",
    ),
    pytest.param(
        setting("hosts.web1.addresses.private", "192.168.56.21"),
        "hosts.web1.addresses.private",
        "192.168.56.21 is outside network private (192.168.57.0/24)",
        id="address-outside-its-network",
    ),
    pytest.param(
        setting("hosts.web1.addresses.private", "192.168.57.300"),
        "hosts.web1.addresses.private",
        "'192.168.57.300' is not an IPv4 address",
        id="not-an-address",
    ),
    pytest.param(
        setting("hosts.web1.addresses.private", "192.168.57.1"),
        "hosts.web1.addresses.private",
        "192.168.57.1 is reserved in 192.168.57.0/24",
        id="reserved-gateway-dot-1",
    ),
    pytest.param(
        setting("hosts.web1.addresses.private", "192.168.57.0"),
        "hosts.web1.addresses.private",
        "192.168.57.0 is reserved in 192.168.57.0/24",
        id="reserved-network-address",
    ),
    pytest.param(
        setting("hosts.web1.addresses.private", "192.168.57.255"),
        "hosts.web1.addresses.private",
        "192.168.57.255 is reserved in 192.168.57.0/24",
        id="reserved-broadcast-address",
    ),
    pytest.param(
        setting("hosts.web1.addresses.dmz", "10.0.0.5"),
        "hosts.web1.addresses.dmz",
        "unknown network (known: public, private)",
        id="unknown-network-in-addresses",
    ),
    pytest.param(
        renaming("flows", "flow"),
        "flow",
        "unknown key (expected one of: ",
        id="unknown-top-level-key-typo",
    ),
    pytest.param(
        renaming("hosts.web1.roles", "role"),
        "hosts.web1.role",
        "unknown key (expected one of: addresses, count, first, forward, roles)",
        id="unknown-host-key-typo",
    ),
    pytest.param(deleting("site"), "site", "missing required key", id="missing-top-level-key"),
    pytest.param(
        deleting("hosts.web1.addresses"),
        "hosts.web1.addresses",
        "missing required key",
        id="missing-host-key",
    ),
    pytest.param(
        deleting("flows.0.port"), "flows[0].port", "missing required key", id="missing-flow-port"
    ),
    pytest.param(
        raw(SEED_TEXT.replace("  web2:\n", "  web1:\n")),
        f"line {WEB2_LINE}",
        "not valid YAML: duplicate key 'web1'",
        id="host-listed-twice",
    ),
    pytest.param(
        raw(SEED_TEXT + "name: other\n"),
        f"line {len(SEED_TEXT.splitlines()) + 1}",
        "not valid YAML: duplicate key 'name'",
        id="top-level-key-twice",
    ),
    pytest.param(
        setting("flows.0.to", "cache"),
        "flows[0].to",
        "unknown role 'cache'",
        id="flow-to-unknown-role",
    ),
    pytest.param(
        setting("flows.0.from", "cache"),
        "flows[0].from",
        "unknown role 'cache'",
        id="flow-from-unknown-role",
    ),
    pytest.param(
        setting("hosts.monitor.roles", ["client"]),
        "flows[10].from",
        "no host carries role 'monitor'",
        id="flow-to-role-no-host-carries",
    ),
    pytest.param(
        setting("flows.0.to", "any"),
        "flows[0].to",
        "a flow must name the destination role, not 'any'",
        id="flow-to-any",
    ),
    pytest.param(
        setting("ports.site-https", 0),
        "ports.site-https",
        "expected a port number 1-65535, got 0",
        id="port-0",
    ),
    pytest.param(
        setting("ports.site-https", 70000),
        "ports.site-https",
        "expected a port number 1-65535, got 70000",
        id="port-70000",
    ),
    pytest.param(
        setting("flows.0.port", "http"),
        "flows[0].port",
        "expected a port name from ports: (site-https, site-http, backend-http, "
        "backend-https, mysql, dbcheck, prometheus, haproxy-stats, syslog-tls, snmp), got 'http'",
        id="flow-port-unknown-name",
    ),
    pytest.param(
        setting("flows.0.port", 443),
        "flows[0].port",
        "expected a port name from ports:",
        id="flow-port-number-instead-of-name",
    ),
    pytest.param(
        deleting("ports"),
        "ports",
        "missing required key",
        id="missing-ports",
    ),
    pytest.param(
        setting("ports.memcached", 11211),
        "ports.memcached",
        "no flow or forward uses this port",
        id="port-no-flow-uses",
    ),
    pytest.param(
        setting("ports.site-https", True),
        "ports.site-https",
        "expected a port number 1-65535, got True",
        id="port-boolean",
    ),
    pytest.param(
        setting("flows.0.proto", "icmp"),
        "flows[0].proto",
        "expected one of tcp, udp, vrrp, got 'icmp'",
        id="flow-bad-proto",
    ),
    pytest.param(
        appending("flows", SEED_DOC["flows"][0]),
        f"flows[{len(SEED_DOC['flows'])}]",
        "duplicate flow client -> lb 443/tcp",
        id="duplicate-flow",
    ),
    pytest.param(
        appending("flows", {"from": "client", "to": "lb", "port": "site-https"}),
        f"flows[{len(SEED_DOC['flows'])}]",
        "duplicate flow client -> lb 443/tcp",
        id="duplicate-flow-with-default-proto",
    ),
    pytest.param(
        setting("flows.0.network", "dmz"),
        "flows[0].network",
        "unknown network 'dmz' (known: public, private)",
        id="flow-unknown-network",
    ),
    pytest.param(
        setting("networks.public.users", "yes"),
        "networks.public.users",
        "expected true or false, got 'yes'",
        id="network-users-not-a-bool",
    ),
    pytest.param(
        setting("networks.private.cidr", "192.168.56.128/25"),
        "networks.private.cidr",
        "192.168.56.128/25 overlaps network public (192.168.56.0/24)",
        id="overlapping-networks",
    ),
    pytest.param(
        setting("networks.private.cidr", "192.168.57.5/24"),
        "networks.private.cidr",
        "not an IPv4 network",
        id="network-with-host-bits",
    ),
    pytest.param(
        setting("hosts.client.forward", {"site-http": 8080}),
        "hosts.client.forward.site-http",
        "host port 8080 is already forwarded to lb1",
        id="forward-host-port-collision",
    ),
    pytest.param(
        setting("hosts.lb1.forward.site-https", SSH_PORT_BASE + 1),
        "hosts.lb1.forward.site-https",
        f"host port {SSH_PORT_BASE + 1} is kept for the machines' SSH",
        id="forward-into-ssh-port-range",
    ),
    pytest.param(
        setting("hosts.lb1.forward.site-https", SSH_PORT_BASE + len(SEED_HOSTS) - 1),
        "hosts.lb1.forward.site-https",
        "is kept for the machines' SSH",
        id="forward-onto-last-ssh-port",
    ),
    pytest.param(
        setting("hosts.lb1.forward.site-https", 0),
        "hosts.lb1.forward.site-https",
        "expected a port number 1-65535, got 0",
        id="forward-to-port-0",
    ),
    pytest.param(
        setting("hosts.web1.roles", ["web", "app"]),
        "hosts",
        "db-replica hosts ['web2'] need exactly one db-primary, found []",
        id="replica-without-primary",
    ),
    pytest.param(
        setting("hosts.monitor.roles", ["monitor", "db-primary"]),
        "hosts",
        "need exactly one db-primary, found ['web1', 'monitor']",
        id="replica-with-two-primaries",
    ),
    pytest.param(
        raw("name: [unclosed\n"), "line 2", "not valid YAML: expected ',' or ']'", id="invalid-yaml"
    ),
    pytest.param(
        raw("- name: seed\n"), "top level", "expected a mapping, got list", id="top-level-list"
    ),
    pytest.param(raw(""), "top level", "expected a mapping, got NoneType", id="empty-document"),
]


@pytest.mark.parametrize(("build", "key", "problem"), MALFORMED)
def test_malformed_topology_is_rejected_naming_the_key_and_the_problem(
    build: Build, key: str, problem: str
) -> None:
    with pytest.raises(TopologyError) as info:
        topology.parse(build(), "bad.yml")
    assert info.value.key == key
    assert f"{key}: " in str(info.value)
    assert problem in str(info.value)


def test_topology_error_names_the_file_first() -> None:
    with pytest.raises(TopologyError, match=r"^bad\.yml: "):
        topology.parse(deleting("site")(), "bad.yml")


def test_duplicate_address_is_rejected_naming_both_hosts() -> None:
    with pytest.raises(TopologyError) as info:
        topology.parse(setting("hosts.web2.addresses.private", "192.168.57.21")())
    assert "web1" in str(info.value)
    assert "web2" in str(info.value)


def test_forward_just_past_the_ssh_port_range_is_accepted() -> None:
    first_free = SSH_PORT_BASE + 256
    parsed = topology.parse(setting("hosts.lb1.forward.site-https", first_free)())
    assert parsed.hosts["lb1"].forward[443] == first_free
    with pytest.raises(TopologyError, match="kept for the machines' SSH"):
        topology.parse(setting("hosts.lb1.forward.site-https", first_free - 1)())


def test_two_hosts_whose_first_addresses_end_alike_are_rejected() -> None:
    # The SSH port and MariaDB's server_id come from that last byte.
    with pytest.raises(TopologyError, match="ends in .21 like web1's"):
        topology.parse(setting("hosts.web2.addresses", {"public": "192.168.56.21"})())


def test_flow_from_any_is_accepted() -> None:
    parsed = topology.parse(setting("flows.0.from", "any")())
    assert parsed.flows[0].source == "any"


# --------------------------------------------------------------------------- known bugs


def test_unhashable_yaml_key_is_rejected_as_a_topology_error() -> None:
    with pytest.raises(TopologyError):
        topology.parse("? [a, b]\n: 1\n")


def test_nested_list_role_is_rejected_as_a_topology_error() -> None:
    with pytest.raises(TopologyError):
        topology.parse(setting("hosts.web1.roles", [["web"]])())


def test_nested_list_flow_role_is_rejected_as_a_topology_error() -> None:
    with pytest.raises(TopologyError):
        topology.parse(setting("flows.0.to", ["lb"])())


def test_empty_description_is_an_empty_string() -> None:
    assert topology.parse(setting("description", None)()).description == ""


def test_an_option_override_switches_conditional_flows() -> None:
    plain = topology.load("seed")
    reencrypted = topology.load("seed", {"reencrypt": True})
    assert plain.is_allowed("lb1", "web1", "private", 80)
    assert not plain.is_allowed("lb1", "web1", "private", 443)
    assert reencrypted.is_allowed("lb1", "web1", "private", 443)
    assert not reencrypted.is_allowed("lb1", "web1", "private", 80)


def test_overriding_an_option_the_file_does_not_set_is_rejected() -> None:
    with pytest.raises(TopologyError, match="options.colour"):
        topology.load("seed", {"colour": "blue"})


def test_a_flow_condition_must_name_an_option() -> None:
    text = (topology.TOPOLOGY_DIR / "seed.yml").read_text()
    text = text.replace("unless: reencrypt", "unless: turbo")
    with pytest.raises(TopologyError, match=r"flows\[2\].unless: 'turbo' is not an option"):
        topology.parse(text, "seed.yml")


def test_option_overrides_are_read_as_yaml_scalars() -> None:
    assert topology.parse_option_overrides("reencrypt=true, n=3") == {"reencrypt": True, "n": 3}
    with pytest.raises(TopologyError):
        topology.parse_option_overrides("reencrypt")


# --------------------------------------------------------------------------- ports


def test_a_port_is_read_by_its_service_name(seed: Topology) -> None:
    assert seed.port("mysql") == yaml.safe_load(SEED_TEXT)["ports"]["mysql"]


def test_an_unknown_port_name_is_a_key_error_naming_the_known_ones(seed: Topology) -> None:
    with pytest.raises(KeyError, match="names no port 'memcached'.*known: site-https"):
        seed.port("memcached")


def test_a_flow_carries_the_port_and_the_service_it_names(seed: Topology) -> None:
    flow = next(f for f in seed.flows if f.source == "app" and f.dest == "db-primary")
    assert (flow.service, flow.port) == ("mysql", seed.port("mysql"))


def test_forwarded_gives_the_loopback_port_of_a_service_or_none(seed: Topology) -> None:
    lb = seed.with_role("lb")[0]
    forwards = yaml.safe_load(SEED_TEXT)["hosts"][lb.name]["forward"]
    assert seed.forwarded(lb, "site-https") == forwards["site-https"]
    assert seed.forwarded(lb, "mysql") is None


# --------------------------------------------------------------------------- counted hosts


def with_web_group(count: object, **extra: object) -> str:
    """The seed with web1/web2 replaced by a counted group `web` (app hosts only)."""
    doc = yaml.safe_load(SEED_TEXT)
    del doc["hosts"]["web1"], doc["hosts"]["web2"]
    doc["hosts"]["web"] = {
        "roles": ["web", "app", "db-replica"],
        "addresses": {"private": "192.168.57.21"},
        "count": count,
        **extra,
    }
    doc["hosts"]["db1"] = {"roles": ["db-primary"], "addresses": {"private": "192.168.57.41"}}
    return yaml.safe_dump(doc, sort_keys=False)


def test_a_counted_host_stands_for_that_many_hosts_at_consecutive_addresses() -> None:
    topo = topology.parse(with_web_group(3))
    webs = topo.with_role("web")
    assert [h.name for h in webs] == ["web1", "web2", "web3"]
    assert [str(h.addresses["private"]) for h in webs] == [
        "192.168.57.21",
        "192.168.57.22",
        "192.168.57.23",
    ]


def test_counted_hosts_get_their_own_management_ports_in_order() -> None:
    topo = topology.parse(with_web_group(2))
    ports = [h.ssh_port for h in topo]
    assert len(set(ports)) == len(ports)
    # Scaling the group moves no other host's port (nor its database server_id).
    bigger = topology.parse(with_web_group(3))
    assert all(bigger.hosts[h.name].ssh_port == h.ssh_port for h in topo)


@pytest.mark.parametrize(
    "count, extra, key, problem",
    [
        (0, {}, "hosts.web.count", "expected a number 1-50, got 0"),
        ("two", {}, "hosts.web.count", "expected a number 1-50, got 'two'"),
        (2, {"forward": {"site-https": 9443}}, "hosts.web.forward", "cannot forward ports"),
        (
            10,
            {},
            "hosts.web.addresses.private",
            "duplicate address 192.168.57.30, already used by monitor",
        ),
    ],
)
def test_a_bad_count_is_rejected_naming_the_key(
    count: object, extra: dict[str, object], key: str, problem: str
) -> None:
    with pytest.raises(TopologyError) as info:
        topology.parse(with_web_group(count, **extra))
    assert info.value.key == key
    assert problem in info.value.problem


def test_a_machine_whose_index_id_starts_with_another_machines_name_is_found() -> None:
    from provision.vagrant import shadowed_names

    ids = {"db1": "4a976bf92a01", "client": "db100672dbf1", "web1": "9f00aa"}
    # `vagrant status db1` answers for client: client must get a new id.
    assert shadowed_names(ids) == {"db1": "client"}
    assert shadowed_names({"db1": "4a97", "client": "0db1"}) == {}
