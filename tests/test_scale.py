"""`fab scale`: the count override in the model, and the pure parts of the task."""

from __future__ import annotations

import pytest

from provision import topology
from provision.ops import scale
from provision.ops.common import TaskError

TEXT = (topology.TOPOLOGY_DIR / "hardened.yml").read_text()


def test_a_count_override_adds_hosts_at_the_next_addresses_everywhere() -> None:
    three = topology.parse(TEXT, "hardened.yml", {"count.web": 3})
    assert scale.counted_members(three, "web") == ["web1", "web2", "web3"]
    assert str(three.hosts["web3"].addresses["private"]) == "192.168.57.23"
    assert three.scaled == {"count.web": 3}
    # The new host is in every flow its role has: the balancers reach it, it reaches the
    # database, and its agent pushes to the monitor.
    paths = {(p.source.name, p.dest.name) for p in three.allowed_paths()}
    assert {("lb1", "web3"), ("lb2", "web3"), ("web3", "db1"), ("web3", "monitor")} <= paths
    # The file's count stays the default.
    assert scale.counted_members(topology.parse(TEXT, "hardened.yml"), "web") == ["web1", "web2"]


def test_only_a_counted_group_can_be_scaled() -> None:
    seed = (topology.TOPOLOGY_DIR / "seed.yml").read_text()
    with pytest.raises(topology.TopologyError, match="hosts.web: no host group with a `count:`"):
        topology.parse(seed, "seed.yml", {"count.web": 3})
    with pytest.raises(topology.TopologyError, match="hosts.db1.count: db1 has no count"):
        topology.parse(TEXT, "hardened.yml", {"count.db1": 2})
    with pytest.raises(topology.TopologyError, match=r"hosts.web.count: expected a number 1-50"):
        topology.parse(TEXT, "hardened.yml", {"count.web": 0})


@pytest.mark.parametrize("spec", ["web", "web=", "=3", "web=three", "web=-1"])
def test_a_malformed_spec_is_refused(spec: str) -> None:
    with pytest.raises(TaskError, match="expected TIER=COUNT"):
        scale.parse_spec(spec)


def test_sessions_of_the_drained_servers_are_read_from_show_stat() -> None:
    show_stat = (
        "# pxname,svname,qcur,qmax,scur,smax\n"
        "https,FRONTEND,,,7,20\n"
        "web,web1,0,0,2,5\n"
        "web,web3,0,0,1,4\n"
        "api,web3,0,0,3,4\n"
        "web,BACKEND,0,0,3,9\n"
        "stats,FRONTEND,,,1,1\n"
    )
    assert scale.sessions(show_stat, ["web3"]) == 4
    assert scale.sessions(show_stat, ["web1", "web3"]) == 6
    assert scale.sessions(show_stat, ["web2"]) == 0
    with pytest.raises(Exception, match="unexpected `show stat` output"):
        scale.sessions("Unknown command\n", ["web3"])
