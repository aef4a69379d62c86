"""One owner for every port: the topology's `ports:`. Change a number there, and every
listener, firewall rule, scrape target and client config the deploy renders follows it.

Renders every role for every host of the seed topology twice, with its shipped ports and
with each port moved to a new number, and compares (no machine needed)."""

from __future__ import annotations

import re

import pytest
import yaml

from provision import monitoring, topology
from provision.engine import Command, File, HostContext
from provision.roles import ALL_ROLES
from provision.topology import Topology

SEED_TEXT = (topology.TOPOLOGY_DIR / "seed.yml").read_text()
FACTS = {
    "ssh_client": "172.17.0.1",
    "cpus": "2",
    "arch": "x86_64",
    "python": "3.11",
    "db_primary": "web1",
}


def moved(
    options: dict[str, object] | None = None, shift: int = 20000
) -> tuple[Topology, dict[str, tuple[int, int]]]:
    """The seed with every named port moved to `shift` + its position, and every forward's
    host port moved by `shift` (so no old number stays anywhere); name -> (old, new)."""
    doc = yaml.safe_load(SEED_TEXT)
    moves = {}
    for i, (name, old) in enumerate(doc["ports"].items()):
        doc["ports"][name] = shift + i
        moves[name] = (old, shift + i)
    for host in doc["hosts"].values():
        if "forward" in host:
            host["forward"] = {svc: local + shift for svc, local in host["forward"].items()}
    return topology.parse(yaml.safe_dump(doc, sort_keys=False), "moved.yml", options), moves


def rendered(topo: Topology) -> dict[str, str]:
    """ "host path" -> content of every file and command the deploy would write or run."""
    out: dict[str, str] = {}
    for host in topo:
        nics = " ".join(f"eth{i}={a}/24" for i, a in enumerate(host.addresses.values(), 1))
        ctx = HostContext(topo, host, {**FACTS, "interfaces": f"eth0=172.17.0.5/16 {nics}"})
        for role in ALL_ROLES:
            if host not in topo.in_tier(role.tier):
                continue
            for step in role.steps(ctx):
                if isinstance(step, File):
                    out[f"{host.name} {step.path}"] = step.data.decode(errors="replace")
                elif isinstance(step, Command):
                    out[f"{host.name} {step.name}"] = f"{step.check}\n{step.run}"
        for target in monitoring.targets(topo, host):
            out[f"{host.name} scrape {target.job}"] = target.address
    return out


pytestmark = pytest.mark.usefixtures("offline_roles")


@pytest.mark.parametrize(
    "options", [{}, {"reencrypt": True, "auto_failover": True}], ids=["seed", "all-options-on"]
)
def test_every_named_port_is_read_from_the_topology(options: dict[str, object]) -> None:
    """After moving every named port (and forward), none of the old numbers is left in
    anything the deploy renders (configs, unit files, firewall rules, scrape targets, the
    app's code), and each new number is in use. Loopback-only ports belong to
    provision/layout.py and never equal a named one."""
    topo, moves = moved(options)
    olds = {old for old, _ in moves.values()}
    files = rendered(topo)
    assert files.keys() == rendered(topology.parse(SEED_TEXT, "seed.yml", options)).keys()
    leftovers = [
        f"{key}:{text[: m.start()].count(chr(10)) + 1}: ...{text[max(0, m.start() - 30) : m.end()]}"
        for key, text in files.items()
        for m in re.finditer(r"\b\d+\b", text)
        if int(m.group(0)) in olds
    ]
    assert leftovers == []
    numbers = {int(n) for text in files.values() for n in re.findall(r"\b\d+\b", text)}
    for name in {f.service for f in topo.flows}:
        assert moves[name][1] in numbers, f"ports.{name} ({moves[name][1]}) is used nowhere"


def test_moving_the_mysql_port_moves_the_server_its_clients_and_the_rules() -> None:
    topo, moves = moved()
    new = moves["mysql"][1]
    files = rendered(topo)
    server = files["web1 /etc/mysql/mariadb.conf.d/60-webinfra-testbed.cnf"]
    assert f"port = {new}\n" in server
    writer = files["web1 /etc/haproxy/db-writer.cfg"]
    assert f"192.168.57.22:{new} check" in writer
    rules = files["web1 /etc/iptables/rules.v4"]
    assert f"-s 192.168.57.22/32 -d 192.168.57.21/32 -p tcp -m tcp --dport {new} " in rules
