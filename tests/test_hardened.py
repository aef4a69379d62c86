"""The hardened topology as the model reads it (topologies/hardened.yml): counted tiers,
the load balancers' floating address, VRRP between them only (no machine needed)."""

from __future__ import annotations

import ipaddress

import pytest
import yaml

from provision import firewall, inventory, site, topology
from provision.engine import File, HostContext, StepError, interface_of
from provision.roles import lb
from provision.topology import Topology

TEXT = (topology.TOPOLOGY_DIR / "hardened.yml").read_text()
DOC = yaml.safe_load(TEXT)


@pytest.fixture(scope="module")
def hardened() -> Topology:
    return topology.parse(TEXT, "hardened.yml")


def test_each_tier_has_its_own_hosts(hardened: Topology) -> None:
    assert [h.name for h in hardened.with_role("lb")] == ["lb1", "lb2"]
    webs = hardened.with_role("web")
    assert len(webs) == DOC["hosts"]["web"]["count"]
    assert all(h.roles == ("web", "app") for h in webs)
    assert [h.name for h in hardened.in_tier("db")] == ["db1", "db2", "db3"]


def test_the_site_address_floats_between_the_load_balancers(hardened: Topology) -> None:
    vip = hardened.vips["site"]
    assert vip.address == ipaddress.IPv4Address(DOC["vips"]["site"]["address"])
    assert all(vip.address not in h.addresses.values() for h in hardened)


def test_the_client_reaches_the_site_at_the_floating_address_only(hardened: Topology) -> None:
    client = hardened.with_role("client")[0]
    reached = {
        (p.dest.name, str(p.address), p.port)
        for p in hardened.allowed_paths()
        if p.source.name == client.name
    }
    vip = str(hardened.vips["site"].address)
    site = {hardened.port("site-https"), hardened.port("site-http")}
    assert reached == {(lb.name, vip, port) for lb in hardened.with_role("lb") for port in site}


def test_vrrp_is_accepted_between_the_load_balancers_only(hardened: Topology) -> None:
    for host in hardened:
        rules = [a for a in firewall.accepts(hardened, host, "172.17.0.1/16") if a.proto == "vrrp"]
        peers = {a.source for a in rules}
        expected = {lb.name for lb in hardened.with_role("lb")} - {host.name}
        assert peers == (expected if host.has_role("lb") else set())
        assert all("--dport" not in a.rule() and "-p vrrp" in a.rule() for a in rules)


def test_the_operator_machine_reaches_the_site_ports_at_the_floating_address(
    hardened: Topology,
) -> None:
    lb = hardened.with_role("lb")[0]
    rules = [a for a in firewall.accepts(hardened, lb, "172.17.0.1/16") if a.source == "operator"]
    gateway = hardened.networks["public"].gateway
    assert {(a.source_address, a.address, a.port) for a in rules} == {
        (f"{gateway}/32", str(hardened.vips["site"].address), hardened.port(p))
        for p in ("site-https", "site-http")
    }


def test_the_web_tier_scales_by_its_count() -> None:
    doc = yaml.safe_load(TEXT)
    doc["hosts"]["web"]["count"] = 3
    topo = topology.parse(yaml.safe_dump(doc), "scaled.yml")
    assert [h.name for h in topo.with_role("web")] == ["web1", "web2", "web3"]
    lb = topo.with_role("lb")[0]
    web3 = topo.hosts["web3"]
    assert topo.is_allowed(lb.name, "web3", "private", topo.port("backend-https"))
    assert str(web3.addresses["private"]) == "192.168.57.23"


@pytest.mark.parametrize(
    "change, key, problem",
    [
        (("address",), "vips.site.address", "already used by lb1"),
        (("network",), "vips.site.network", "unknown network"),
        (("role",), "vips.site.role", "no host with role 'db-primary' is on network public"),
    ],
)
def test_a_bad_floating_address_is_rejected_naming_the_key(
    change: tuple[str], key: str, problem: str
) -> None:
    doc = yaml.safe_load(TEXT)
    value = {"address": "192.168.56.11", "network": "dmz", "role": "db-primary"}[change[0]]
    doc["vips"]["site"][change[0]] = value
    with pytest.raises(topology.TopologyError) as info:
        topology.parse(yaml.safe_dump(doc), "bad.yml")
    assert info.value.key == key
    assert problem in info.value.problem


def test_without_an_inventory_the_site_is_reached_at_the_floating_address(
    hardened: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(inventory.INVENTORY_ENV, raising=False)
    entry = inventory.site_entry(hardened)
    assert entry.address == str(hardened.vips["site"].address)
    assert (entry.https, entry.http) == (hardened.port("site-https"), hardened.port("site-http"))


def test_the_site_certificate_and_host_check_know_the_floating_address(hardened: Topology) -> None:
    vip = str(hardened.vips["site"].address)
    assert vip in site.accepted_hosts(hardened, hardened.with_role("lb")[1])


FACTS = {
    "ssh_client": "172.17.0.1",
    "cpus": "2",
    "arch": "x86_64",
    "python": "3.11",
    "interfaces": "lo=127.0.0.1/8 eth0=172.17.0.3/16 eth1=192.168.56.12/24 eth2=192.168.57.12/24",
}


@pytest.mark.usefixtures("offline_roles")
def test_keepalived_peers_over_the_private_network_and_floats_the_public_address(
    hardened: Topology,
) -> None:
    steps = lb.steps(HostContext(hardened, hardened.hosts["lb2"], FACTS))
    conf = next(s for s in steps if isinstance(s, File) and s.path == lb.KEEPALIVED_CONFIG)
    text = conf.data.decode()
    assert "interface eth2" in text and "unicast_src_ip 192.168.57.12" in text
    assert "unicast_peer {\n        192.168.57.11\n    }" in text
    assert f"{hardened.vips['site'].address}/24 dev eth1" in text
    assert "nopreempt" in text and "track_script {\n        haproxy" in text
    assert conf.mode == "0600" and conf.validate == "keepalived -t -f {path}"


@pytest.mark.usefixtures("offline_roles")
def test_the_seed_balancer_runs_no_keepalived(seed: Topology) -> None:
    steps = lb.steps(HostContext(seed, seed.with_role("lb")[0], FACTS))
    assert not [s for s in steps if isinstance(s, File) and s.path == lb.KEEPALIVED_CONFIG]


def test_interface_of_finds_the_interface_holding_an_address() -> None:
    assert interface_of(FACTS, "192.168.56.12") == "eth1"
    assert interface_of(FACTS, "192.168.56.99") is None
    assert interface_of({}, "192.168.56.12") is None


def test_is_allowed_at_an_address_tells_the_floating_address_from_a_balancers_own(
    hardened: Topology,
) -> None:
    client, lb1 = hardened.with_role("client")[0].name, hardened.hosts["lb1"]
    https = hardened.port("site-https")
    assert hardened.is_allowed(client, "lb1", "public", https)
    assert hardened.is_allowed(
        client, "lb1", "public", https, address=hardened.vips["site"].address
    )
    assert not hardened.is_allowed(client, "lb1", "public", https, address=lb1.addresses["public"])


def test_database_accounts_that_log_in_over_the_network_require_tls_in_hardened_only(
    hardened: Topology, seed: Topology
) -> None:
    from provision.roles import db

    def network_accounts(topo: Topology) -> dict[str, bool]:
        host = topo.in_tier("db")[0]
        return {u.account: u.tls for u in db.users(topo, host) if u.host != "localhost"}

    hard = network_accounts(hardened)
    assert hard and all(hard.values()), hard
    assert {u.split("@")[0] for u in hard} == {"'app'", "'repl'", "'failover'"}
    assert not any(network_accounts(seed).values())
    app = next(u for u in db.users(hardened, hardened.hosts["db1"]) if u.user == "app")
    assert "REQUIRE SSL" in app.create_sql() and app.expected().startswith("1|ANY/0|")


def test_mariadb_refuses_plain_tcp_and_replicas_verify_the_primary_in_hardened(
    hardened: Topology, seed: Topology
) -> None:
    from provision import dbcluster
    from provision.engine import render

    def cnf(topo: Topology) -> str:
        return render("db", "server.cnf.j2", bind_address="x", port=3306, server_id=1,
                      semisync_timeout_ms=1, slave_net_timeout=2,
                      tls=dbcluster.uses_tls(topo), tls_dir="/etc/mysql/tls")  # fmt: skip

    assert "require_secure_transport = ON" in cnf(hardened)
    assert "ssl_" not in cnf(seed) and "require_secure_transport" not in cnf(seed)
    assert "MASTER_SSL_VERIFY_SERVER_CERT = 1" in dbcluster.master_tls(True)
    assert dbcluster.master_tls(False) == "MASTER_SSL = 0"
    # The node's certificate names every address a replica or the controller dials.
    from provision.roles import db

    pair = db.certificate(hardened.hosts["db2"])
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(i) for i in sans.get_values_for_type(x509.IPAddress)}
    assert {str(a) for a in hardened.hosts["db2"].addresses.values()} <= ips


def test_agents_push_over_verified_https_with_a_login_in_hardened_only(
    hardened: Topology, seed: Topology
) -> None:
    from provision import monitoring
    from provision.engine import HostContext as Ctx
    from provision.roles import agent, monitor

    def agent_config(topo: Topology) -> dict[str, object]:
        web = topo.with_role("web")[-1]
        steps = agent.steps(Ctx(topo, web, {}))
        text = next(s for s in steps if isinstance(s, File) and s.path.endswith("prometheus.yml"))
        return yaml.safe_load(text.data)  # type: ignore[no-any-return]

    write = agent_config(hardened)["remote_write"][0]  # type: ignore[index]
    assert write["url"].startswith("https://192.168.57.30:")
    assert write["tls_config"] == {"ca_file": monitoring.CA_FILE, "server_name": "monitor"}
    assert write["basic_auth"]["username"] == monitoring.AGENT_USER
    plain = agent_config(seed)["remote_write"][0]  # type: ignore[index]
    assert plain["url"].startswith("http://") and "basic_auth" not in plain
    mon = hardened.with_role("monitor")[0]
    web = next(
        s for s in monitor.steps(Ctx(hardened, mon, {}))
        if isinstance(s, File) and s.path == monitoring.WEB_CONFIG
    )  # fmt: skip
    config = yaml.safe_load(web.data)
    assert set(config["basic_auth_users"]) == {monitoring.AGENT_USER, monitoring.OPERATOR_USER}
    assert all(h.startswith("$2b$") for h in config["basic_auth_users"].values())
    assert config["tls_server_config"]["min_version"] == "TLS12"


def test_the_nodes_own_watchers_can_never_take_every_connection(hardened: Topology) -> None:
    from provision.roles import db

    users = {u.user: u for u in db.users(hardened, hardened.hosts["db1"])}
    for name in ("dbcheck", "monitor"):
        assert 0 < users[name].max_connections < 20
        assert (
            f"WITH MAX_USER_CONNECTIONS {users[name].max_connections}" in users[name].create_sql()
        )
    assert users["app"].max_connections == 0


def test_a_connection_that_moved_with_the_floating_address_is_reset_not_dropped(
    hardened: Topology, seed: Topology
) -> None:
    lb = hardened.hosts["lb2"]
    accepts = firewall.accepts(hardened, lb, "172.17.0.1")
    resets = firewall.stray_resets(hardened, accepts)
    vip = str(hardened.vips["site"].address)
    # One per source allowed at the floating address and port: the client, the operator.
    assert resets and all(f"-d {vip}/32" in r and "--ctstate INVALID" in r for r in resets)
    assert all(r.endswith("-j REJECT --reject-with tcp-reset") for r in resets)
    expected = {(a.source_address, a.port) for a in accepts if a.address == vip}
    assert {(r.split()[3], int(r.split("--dport ")[1].split()[0])) for r in resets} == expected
    # Nothing else is reset, and seed has no floating address.
    assert not firewall.stray_resets(seed, firewall.accepts(seed, seed.hosts["lb1"], "172.17.0.1"))


def test_scaling_in_leaves_no_database_account_for_the_removed_web_server(
    hardened: Topology,
) -> None:
    from provision.roles import db

    doc = yaml.safe_load(TEXT)
    doc["hosts"]["web"]["count"] = 3
    scaled = topology.parse(yaml.safe_dump(doc), "scaled.yml")

    def kept(topo: Topology) -> str:
        sql = db.stray_accounts_sql(topo, topo.hosts["db1"])
        assert "WHERE User IN ('app', 'repl', 'failover')" in sql
        return sql.split("NOT IN (")[1].split(")")[0]

    # Scaled out, web3's account is one of the node's own; scaled back in, it is a stray.
    assert "'app'@'192.168.57.23'" in kept(scaled)
    assert kept(hardened) == (
        "\"'app'@'192.168.57.21'\", \"'app'@'192.168.57.22'\", "
        "\"'failover'@'192.168.57.30'\", \"'repl'@'192.168.57.42'\", \"'repl'@'192.168.57.43'\""
    )


@pytest.mark.usefixtures("offline_roles")
def test_the_stats_page_listens_where_the_monitor_reads_it(hardened: Topology) -> None:
    steps = lb.steps(HostContext(hardened, hardened.hosts["lb2"], FACTS))
    conf = next(s for s in steps if isinstance(s, File) and s.path.endswith("haproxy.cfg"))
    # lb2's private address, the one the monitor reaches it at; never the users' network.
    assert "bind 192.168.57.12:8404" in conf.data.decode()


def flows_on(text: str, name: str, key: str, value: str, network: str) -> Topology:
    """The topology in `text` with every flow whose `key` is `value` moved to `network`."""
    doc = yaml.safe_load(text)
    for flow in doc["flows"]:
        if flow.get(key) == value:
            flow["network"] = network
    return topology.parse(yaml.safe_dump(doc), name)


def test_a_stats_flow_on_the_users_network_moves_the_stats_page_there() -> None:
    seed_text = (topology.TOPOLOGY_DIR / "seed.yml").read_text()
    topo = flows_on(seed_text, "seed.yml", "port", "haproxy-stats", "public")
    assert lb.stats_bind_address(topo, topo.hosts["lb1"]) == "192.168.56.10"


def test_a_stats_flow_to_the_floating_address_is_refused_naming_the_host() -> None:
    topo = flows_on(TEXT, "hardened.yml", "port", "haproxy-stats", "public")
    with pytest.raises(StepError, match=r"lb2: .*floating address 192\.168\.56\.10"):
        lb.stats_bind_address(topo, topo.hosts["lb2"])


@pytest.mark.usefixtures("offline_roles")
def test_vrrp_runs_on_the_network_its_flow_names() -> None:
    topo = flows_on(TEXT, "hardened.yml", "proto", "vrrp", "public")
    steps = lb.steps(HostContext(topo, topo.hosts["lb2"], FACTS))
    conf = next(s for s in steps if isinstance(s, File) and s.path == lb.KEEPALIVED_CONFIG)
    text = conf.data.decode()
    # lb2's and lb1's own public addresses, on eth1 (FACTS), written here by hand.
    assert "interface eth1" in text and "unicast_src_ip 192.168.56.12" in text
    assert "unicast_peer {\n        192.168.56.11\n    }" in text
