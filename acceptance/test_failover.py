"""Failover drills under a writer loop: no acknowledged write is lost, the service comes
back, and the old primary returns fenced and rejoins as a replica.

Disruptive: kills the database primary, so it runs after every other test. Ends with a
planned switchover back, so the cluster is as the topology starts it.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from acceptance.conftest import TOPOLOGY
from acceptance.drill import JSON, Writer
from acceptance.site import request
from provision import PROJECT_ROOT, dbcluster, engine
from provision.inventory import Endpoint
from provision.tasks import db_states


def fab(*args: str) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "fabric", *args],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    return res.stdout


def _remote(endpoints: dict[str, Endpoint], name: str) -> engine.Remote:
    r = engine.Remote(TOPOLOGY.hosts[name], endpoints[name])
    r.connect()
    return r


def _semisync(r: engine.Remote) -> dict[str, str]:
    rows = dbcluster.mysql(r, "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_%';")
    return {row[0]: row[1] for row in rows if len(row) == 2}


def _present_once(r: engine.Remote, acked: dict[str, int]) -> list[str]:
    """Texts of acknowledged notes that are missing or duplicated on node `r`."""
    prefix = next(iter(acked)).rsplit("-", 1)[0]
    rows = dbcluster.mysql(
        r,
        f"SELECT text, COUNT(*) FROM testbed.notes WHERE text LIKE '{prefix}-%' GROUP BY text;",
    )
    counts = {text: int(n) for text, n in rows}
    return [t for t in acked if counts.get(t) != 1]


@pytest.fixture
def healthy_cluster(endpoints: dict[str, Endpoint]) -> None:
    """Every node but the primary replicates (an earlier interrupted drill may have left one
    fenced): rejoin any that does not."""
    states = db_states(TOPOLOGY, endpoints)
    primary = dbcluster.discover_primary(TOPOLOGY, states)
    for name, state in states.items():
        if name != primary and state.role != "replica":
            fab("db.rejoin", "--host", name)


@pytest.mark.disruptive
@pytest.mark.usefixtures("healthy_cluster")
def test_killing_the_primary_loses_no_acknowledged_write(endpoints: dict[str, Endpoint]) -> None:
    states = db_states(TOPOLOGY, endpoints)
    old = dbcluster.discover_primary(TOPOLOGY, states)
    old_r = _remote(endpoints, old)
    # Semi-sync is ON before the drill: after a quiet spell it may have fallen back to
    # asynchronous; one acknowledged write turns it back on.
    deadline = time.monotonic() + 15
    while _semisync(old_r)["Rpl_semi_sync_master_status"] != "ON":
        assert time.monotonic() < deadline, "semi-sync did not come on before the drill"
        request("POST", "/api/notes", '{"text": "semi-sync warm-up"}', JSON)
        time.sleep(0.2)
    at_start = _semisync(old_r)
    writer = Writer().start()
    try:
        time.sleep(3)
        before = _semisync(old_r)
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
    new = dbcluster.discover_primary(TOPOLOGY, db_states(TOPOLOGY, endpoints))
    assert new != old
    new_r = _remote(endpoints, new)
    assert _present_once(new_r, writer.acked) == []
    # Semi-sync stayed on up to the fault: no write under load was committed without the
    # replica's acknowledgement.
    assert before["Rpl_semi_sync_master_no_tx"] == at_start["Rpl_semi_sync_master_no_tx"]
    assert int(before["Rpl_semi_sync_master_yes_tx"]) > int(at_start["Rpl_semi_sync_master_yes_tx"])
    # The old primary came back on its own, fenced: it refuses writes.
    old_r.close()
    old_r = _remote(endpoints, old)
    deadline = time.monotonic() + 30
    while True:
        rows = dbcluster.mysql(old_r, "SELECT @@read_only;", check=False)
        if rows:
            break
        assert time.monotonic() < deadline, f"{old}'s MariaDB did not come back"
        time.sleep(0.5)
    assert rows == [["1"]]
    fab("db.rejoin", "--host", old)
    rejoined = db_states(TOPOLOGY, endpoints)[old]
    assert (rejoined.role, rejoined.io_running, rejoined.sql_running) == ("replica", "Yes", "Yes")
    dbcluster.wait_applied(old_r, dbcluster.mysql(new_r, "SELECT @@gtid_binlog_pos;")[0][0])
    assert _present_once(old_r, writer.acked) == []


@pytest.mark.disruptive
@pytest.mark.usefixtures("healthy_cluster")
def test_a_planned_switchover_under_writes_loses_nothing_and_restores_the_topology(
    endpoints: dict[str, Endpoint],
) -> None:
    home = TOPOLOGY.with_role("db-primary")[0].name
    current = dbcluster.discover_primary(TOPOLOGY, db_states(TOPOLOGY, endpoints))
    target = home
    if current == home:
        target = [h.name for h in TOPOLOGY.in_tier("db") if h.name != current][0]
    writer = Writer().start()
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
    assert dbcluster.discover_primary(TOPOLOGY, db_states(TOPOLOGY, endpoints)) == target
    primary_r, replica_r = _remote(endpoints, target), _remote(endpoints, current)
    assert _present_once(primary_r, writer.acked) == []
    # The demoted node follows: once it has applied all the primary has, it has them too.
    dbcluster.wait_applied(replica_r, dbcluster.mysql(primary_r, "SELECT @@gtid_binlog_pos;")[0][0])
    assert _present_once(replica_r, writer.acked) == []
    if target != home:  # leave the cluster as the topology starts it
        fab("db.switchover", "--target", home)
