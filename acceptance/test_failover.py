"""Failover drills under a writer loop: no acknowledged write is lost, the service comes
back, and the old primary returns fenced and rejoins as a replica.

Disruptive: kills the database primary, so it runs after every other test. Ends with a
planned switchover back, so the cluster is as the topology starts it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from acceptance.conftest import (
    FILE_OPTIONS,
    TOPOLOGY,
    deploy_option,
    file_option_is_live,
    restore_option,
)
from acceptance.site import SITE_CLIENT
from provision import dbcluster, engine, layout, secrets
from provision.inventory import Endpoint
from provision.power import Power
from provision.testkit import (
    JSON,
    Writer,
    fab,
    fab_run,
    not_present_once,
    semisync_status,
    wait_semisync_on,
)

_OPENED: list[engine.Remote] = []


def _remote(endpoints: dict[str, Endpoint], name: str) -> engine.Remote:
    """An open connection to `name`: `with _remote(...) as r:` closes it at the block's
    end; any other is closed after the test (the `closes_connections` fixture)."""
    r = engine.Remote(TOPOLOGY.hosts[name], endpoints[name])
    r.connect()
    _OPENED.append(r)
    return r


@pytest.fixture(autouse=True)
def closes_connections() -> Iterator[None]:
    yield
    while _OPENED:
        _OPENED.pop().close()


def _read_only_when_back(r: engine.Remote, name: str, limit: float = 60) -> bool:
    """Wait for a node's MariaDB to answer again (it restarts by itself); is it fenced?"""
    deadline = time.monotonic() + limit
    while not (rows := dbcluster.mysql(r, "SELECT @@read_only;", check=False)):
        assert time.monotonic() < deadline, f"{name}'s MariaDB did not come back"
        time.sleep(0.5)
    return rows == [["1"]]


@pytest.fixture
def healthy_cluster(endpoints: dict[str, Endpoint]) -> None:
    """Every node but the primary replicates (an earlier interrupted drill may have left one
    fenced): rejoin any that does not."""
    deadline = time.monotonic() + 90
    while True:  # a node killed by the test before restarts by itself: wait for it
        states = dbcluster.states(TOPOLOGY, endpoints)
        if all(s.reachable for s in states.values()) or time.monotonic() > deadline:
            break
        time.sleep(2)
    primary = dbcluster.discover_primary(TOPOLOGY, states)
    for name, state in states.items():
        if name != primary and state.role != "replica":
            fab("db.rejoin", "--host", name, "--discard")


@pytest.fixture
def manual_failover() -> Iterator[None]:
    """The operator's `fab db.failover` (dbwatch off) for the test; the file's mode after."""
    if not FILE_OPTIONS.get("auto_failover"):
        yield
        return
    deploy_option("auto_failover", False)
    try:
        yield
    finally:
        restore_option("auto_failover")


@pytest.mark.disruptive
@pytest.mark.usefixtures("manual_failover", "healthy_cluster")
def test_killing_the_primary_loses_no_acknowledged_write(endpoints: dict[str, Endpoint]) -> None:
    states = dbcluster.states(TOPOLOGY, endpoints)
    old = dbcluster.discover_primary(TOPOLOGY, states)
    old_r = _remote(endpoints, old)
    at_start = wait_semisync_on(SITE_CLIENT, old_r, 15)
    writer = Writer(SITE_CLIENT).start()
    try:
        time.sleep(3)
        before = semisync_status(old_r)
        assert before["Rpl_semi_sync_master_status"] == "ON"
        fault = time.monotonic()
        old_r.run("pkill -9 -x mariadbd")  # systemd restarts it, read-only (fenced)
        while writer.failures_after(fault) == 0 and time.monotonic() - fault < 10:
            time.sleep(0.1)  # the drill's "monitoring": the first failed write
        out = fab("db.failover")
        promoted = time.monotonic()
        while not any(ok and t > promoted for t, ok in writer.answers):
            if time.monotonic() - promoted > 30:
                break
            time.sleep(0.1)
        time.sleep(2)
    finally:
        writer.stop()
    outage = writer.outage_after(fault)
    print(
        f"\nfailover drill (SIGKILL of {old}'s mariadbd): write outage {outage:.2f} s, "
        f"{len(writer.acked)} writes acknowledged\n{out}"
    )
    assert outage < 60, "writes never came back"
    new = dbcluster.discover_primary(TOPOLOGY, dbcluster.states(TOPOLOGY, endpoints))
    assert new != old
    new_r = _remote(endpoints, new)
    assert not_present_once(new_r, writer.acked) == []
    # Semi-sync stayed on up to the fault: no write under load was committed without the
    # replica's acknowledgement.
    assert before["Rpl_semi_sync_master_no_tx"] == at_start["Rpl_semi_sync_master_no_tx"]
    assert int(before["Rpl_semi_sync_master_yes_tx"]) > int(at_start["Rpl_semi_sync_master_yes_tx"])
    # The old primary came back on its own, fenced: it refuses writes.
    old_r.close()
    old_r = _remote(endpoints, old)
    assert _read_only_when_back(old_r, old)
    # An old primary killed mid-commit may hold a transaction no client saw acknowledged;
    # the operator discards it explicitly (rejoin lists it first).
    fab("db.rejoin", "--host", old, "--discard")
    rejoined = dbcluster.states(TOPOLOGY, endpoints)[old]
    assert (rejoined.role, rejoined.io_running, rejoined.sql_running) == ("replica", "Yes", "Yes")
    dbcluster.wait_applied(old_r, dbcluster.mysql(new_r, "SELECT @@gtid_binlog_pos;")[0][0])
    assert not_present_once(old_r, writer.acked) == []


@pytest.fixture
def auto_failover(endpoints: dict[str, Endpoint]) -> Iterator[None]:
    """dbwatch on (as in `hardened`) for the test, as the topology file says after it."""
    if not file_option_is_live("auto_failover"):
        deploy_option("auto_failover", True)  # else it is on already (hardened)
    try:
        yield
    finally:
        restore_option("auto_failover")  # options persist: set it back


def _wait_writes_back(writer: Writer, fault: float, limit: float = 60) -> None:
    """Until an acknowledged write follows a failed one after `fault` (or `limit` s)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        failed = [t for t, ok in writer.answers if not ok and t > fault]
        if failed and any(ok and t > failed[0] for t, ok in writer.answers):
            return
        time.sleep(0.2)


def _drill(endpoints: dict[str, Endpoint], fault_cmd: str | None, old: str, power: Power) -> Writer:
    """Writes under a fault on `old`: `fault_cmd` run on it, or (None) its machine stopped."""
    with _remote(endpoints, old) as r:
        at_start = wait_semisync_on(SITE_CLIENT, r, 15)
    writer = Writer(SITE_CLIENT).start()
    try:
        time.sleep(2)
        with _remote(endpoints, old) as r:
            before = semisync_status(r)
        # Semi-sync stayed on up to the fault: nothing was committed unacknowledged.
        assert before["Rpl_semi_sync_master_status"] == "ON"
        assert before["Rpl_semi_sync_master_no_tx"] == at_start["Rpl_semi_sync_master_no_tx"]
        fault = time.monotonic()
        if fault_cmd is not None:
            with _remote(endpoints, old) as r:
                r.run(fault_cmd)
        else:
            power.run("stop", old)
        _wait_writes_back(writer, fault)
        time.sleep(2)
    finally:
        writer.stop()
    writer.fault = fault  # type: ignore[attr-defined]
    return writer


def _dbwatch_log(endpoints: dict[str, Endpoint]) -> list[dict[str, object]]:
    with _remote(endpoints, TOPOLOGY.with_role("monitor")[0].name) as r:
        out = r.run("journalctl -u dbwatch -o cat --no-pager | grep '^{'").stdout
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.disruptive
@pytest.mark.usefixtures("healthy_cluster", "auto_failover")
# SIGKILL, pause and partition of the primary with dbwatch: test_drills.py, under Locust.
@pytest.mark.parametrize("fault", ["stop-machine"])
def test_automatic_failover_keeps_the_service_answering_and_loses_nothing(
    endpoints: dict[str, Endpoint], power: Power, fault: str
) -> None:
    old = dbcluster.discover_primary(TOPOLOGY, dbcluster.states(TOPOLOGY, endpoints))
    if fault == "stop-machine" and not power.available(old):
        pytest.skip(f"the inventory gives no power commands for {old} (docs/inventory.md)")
    fault_cmd = "pkill -9 -x mariadbd" if fault == "kill-mariadbd" else None
    writer = _drill(endpoints, fault_cmd, old, power)
    outage = writer.outage_after(writer.fault)  # type: ignore[attr-defined]
    events = [e for e in _dbwatch_log(endpoints) if e["event"] == "failover"]
    print(
        f"\nautomatic failover ({fault} on {old}): write outage {outage:.2f} s as the "
        f"client saw it, {len(writer.acked)} writes acknowledged; dbwatch: {events[-1:]}"
    )
    assert outage < 30, "the service did not come back"
    new = dbcluster.discover_primary(TOPOLOGY, dbcluster.states(TOPOLOGY, endpoints))
    assert new != old
    with _remote(endpoints, new) as r:
        assert not_present_once(r, writer.acked) == []
    assert events and events[-1]["new"] == new
    if fault == "stop-machine":
        power.run("start", old)
    with _remote(endpoints, old) as r:
        assert _read_only_when_back(r, old)
    fab("db.rejoin", "--host", old, "--discard")
    assert dbcluster.states(TOPOLOGY, endpoints)[old].role == "replica"


def _fence_every_node(endpoints: dict[str, Endpoint], ahead: str) -> None:
    """What a starved host once left behind (docs/database.md, "A starved host can leave
    every node fenced"): every node read-only and following no one, each agent fenced by
    the controller in its current epoch. Node `ahead` took one write of its own while it
    stood alone (as a node dbwatch promoted then fenced may have): it holds everything,
    the others lack that write. dbwatch is stopped meanwhile and started after."""
    monitor = TOPOLOGY.with_role("monitor")[0]
    nodes = [h.name for h in TOPOLOGY.in_tier("db")]
    with _remote(endpoints, monitor.name) as m:
        m.run("systemctl stop dbwatch")
        try:
            epoch = json.loads(m.run(f"cat {layout.DBWATCH_STATE}").stdout)["epoch"]
            states = dbcluster.states(TOPOLOGY, endpoints)
            primary = dbcluster.discover_primary(TOPOLOGY, states)
            with _remote(endpoints, primary) as p:
                pos = dbcluster.mysql(p, "SELECT @@gtid_binlog_pos;")[0][0]
            for name in nodes:  # the promotions dbwatch tried: nobody follows anybody
                with _remote(endpoints, name) as r:
                    if name != primary:
                        dbcluster.wait_applied(r, pos)
                    dbcluster.mysql(r, "SET GLOBAL read_only = ON; STOP SLAVE; RESET SLAVE ALL;")
                    if name == ahead:
                        dbcluster.mysql(
                            r,
                            "SET GLOBAL rpl_semi_sync_master_enabled = OFF; "
                            "SET GLOBAL read_only = OFF; "
                            f"INSERT INTO {layout.DATABASE}.notes (text, server) "
                            f"VALUES ('written on {name} alone', '{name}'); "
                            "SET GLOBAL read_only = ON;",
                        )
            fence = json.dumps({"token": secrets.password(layout.DBWATCH_TOKEN), "epoch": epoch})
            for name in nodes:
                address = TOPOLOGY.address_for(monitor, TOPOLOGY.hosts[name])
                res = m.run(
                    "curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST "
                    "-H 'Content-Type: application/json' --data-binary @- "
                    f"http://{address}:{TOPOLOGY.port('dbcheck')}/fence",
                    stdin=fence,
                    check=False,
                )
                assert res.stdout == "200", f"fencing {name}'s agent: HTTP {res.stdout}"
        finally:
            m.run("systemctl start dbwatch")


def _write_answered(text: str, limit: float = 5) -> int:
    """The status of a POST of `text`, retried for `limit` s while it is not 201 (an app
    host's writer endpoint checks its nodes every 500 ms)."""
    deadline = time.monotonic() + limit
    while True:
        status = SITE_CLIENT.request("POST", "/api/notes", json.dumps({"text": text}), JSON).status
        if status == 201 or time.monotonic() > deadline:
            return status
        time.sleep(0.25)


@pytest.mark.disruptive
@pytest.mark.usefixtures("healthy_cluster", "auto_failover")
def test_a_cluster_with_every_node_fenced_is_brought_back_by_hand_losing_nothing(
    endpoints: dict[str, Endpoint],
) -> None:
    """Every node fenced: dbwatch cannot promote any (none is a replica), and each agent
    sets read_only back on a node made writable by hand. `fab db.failover` names the node
    that holds everything (not the topology's home primary: another node is ahead) and
    refuses without --force; with it, that node takes writes again, every note acknowledged
    before is there, and the others rejoin without discarding anything."""
    home = TOPOLOGY.with_role("db-primary")[0].name
    ahead = next(h.name for h in TOPOLOGY.in_tier("db") if h.name != home)
    writer = Writer(SITE_CLIENT).start()
    try:
        time.sleep(2)
    finally:
        writer.stop()
    assert writer.acked, "no write was acknowledged before the fault"
    _fence_every_node(endpoints, ahead)
    time.sleep(2 * dbcluster.LEASE_SECONDS)  # dbwatch has had time to act: it cannot
    states = dbcluster.states(TOPOLOGY, endpoints)
    assert {n: s.role for n, s in states.items()} == dict.fromkeys(states, "fenced")
    refused = SITE_CLIENT.request("POST", "/api/notes", json.dumps({"text": "fenced"}), JSON)
    assert refused.status >= 500, "a write was taken with every node fenced"

    asked = fab_run("db.failover")
    assert asked.returncode != 0
    assert f"{ahead} holds every transaction" in asked.stdout + asked.stderr
    out = fab("db.failover", "--force")
    print(f"\nevery node fenced; fab db.failover --force:\n{out}")
    assert f"Failover: {ahead} is the primary" in out, out
    assert _write_answered("back") == 201
    with _remote(endpoints, ahead) as r:
        assert not_present_once(r, writer.acked) == []
        own = dbcluster.mysql(
            r,
            f"SELECT COUNT(*) FROM {layout.DATABASE}.notes "
            f"WHERE server = '{ahead}' AND text = 'written on {ahead} alone';",
        )
        assert own == [["1"]]
    for name in states:
        if name != ahead:
            fab("db.rejoin", "--host", name)  # no --discard: it holds nothing `ahead` lacks
    after = dbcluster.states(TOPOLOGY, endpoints)
    assert {n: s.role for n, s in after.items()} == {
        n: "primary" if n == ahead else "replica" for n in after
    }


@pytest.mark.disruptive
@pytest.mark.usefixtures("healthy_cluster")
def test_a_planned_switchover_under_writes_loses_nothing_and_restores_the_topology(
    endpoints: dict[str, Endpoint],
) -> None:
    home = TOPOLOGY.with_role("db-primary")[0].name
    current = dbcluster.discover_primary(TOPOLOGY, dbcluster.states(TOPOLOGY, endpoints))
    target = home
    if current == home:
        target = [h.name for h in TOPOLOGY.in_tier("db") if h.name != current][0]
    writer = Writer(SITE_CLIENT).start()
    try:
        time.sleep(2)
        fault = time.monotonic()
        out = fab("db.switchover", "--target", target)
        time.sleep(3)
    finally:
        writer.stop()
    print(
        f"\nswitchover {current} -> {target}: write outage "
        f"{writer.outage_after(fault):.2f} s\n{out}"
    )
    assert "Write pause" in out
    assert dbcluster.discover_primary(TOPOLOGY, dbcluster.states(TOPOLOGY, endpoints)) == target
    primary_r, replica_r = _remote(endpoints, target), _remote(endpoints, current)
    assert not_present_once(primary_r, writer.acked) == []
    # The demoted node follows: once it has applied all the primary has, it has them too.
    dbcluster.wait_applied(replica_r, dbcluster.mysql(primary_r, "SELECT @@gtid_binlog_pos;")[0][0])
    assert not_present_once(replica_r, writer.acked) == []
    if target != home:  # leave the cluster as the topology starts it
        fab("db.switchover", "--target", home)
