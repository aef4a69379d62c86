"""provision/inventory.py: `vagrant ssh-config` output and inventory files become endpoints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from provision import inventory, topology
from provision.inventory import (
    INVENTORY_ENV,
    Endpoint,
    InventoryError,
    SiteEntry,
    from_file,
    parse_ssh_config,
    selected,
    site_entry,
)
from provision.power import Power, PowerError
from provision.topology import Topology

# What `vagrant ssh-config` prints for several machines (Vagrant 2.3+: the insecure keys are
# listed as two IdentityFile lines; a path with a space is quoted).
SSH_CONFIG = """\
Host lb1
  HostName 127.0.0.1
  User vagrant
  Port 2200
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile /work/main/.vagrant/machines/lb1/docker/private_key
  IdentitiesOnly yes
  LogLevel FATAL
  PubkeyAcceptedKeyTypes +ssh-rsa
  HostKeyAlgorithms +ssh-rsa

# a comment between machines
Host web1
  HostName 127.0.0.1
  User vagrant
  Port 2201
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile "/home/some user/.vagrant.d/insecure_private_keys/vagrant.key.ed25519"
  IdentityFile "/home/some user/.vagrant.d/insecure_private_keys/vagrant.key.rsa"
  IdentitiesOnly yes
  LogLevel FATAL

Host web2
  HostName 192.168.121.22
  User admin
  Port 22
  IdentityFile /keys/web2

Host monitor
  HostName 127.0.0.1
"""


@pytest.fixture(scope="module")
def endpoints() -> dict[str, Endpoint]:
    return parse_ssh_config(SSH_CONFIG)


def test_ssh_config_gives_one_endpoint_per_host_block(endpoints: dict[str, Endpoint]) -> None:
    assert list(endpoints) == ["lb1", "web1", "web2", "monitor"]


@pytest.mark.parametrize(
    ("host", "hostname", "port", "user"),
    [
        ("lb1", "127.0.0.1", 2200, "vagrant"),
        ("web1", "127.0.0.1", 2201, "vagrant"),
        ("web2", "192.168.121.22", 22, "admin"),
    ],
    ids=["lb1", "web1", "web2"],
)
def test_ssh_config_reads_hostname_port_and_user(
    endpoints: dict[str, Endpoint], host: str, hostname: str, port: int, user: str
) -> None:
    ep = endpoints[host]
    assert (ep.hostname, ep.port, ep.user) == (hostname, port, user)


def test_ssh_config_reads_an_unquoted_identity_file(endpoints: dict[str, Endpoint]) -> None:
    assert endpoints["lb1"].key_file == "/work/main/.vagrant/machines/lb1/docker/private_key"


def test_ssh_config_strips_the_quotes_of_an_identity_file_with_a_space(
    endpoints: dict[str, Endpoint],
) -> None:
    assert endpoints["web1"].key_file == (
        "/home/some user/.vagrant.d/insecure_private_keys/vagrant.key.ed25519"
    )


def test_ssh_config_keeps_the_first_value_of_a_repeated_keyword_like_ssh(
    endpoints: dict[str, Endpoint],
) -> None:
    assert endpoints["web1"].key_file is not None
    assert endpoints["web1"].key_file.endswith("ed25519")


def test_ssh_config_host_without_port_user_or_key_gets_the_defaults(
    endpoints: dict[str, Endpoint],
) -> None:
    assert endpoints["monitor"] == Endpoint("monitor", "127.0.0.1", 22, "vagrant", None)


def test_ssh_config_keywords_are_case_insensitive() -> None:
    parsed = parse_ssh_config("host lb1\n  hostname 10.0.0.5\n  PORT 2222\n")
    assert (parsed["lb1"].hostname, parsed["lb1"].port) == ("10.0.0.5", 2222)


def test_empty_ssh_config_gives_no_endpoints() -> None:
    assert parse_ssh_config("") == {}


def test_endpoint_with_a_key_uses_only_that_key() -> None:
    kwargs = Endpoint("lb1", "127.0.0.1", key_file="/keys/lb1").connect_kwargs()
    assert (kwargs["key_filename"], kwargs["look_for_keys"], kwargs["allow_agent"]) == (
        ["/keys/lb1"],
        False,
        False,
    )


def test_endpoint_without_a_key_leaves_key_lookup_to_paramiko() -> None:
    assert "key_filename" not in Endpoint("lb1", "127.0.0.1").connect_kwargs()


# --------------------------------------------------------------------------- inventory files

FULL_INVENTORY = """\
hosts:
  lb1:     {host: 203.0.113.10, user: admin, port: 2222, key: /keys/id_ed25519}
  web1:    {host: 203.0.113.21, user: admin}
  web2:    {host: 203.0.113.22, user: admin}
  monitor: {host: 203.0.113.30, user: admin}
  client:  {host: 203.0.113.100}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inventory.yml"
    path.write_text(text)
    return path


def test_inventory_file_gives_an_endpoint_for_every_topology_host(
    tmp_path: Path, seed: Topology
) -> None:
    assert list(from_file(write(tmp_path, FULL_INVENTORY), seed)) == [h.name for h in seed]


def test_inventory_file_reads_host_user_port_and_key(tmp_path: Path, seed: Topology) -> None:
    lb1 = from_file(write(tmp_path, FULL_INVENTORY), seed)["lb1"]
    assert lb1 == Endpoint("lb1", "203.0.113.10", 2222, "admin", "/keys/id_ed25519")


def test_inventory_host_without_user_logs_in_as_root(tmp_path: Path, seed: Topology) -> None:
    assert from_file(write(tmp_path, FULL_INVENTORY), seed)["client"].user == "root"


def test_inventory_host_without_port_uses_22(tmp_path: Path, seed: Topology) -> None:
    assert from_file(write(tmp_path, FULL_INVENTORY), seed)["web1"].port == 22


def test_inventory_host_without_key_has_no_key_file(tmp_path: Path, seed: Topology) -> None:
    assert from_file(write(tmp_path, FULL_INVENTORY), seed)["web1"].key_file is None


def test_inventory_key_starting_with_tilde_is_expanded_to_home(
    tmp_path: Path, seed: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    text = FULL_INVENTORY.replace("/keys/id_ed25519", "~/.ssh/id_ed25519")
    key = from_file(write(tmp_path, text), seed)["lb1"].key_file
    assert key == str(tmp_path / "home" / ".ssh" / "id_ed25519")


def test_inventory_with_an_unknown_host_is_rejected_naming_it(
    tmp_path: Path, seed: Topology
) -> None:
    text = FULL_INVENTORY + "  db9:     {host: 203.0.113.99}\n"
    with pytest.raises(InventoryError, match=r"hosts\.db9: not a host of topology 'seed'"):
        from_file(write(tmp_path, text), seed)


def test_inventory_missing_a_topology_host_is_rejected_naming_it(
    tmp_path: Path, seed: Topology
) -> None:
    text = "".join(line for line in FULL_INVENTORY.splitlines(True) if "client" not in line)
    with pytest.raises(InventoryError, match=r"hosts\.client: missing"):
        from_file(write(tmp_path, text), seed)


def test_inventory_host_without_an_address_is_rejected_naming_it(
    tmp_path: Path, seed: Topology
) -> None:
    text = FULL_INVENTORY.replace("{host: 203.0.113.100}", "{user: admin}")
    with pytest.raises(InventoryError, match=r"hosts\.client: missing \(needs at least 'host'\)"):
        from_file(write(tmp_path, text), seed)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("- lb1\n- web1\n", id="top-level-list"),
        pytest.param("machines: {}\n", id="no-hosts-key"),
        pytest.param("hosts: [lb1, web1]\n", id="hosts-is-a-list"),
    ],
)
def test_inventory_without_a_hosts_mapping_is_rejected(
    tmp_path: Path, seed: Topology, text: str
) -> None:
    with pytest.raises(InventoryError, match="expected a top-level 'hosts' mapping"):
        from_file(write(tmp_path, text), seed)


def test_inventory_with_invalid_yaml_is_rejected(tmp_path: Path, seed: Topology) -> None:
    with pytest.raises(InventoryError, match="cannot read inventory"):
        from_file(write(tmp_path, "hosts: {lb1: [\n"), seed)


def test_missing_inventory_file_is_rejected(tmp_path: Path, seed: Topology) -> None:
    with pytest.raises(InventoryError, match="cannot read inventory"):
        from_file(tmp_path / "absent.yml", seed)


def test_inventory_with_a_non_numeric_port_is_rejected_as_an_inventory_error(
    tmp_path: Path, seed: Topology
) -> None:
    text = FULL_INVENTORY.replace("port: 2222", "port: ssh")
    with pytest.raises(InventoryError):
        from_file(write(tmp_path, text), seed)


# --------------------------------------------------------------------------- power, site, env


def test_inventory_power_commands_are_read_per_host(tmp_path: Path, seed: Topology) -> None:
    text = FULL_INVENTORY.replace(
        "web2:    {host: 203.0.113.22, user: admin}",
        "web2:    {host: 203.0.113.22, user: admin, "
        "power: {stop: 'virsh shutdown web2', start: 'virsh start web2'}}",
    )
    eps = from_file(write(tmp_path, text), seed)
    assert eps["web2"].power_command("stop") == "virsh shutdown web2"
    assert eps["web2"].power_command("start") == "virsh start web2"
    assert eps["web1"].power_command("stop") is None


@pytest.mark.parametrize(
    "power, problem",
    [
        ("{reboot: 'x'}", "hosts.web2.power: expected a mapping with 'stop' and 'start'"),
        ("{stop: ''}", "hosts.web2.power.stop: expected a command"),
        ("'virsh'", "hosts.web2.power: expected a mapping"),
    ],
)
def test_inventory_bad_power_commands_are_rejected_naming_the_key(
    tmp_path: Path, seed: Topology, power: str, problem: str
) -> None:
    text = FULL_INVENTORY.replace(
        "web2:    {host: 203.0.113.22, user: admin}",
        f"web2:    {{host: 203.0.113.22, power: {power}}}",
    )
    with pytest.raises(InventoryError, match=re.escape(problem)):
        from_file(write(tmp_path, text), seed)


def test_inventory_host_with_an_unknown_key_is_rejected_naming_it(
    tmp_path: Path, seed: Topology
) -> None:
    text = FULL_INVENTORY.replace("{host: 203.0.113.21, user: admin}", "{host: x, usr: admin}")
    with pytest.raises(InventoryError, match=r"hosts\.web1\.usr: unknown key"):
        from_file(write(tmp_path, text), seed)


def test_site_defaults_to_the_first_load_balancer_on_the_topology_ports(
    tmp_path: Path, seed: Topology
) -> None:
    entry = site_entry(seed, str(write(tmp_path, FULL_INVENTORY)))
    assert entry == SiteEntry("203.0.113.10", seed.port("site-https"), seed.port("site-http"))
    assert entry.url() == "https://203.0.113.10:443"


def test_site_entry_of_the_inventory_wins(tmp_path: Path, seed: Topology) -> None:
    text = FULL_INVENTORY + "site: {address: site.example.net, https: 8443}\n"
    entry = site_entry(seed, str(write(tmp_path, text)))
    assert (entry.address, entry.https, entry.http) == ("site.example.net", 8443, 80)


def test_without_an_inventory_the_site_is_the_forwarded_loopback_port(
    seed: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(INVENTORY_ENV, raising=False)
    lb = seed.with_role("lb")[0]
    entry = site_entry(seed)
    assert entry == SiteEntry(
        "127.0.0.1", lb.forward[seed.port("site-https")], lb.forward[seed.port("site-http")]
    )


def test_the_environment_names_the_inventory_when_no_argument_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(INVENTORY_ENV, str(tmp_path / "env.yml"))
    assert selected() == str(tmp_path / "env.yml")
    assert selected("given.yml") == "given.yml"
    monkeypatch.delenv(INVENTORY_ENV)
    assert selected() is None


def test_power_without_commands_for_an_inventory_host_says_what_to_add(
    tmp_path: Path, seed: Topology
) -> None:
    path = str(write(tmp_path, FULL_INVENTORY))
    power = Power(seed, from_file(Path(path), seed), path)
    assert not power.available("web2")
    with pytest.raises(PowerError, match=r"web2: the inventory gives no power\.stop command"):
        power.run("stop", "web2")


def test_power_runs_the_inventory_command_and_reports_its_failure(
    tmp_path: Path, seed: Topology
) -> None:
    text = FULL_INVENTORY.replace(
        "web2:    {host: 203.0.113.22, user: admin}",
        "web2:    {host: 203.0.113.22, power: {stop: 'true', start: 'sh -c \"echo no; exit 3\"'}}",
    )
    path = str(write(tmp_path, text))
    power = Power(seed, from_file(Path(path), seed), path)
    assert power.run("stop", "web2") >= 0
    with pytest.raises(PowerError, match=r"start web2: .* exited 3: no"):
        power.run("start", "web2")


def test_power_without_an_inventory_uses_vagrant(
    seed: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(INVENTORY_ENV, raising=False)
    power = Power(seed, {})
    assert power.command("stop", "web2") == ["vagrant", "halt", "web2"]
    assert power.command("start", "web2") == ["vagrant", "up", "web2"]


def test_a_site_port_that_is_not_a_port_is_rejected_naming_the_key(
    tmp_path: Path, seed: Topology
) -> None:
    text = FULL_INVENTORY + "site: {address: 203.0.113.10, https: null}\n"
    with pytest.raises(InventoryError, match=r"site\.https: expected 1-65535, got None"):
        site_entry(seed, str(write(tmp_path, text)))


def test_a_power_command_with_broken_quoting_is_an_error_naming_the_host(
    tmp_path: Path, seed: Topology
) -> None:
    text = FULL_INVENTORY.replace(
        "web2:    {host: 203.0.113.22, user: admin}",
        """web2:    {host: 203.0.113.22, power: {stop: "virsh 'shutdown", start: x}}""",
    )
    path = str(write(tmp_path, text))
    power = Power(seed, from_file(Path(path), seed), path)
    assert not power.available("web2")
    with pytest.raises(PowerError, match=r"web2: power\.stop: cannot read"):
        power.command("stop", "web2")


def test_an_inventorys_known_hosts_file_is_read_relative_to_it(tmp_path: Path) -> None:
    topo = topology.load("seed")
    hosts = {h.name: {"host": f"10.0.0.{i}"} for i, h in enumerate(topo, 1)}
    hosts["lb1"]["known_hosts"] = "keys/lb1"
    (tmp_path / "inv.yml").write_text(yaml.safe_dump({"hosts": hosts, "known_hosts": "all"}))
    eps = inventory.from_file(tmp_path / "inv.yml", topo)
    assert eps["lb1"].known_hosts == str(tmp_path / "keys" / "lb1")
    assert eps["web1"].known_hosts == str(tmp_path / "all")
    assert not any(ep.record_new_key for ep in eps.values()), "a server must be known already"


def test_a_vagrant_machines_key_record_follows_its_machine_id(tmp_path: Path) -> None:
    ids = tmp_path / ".vagrant" / "machines" / "web1" / "docker"
    ids.mkdir(parents=True)
    (ids / "id").write_text("8893d03a089a9d82ffff")
    first = inventory.machine_known_hosts(tmp_path, "web1")
    (ids / "id").write_text("119d25849f2d59f6ffff")  # created again: new keys, new record
    assert inventory.machine_known_hosts(tmp_path, "web1") != first
    assert first.name == "web1-8893d03a089a9d82"
