"""The pure parts of `fab drill`: targets, peers, iptables rules, arguments, outcomes."""

from __future__ import annotations

from typing import Any

import pytest

from provision import topology
from provision.dbcluster import NodeState
from provision.drills import nemesis, runner, workload
from provision.drills.nemesis import DrillError, Target


@pytest.fixture(scope="module")
def seed() -> topology.Topology:
    # The file's own switches, whatever a `fab deploy --option` left live on this machine:
    # the allowed flows (and so the probes) depend on them.
    return topology.load("seed", {"auto_failover": False, "reencrypt": False})


# --------------------------------------------------------------------------- arguments

GOOD = {
    "duration": 8.0,
    "users": 10,
    "rate": 2.0,
    "loss": 0.3,
    "warmup": 8.0,
    "settle": 10.0,
    "peers": "",
}


def test_defaults_are_valid_for_every_fault() -> None:
    for fault in nemesis.FAULTS:
        nemesis.validate(fault, **GOOD)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fault", "change", "words"),
    [
        ("explode", {}, "unknown fault 'explode'"),
        ("kill", {"duration": 0}, "--duration"),
        ("kill", {"duration": 601}, "--duration"),
        ("kill", {"users": 0}, "--users"),
        ("kill", {"rate": 0}, "--rate"),
        ("loss", {"loss": 1.0}, "--loss"),
        ("loss", {"loss": 0}, "--loss"),
        ("kill", {"warmup": 1}, "--warmup"),
        ("kill", {"settle": -1}, "--settle"),
        ("kill", {"peers": "lb1"}, "--peers applies only to partition, loss, delay"),
        ("pause", {"side": "db3"}, "--side applies only to partition and loss, not pause"),
    ],
)
def test_bad_arguments_are_refused_with_the_option_named(
    fault: str, change: dict[str, float], words: str
) -> None:
    with pytest.raises(DrillError, match=words.replace("(", r"\(")):
        nemesis.validate(fault, **{**GOOD, **change})  # type: ignore[arg-type]


def test_every_fault_is_explained_in_the_fab_help() -> None:
    import fabfile

    doc = fabfile.drill.__doc__ or ""
    for fault in nemesis.FAULTS:
        assert f"\n      {fault} " in doc, fault


# --------------------------------------------------------------------------- targets


def test_roles_resolve_against_the_live_cluster(seed: topology.Topology) -> None:
    # After a failover web2 is the primary: the role follows the machines, not the file.
    t = nemesis.resolve_target(seed, "db-primary", "pause", "web2", ["web1"])
    assert t == Target("web2", "db-primary", "db-primary")
    t = nemesis.resolve_target(seed, "db-replica", "kill", "web2", ["web1"])
    assert t == Target("web1", "db-replica", "db-replica")
    assert nemesis.resolve_target(seed, "lb", "kill", "web1", ["web2"]).host == "lb1"
    assert nemesis.resolve_target(seed, "web", "kill", "web1", ["web2"]).host == "web1"


def test_a_host_with_web_and_db_roles_is_hit_as_a_web_host(seed: topology.Topology) -> None:
    assert nemesis.resolve_target(seed, "web2", "kill", "web1", ["web2"]).role == "web"
    # ...except by the deploy fault, which is about its database (its current role).
    assert nemesis.resolve_target(seed, "web2", "deploy", "web1", ["web2"]).role == "db-replica"
    assert nemesis.resolve_target(seed, "web2", "deploy", "web2", ["web1"]).role == "db-primary"


def test_targets_that_cannot_be_resolved(seed: topology.Topology) -> None:
    with pytest.raises(DrillError, match="no node is the primary"):
        nemesis.resolve_target(seed, "db-primary", "kill", None, [])
    with pytest.raises(DrillError, match="no node replicates"):
        nemesis.resolve_target(seed, "db-replica", "kill", "web1", [])
    with pytest.raises(DrillError, match="unknown target 'web9'.*lb1, web1, web2"):
        nemesis.resolve_target(seed, "web9", "kill", "web1", ["web2"])
    with pytest.raises(DrillError, match="needs a database host"):
        nemesis.resolve_target(seed, "lb1", "deploy", "web1", ["web2"])


def test_units_a_process_fault_hits(seed: topology.Topology) -> None:
    assert nemesis.units_for(seed, Target("web2", "web", "web2")) == ("nginx", "testbed-app")
    assert nemesis.units_for(seed, Target("web1", "db-primary", "db-primary")) == ("mariadb",)
    assert nemesis.units_for(seed, Target("lb1", "lb", "lb")) == ("haproxy",)
    with pytest.raises(DrillError, match="no service"):
        nemesis.units_for(seed, Target("client", "client", "client"))


def test_default_and_given_peers(seed: topology.Topology) -> None:
    db = Target("web1", "db-primary", "db-primary")
    assert nemesis.default_peers(seed, db) == ["web2", "monitor"]
    assert nemesis.default_peers(seed, Target("web2", "web", "web2")) == ["lb1"]
    assert nemesis.default_peers(seed, Target("lb1", "lb", "lb")) == ["web1", "web2"]
    given = nemesis.parse_peers(seed, "db-replica, monitor,web1", db, "web1", ["web2"])
    assert given == ["web2", "monitor"]  # the target itself is never its own peer
    with pytest.raises(DrillError, match="neither a host nor a role"):
        nemesis.parse_peers(seed, "nobody", db, "web1", ["web2"])
    with pytest.raises(DrillError, match="no host other than the target"):
        nemesis.parse_peers(seed, "web1", db, "web1", ["web2"])


def test_expectations_follow_what_the_fault_touches(seed: topology.Topology) -> None:
    web2 = Target("web2", "web", "web2")
    primary = Target("web1", "db-primary", "db-primary")
    assert nemesis.expectations(seed, "kill", web2, []) == {
        "db_fault": False,
        "web_fault": True,
        "lb_fault": False,
    }
    assert nemesis.expectations(seed, "pause", primary, []) == {
        "db_fault": True,
        "web_fault": False,
        "lb_fault": False,
    }
    # A machine stop takes every tier the machine runs.
    assert nemesis.expectations(seed, "stop", web2, []) == {
        "db_fault": True,
        "web_fault": True,
        "lb_fault": False,
    }
    # A network fault: the tiers whose traffic crosses a cut link.
    assert nemesis.expectations(seed, "partition", web2, ["lb1"]) == {
        "db_fault": False,
        "web_fault": True,
        "lb_fault": False,
    }
    assert nemesis.expectations(seed, "partition", primary, ["web2", "monitor"]) == {
        "db_fault": True,
        "web_fault": False,
        "lb_fault": False,
    }


def test_a_split_in_two_groups_is_a_database_fault_through_the_side_too() -> None:
    # hardened: db1 (primary) and db3 cut off together from the monitor and db2. The target
    # alone with those peers touches the database tier; the side's links count as well.
    hardened = topology.load("hardened", {})
    db1 = Target("db1", "db-primary", "db-primary")
    web = Target("web1", "web", "web1")
    assert nemesis.expectations(hardened, "partition", web, ["monitor"]) == {
        "db_fault": False,
        "web_fault": False,
        "lb_fault": False,
    }
    assert nemesis.expectations(hardened, "partition", web, ["monitor"], side=["db3"]) == {
        "db_fault": True,
        "web_fault": False,
        "lb_fault": False,
    }
    assert nemesis.expectations(hardened, "partition", db1, ["monitor", "db2"], ["db3"]) == {
        "db_fault": True,
        "web_fault": False,
        "lb_fault": False,
    }


def test_a_balancer_fault_is_held_to_the_front_door_bound(seed: topology.Topology) -> None:
    lb = Target("lb1", "lb", "lb")
    assert nemesis.expectations(seed, "kill", lb, [])["lb_fault"] is True
    assert nemesis.expectations(seed, "stop", Target("lb1", "lb", "lb1"), [])["lb_fault"] is True
    assert nemesis.expectations(seed, "partition", lb, ["web1"])["lb_fault"] is True
    assert (
        nemesis.expectations(seed, "stop", Target("web2", "web", "web2"), [])["lb_fault"] is False
    )


# --------------------------------------------------------------------------- iptables


def test_partition_rules_cut_both_directions_on_shared_networks(seed: topology.Topology) -> None:
    links = nemesis.links(seed, "web2", ["lb1"])
    assert links == [nemesis.Link("lb1", "private", "192.168.57.10", "192.168.57.22")]
    rules = nemesis.chain_rules(links)
    assert rules == [
        "-A DRILL -s 192.168.57.10/32 -d 192.168.57.22/32 -m comment "
        "--comment 'drill partition: lb1 (private)' -j DROP",
        "-A DRILL -s 192.168.57.22/32 -d 192.168.57.10/32 -m comment "
        "--comment 'drill partition: lb1 (private)' -j DROP",
    ]


def test_loss_rules_use_the_statistic_match(seed: topology.Topology) -> None:
    rules = nemesis.chain_rules(nemesis.links(seed, "web1", ["web2", "monitor"]), loss=0.25)
    assert len(rules) == 4
    assert all("-m statistic --mode random --probability 0.25 " in r for r in rules)
    assert all(r.endswith("-j DROP") and r.startswith("-A DRILL ") for r in rules)


def test_no_shared_network_means_nothing_to_cut(seed: topology.Topology) -> None:
    with pytest.raises(DrillError, match="client and web1 share no network"):
        nemesis.links(seed, "client", ["web1"])


def test_the_chain_is_jumped_to_first_and_removed_completely() -> None:
    script = nemesis.install_script(["-A DRILL -s 1.2.3.4/32 -j DROP"])
    lines = script.splitlines()
    # Leftovers of an interrupted drill go first, then the chain, then the jumps on top.
    assert lines[0] == nemesis.remove_script()
    assert lines[1:] == [
        "set -e",
        "iptables -w -N DRILL",
        "iptables -w -A DRILL -s 1.2.3.4/32 -j DROP",
        "iptables -w -I INPUT 1 -j DRILL",
        "iptables -w -I OUTPUT 1 -j DRILL",
    ]
    removal = nemesis.remove_script()
    for part in ("-D INPUT -j DRILL", "-D OUTPUT -j DRILL", "-F DRILL", "-X DRILL"):
        assert part in removal
    assert "-F INPUT" not in removal and "-P " not in removal  # only the drill's own chain


def test_the_management_path_is_never_cut(seed: topology.Topology) -> None:
    links = nemesis.links(seed, "web2", ["lb1"])
    assert not nemesis.cuts_management(links, "172.17.0.1")
    assert nemesis.cuts_management(links, "192.168.57.10")


def test_dropped_packets_are_read_from_the_counters() -> None:
    listing = """Chain DRILL (2 references)
    pkts      bytes target     prot opt in     out     source               destination
      12      720 DROP       all  --  *      *       192.168.57.10        192.168.57.22
       3      180 DROP       all  --  *      *       192.168.57.22        192.168.57.10
"""
    assert nemesis.dropped_packets(listing) == 15


def test_probes_use_a_flow_the_firewall_allows(seed: topology.Topology) -> None:
    assert nemesis.probes(seed, "web2", ["lb1"]) == [
        nemesis.Probe("lb1", "web2", "192.168.57.22", 80)
    ]
    # No flow from the monitor to a db node (auto_failover off): probe the other way.
    found = nemesis.probes(seed, "web1", ["web2", "monitor"])
    assert nemesis.Probe("web1", "monitor", "192.168.57.30", 9090) in found
    assert found[0].source == "web2" and found[0].dest == "web1"


@pytest.mark.parametrize(
    ("rc", "output", "result"),
    [
        (0, "", "open"),
        (1, "bash: connect: Connection refused", "refused"),
        (124, "", "cut"),
        (1, "bash: connect: Operation not permitted", "cut"),
        (1, "bash: connect: No route to host", "error: rc 1: bash: connect: No route to host"),
    ],
)
def test_probe_results(rc: int, output: str, result: str) -> None:
    assert nemesis.probe_result(rc, output) == result


def test_interface_for_an_address() -> None:
    out = (
        "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n"
        "27: eth1@if28    inet 192.168.57.22/24 brd 192.168.57.255 scope global eth1\n"
    )
    assert nemesis.interface_for(out, "192.168.57.22") == "eth1"
    assert nemesis.interface_for(out, "192.168.57.99") is None


# --------------------------------------------------------------------------- history records


@pytest.mark.parametrize(
    ("method", "name", "status", "kind", "outcome"),
    [
        ("GET", "/", 200, "page", "ok"),
        ("GET", "/health", 503, "health", "fail"),
        ("GET", "/api/notes?limit=10", 200, "list", "ok"),
        ("GET", "/api/notes/[id]", 0, "read", "fail"),
        ("POST", "/api/notes", 201, "write", "ok"),
        ("POST", "/api/notes", 400, "write", "fail"),
        ("POST", "/api/notes", 503, "write", "fail"),  # refused before anything was written
        ("POST", "/api/notes", 0, "write", "unknown"),  # no answer: may have happened
        ("POST", "/api/notes", 500, "write", "unknown"),
        ("POST", "/api/notes", 502, "write", "unknown"),
        ("POST", "/api/notes", 504, "write", "unknown"),
        ("POST", "/api/notes", 200, "write", "unknown"),  # never sent by the app: no promise
    ],
)
def test_outcome_classification(
    method: str, name: str, status: int, kind: str, outcome: str
) -> None:
    assert workload.classify(method, name, status) == (kind, outcome)


def test_a_history_record_of_an_acknowledged_write() -> None:
    record = workload.history_record(
        method="POST",
        name="/api/notes",
        url="https://127.0.0.1:8443/api/notes",
        status=201,
        start=100.0,
        response_time_ms=25.0,
        served_by="web1",
        body={"id": 17, "text": "drill-x 1", "server": "web1", "db": "web2"},
        text="drill-x 1",
        error="",
    )
    assert record == {
        "start": 100.0,
        "end": 100.025,
        "kind": "write",
        "method": "POST",
        "name": "/api/notes",
        "status": 201,
        "outcome": "ok",
        "server": "web1",
        "db": "web2",
        "text": "drill-x 1",
        "note_id": 17,
        "error": "",
        "seen": [],
    }


def test_a_write_without_an_answer_has_no_status_and_no_node() -> None:
    record = workload.history_record(
        method="POST",
        name="/api/notes",
        url="https://127.0.0.1:8443/api/notes",
        status=0,
        start=100.0,
        response_time_ms=10000.0,
        served_by=None,
        body=None,
        text="drill-x 2",
        error="ConnectionResetError(104)",
    )
    assert record["status"] is None and record["outcome"] == "unknown"
    assert (record["server"], record["db"], record["note_id"]) == ("", "", None)
    # A refusal's JSON never names a committing node, even if it carried a "db" key.
    refused = workload.history_record(
        method="POST",
        name="/api/notes",
        url="",
        status=503,
        start=1.0,
        response_time_ms=1.0,
        served_by="web2",
        body={"error": "no database", "status": 503, "db": "web1"},
        text="t",
        error="",
    )
    assert refused["db"] == "" and refused["outcome"] == "fail"


def test_a_read_records_the_note_it_asked_for() -> None:
    record = workload.history_record(
        method="GET",
        name="/api/notes/[id]",
        url="https://127.0.0.1:8443/api/notes/42",
        status=200,
        start=1.0,
        response_time_ms=5.0,
        served_by="web2",
        body=None,
        text="",
        error="",
    )
    assert (record["kind"], record["note_id"], record["outcome"]) == ("read", 42, "ok")


def test_a_successful_read_records_the_drill_notes_it_saw() -> None:
    """Only the drill's own texts (other writers' notes are not the checker's business),
    and only from a 200: a refusal's body shows nothing."""
    listed = {
        "notes": [
            {"id": 9, "text": "drill-x 9"},
            {"id": 8, "text": "someone else's"},
            {"id": 7, "text": "drill-xy 7"},  # another drill's prefix that starts the same
        ]
    }
    kwargs: dict[str, Any] = {
        "method": "GET", "url": "", "start": 1.0, "response_time_ms": 5.0,
        "served_by": "web2", "text": "", "error": "", "prefix": "drill-x",
    }  # fmt: skip
    lst = workload.history_record(name="/api/notes?limit=10", status=200, body=listed, **kwargs)
    assert lst["kind"] == "list" and lst["seen"] == ["drill-x 9"]
    one = {"id": 9, "text": "drill-x 9"}
    assert workload.history_record(name="/api/notes/[id]", status=200, body=one, **kwargs)[
        "seen"
    ] == ["drill-x 9"]
    refused = {"error": "no database", "status": 503}
    assert (
        workload.history_record(name="/api/notes/[id]", status=503, body=refused, **kwargs)["seen"]
        == []
    )
    assert workload.seen_texts(listed, "") == [], "without a prefix nothing is recorded"


def test_drill_prefixes_are_unique_and_hex() -> None:
    a, b = workload.new_prefix(), workload.new_prefix()
    assert a != b and a.startswith("drill-") and len(a) == len("drill-") + 8


# --------------------------------------------------------------------------- runner parts


@pytest.mark.parametrize(
    ("rc", "output", "expected"),
    [
        (0, "read_only: 0\n", (True, "primary", "")),
        (
            0,
            "read_only: 1\n*** 1. row ***\nMaster_Host: 192.168.57.21\n"
            "Slave_IO_Running: Yes\nSlave_SQL_Running: Yes\n",
            (False, "replica", "Yes/Yes"),
        ),
        (0, "read_only: 1\n", (False, "fenced", "")),
        (124, "", (None, "no answer", "")),  # `timeout 1`: a paused mariadbd
        (1, "ERROR 2002 (HY000): Can't connect", (None, "no answer", "")),
    ],
)
def test_parse_sample(rc: int, output: str, expected: tuple[bool | None, str, str]) -> None:
    assert runner.parse_sample(rc, output) == expected


def _s(t: float, node: str, writable: bool | None) -> dict[str, object]:
    return {"t": t, "node": node, "writable": writable}


def test_settled_needs_one_writable_node_for_the_whole_hold() -> None:
    nodes = ["web1", "web2"]
    samples = [
        _s(10.0, "web1", None),
        _s(10.1, "web2", False),
        _s(10.5, "web1", True),  # run starts here
        _s(10.6, "web2", False),
        _s(12.0, "web1", True),
        _s(12.1, "web2", False),
        _s(13.5, "web1", True),  # 3.0 s after 10.5
    ]
    assert runner.settled_since(samples, nodes, since=10.0, hold=3.0) == 10.5
    assert runner.settled_since(samples[:-1], nodes, since=10.0, hold=3.0) is None


def test_settled_restarts_when_two_are_writable_or_the_writer_changes() -> None:
    nodes = ["web1", "web2"]
    samples = [
        _s(1.0, "web1", True),
        _s(1.1, "web2", False),
        _s(2.0, "web2", True),  # two writable: no run
        _s(2.5, "web1", False),  # web2 alone from here
        _s(5.4, "web2", True),
        _s(5.6, "web1", False),
    ]
    assert runner.settled_since(samples, nodes, since=0.0, hold=3.0) == 2.5
    # Samples before `since` do not count, and every node must have been seen since.
    assert runner.settled_since(samples, nodes, since=5.5, hold=3.0) is None


def _state(name: str, **kw: object) -> NodeState:
    return NodeState(name, True, **kw)  # type: ignore[arg-type]


def test_cluster_preflight_names_the_node_and_the_fix() -> None:
    primary = _state("web1", read_only=False)
    replica = _state("web2", replicating_from="192.168.57.21", io_running="Yes", sql_running="Yes")
    assert runner.cluster_problem({"web1": primary, "web2": replica}) is None
    fenced = _state("web2")
    assert "fab db.rejoin --host web2" in (
        runner.cluster_problem({"web1": primary, "web2": fenced}) or ""
    )
    broken = _state("web2", replicating_from="x", io_running="No", sql_running="Yes")
    assert "IO/SQL No/Yes" in (runner.cluster_problem({"web1": primary, "web2": broken}) or "")
    none = runner.cluster_problem({"web1": _state("web1"), "web2": replica})
    assert none is not None and "fab db.failover" in none
    two = runner.cluster_problem({"web1": primary, "web2": _state("web2", read_only=False)})
    assert two is not None and two.startswith("split brain")
    down = runner.cluster_problem({"web1": primary, "web2": NodeState("web2", False, "SSH")})
    assert down is not None and down.startswith("web2: MariaDB does not answer")


def test_dbwatch_journal_lines_become_events() -> None:
    lines = "\n".join(
        [
            '{"__REALTIME_TIMESTAMP": "1700000000500000", "MESSAGE": '
            '"{\\"event\\": \\"failover\\", \\"seconds\\": 4.2}"}',
            '{"__REALTIME_TIMESTAMP": "1700000001000000", "MESSAGE": "Started dbwatch.service"}',
            "not json",
        ]
    )
    events = runner.dbwatch_events(lines)
    assert [(e["t"], e["event"]) for e in events] == [
        (1700000000.5, "failover"),
        (1700000001.0, "dbwatch-log"),
    ]
    assert events[0]["detail"] == '{"event": "failover", "seconds": 4.2}'


def test_folder_names_are_utc_fault_host() -> None:
    from datetime import UTC, datetime

    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert runner.folder_name(when, "kill", "web2") == "20260102T030405Z-kill-web2"


@pytest.mark.parametrize(
    "timeouts,pause", [(0, 0.5), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]
)
def test_the_sampler_backs_off_from_a_server_that_keeps_timing_out(
    timeouts: int, pause: float
) -> None:
    assert runner.sample_pause(timeouts) == pause


def test_the_sampler_leaves_a_hung_server_most_of_its_connections() -> None:
    # A minute of a hung server: the stuck samples the observer leaves stay far below
    # MariaDB's 151 connections (at a fixed 0.5 s pace: 120).
    t, n = 0.0, 0
    while t < 60:
        n += 1
        t += runner.sample_pause(n)
    assert n <= 20
