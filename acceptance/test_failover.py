"""Failover drills under a writer loop: no acknowledged write is lost, the service comes
back, and the old primary returns fenced and rejoins as a replica.

Disruptive: kills the database primary, so it runs after every other test. Ends with a
planned switchover back, so the cluster is as the topology starts it.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest

from acceptance.conftest import TOPOLOGY, fab
from acceptance.drill import JSON, Writer
from acceptance.site import request
from provision import PROJECT_ROOT, dbcluster, engine
from provision.inventory import Endpoint
from provision.tasks import db_states


class _Conn(engine.Remote):
    def __enter__(self) -> engine.Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _remote(endpoints: dict[str, Endpoint], name: str) -> _Conn:
    r = _Conn(TOPOLOGY.hosts[name], endpoints[name])
    r.connect()
    return r


def _semisync(r: engine.Remote) -> dict[str, str]:
    rows = dbcluster.mysql(r, "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_%';")
    return {row[0]: row[1] for row in rows if len(row) == 2}


def _read_only_when_back(r: engine.Remote, name: str, limit: float = 60) -> bool:
    """Wait for a node's MariaDB to answer again (it restarts by itself); is it fenced?"""
    deadline = time.monotonic() + limit
    while not (rows := dbcluster.mysql(r, "SELECT @@read_only;", check=False)):
        assert time.monotonic() < deadline, f"{name}'s MariaDB did not come back"
        time.sleep(0.5)
    return rows == [["1"]]


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
            fab("db.rejoin", "--host", name, "--discard")


@pytest.mark.disruptive
@pytest.mark.usefixtures("healthy_cluster")
def test_killing_the_primary_loses_no_acknowledged_write(endpoints: dict[str, Endpoint]) -> None:
    states = db_states(TOPOLOGY, endpoints)
    old = dbcluster.discover_primary(TOPOLOGY, states)
    old_r = _remote(endpoints, old)
    at_start = _semisync_on(old_r)
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
    assert _read_only_when_back(old_r, old)
    # An old primary killed mid-commit may hold a transaction no client saw acknowledged;
    # the operator discards it explicitly (rejoin lists it first).
    fab("db.rejoin", "--host", old, "--discard")
    rejoined = db_states(TOPOLOGY, endpoints)[old]
    assert (rejoined.role, rejoined.io_running, rejoined.sql_running) == ("replica", "Yes", "Yes")
    dbcluster.wait_applied(old_r, dbcluster.mysql(new_r, "SELECT @@gtid_binlog_pos;")[0][0])
    assert _present_once(old_r, writer.acked) == []


@pytest.fixture
def auto_failover(endpoints: dict[str, Endpoint]) -> Iterator[None]:
    """dbwatch on (as in `hardened`) for the test, off again after it."""
    fab("deploy", "--option", "auto_failover=true")
    try:
        yield
    finally:
        fab("deploy", "--option", "auto_failover=false")  # options persist: set it back


def _wait_writes_back(writer: Writer, fault: float, limit: float = 60) -> None:
    """Until an acknowledged write follows a failed one after `fault` (or `limit` s)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        failed = [t for t, ok in writer.answers if not ok and t > fault]
        if failed and any(ok and t > failed[0] for t, ok in writer.answers):
            return
        time.sleep(0.2)


def _semisync_on(r: engine.Remote) -> dict[str, str]:
    """Wait until the primary's semi-sync is on (a write may be needed to turn it back on
    after a quiet spell); its status counters then."""
    deadline = time.monotonic() + 15
    while _semisync(r)["Rpl_semi_sync_master_status"] != "ON":
        assert time.monotonic() < deadline, "semi-sync did not come on before the drill"
        request("POST", "/api/notes", '{"text": "semi-sync warm-up"}', JSON)
        time.sleep(0.2)
    return _semisync(r)


def _drill(endpoints: dict[str, Endpoint], fault_cmd: list[str] | str, old: str) -> Writer:
    with _remote(endpoints, old) as r:
        at_start = _semisync_on(r)
    writer = Writer().start()
    try:
        time.sleep(2)
        with _remote(endpoints, old) as r:
            before = _semisync(r)
        # Semi-sync stayed on up to the fault: nothing was committed unacknowledged.
        assert before["Rpl_semi_sync_master_status"] == "ON"
        assert before["Rpl_semi_sync_master_no_tx"] == at_start["Rpl_semi_sync_master_no_tx"]
        fault = time.monotonic()
        if isinstance(fault_cmd, str):
            with _remote(endpoints, old) as r:
                r.run(fault_cmd)
        else:
            subprocess.run(fault_cmd, cwd=PROJECT_ROOT, capture_output=True, check=True)
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
    endpoints: dict[str, Endpoint], fault: str
) -> None:
    old = dbcluster.discover_primary(TOPOLOGY, db_states(TOPOLOGY, endpoints))
    fault_cmd: list[str] | str = (
        "pkill -9 -x mariadbd" if fault == "kill-mariadbd" else ["vagrant", "halt", old]
    )
    writer = _drill(endpoints, fault_cmd, old)
    outage = writer.outage_after(writer.fault)  # type: ignore[attr-defined]
    events = [e for e in _dbwatch_log(endpoints) if e["event"] == "failover"]
    print(
        f"\nautomatic failover ({fault} on {old}): write outage {outage:.2f} s as the "
        f"client saw it, {len(writer.acked)} writes acknowledged; dbwatch: {events[-1:]}"
    )
    assert outage < 30, "the service did not come back"
    new = dbcluster.discover_primary(TOPOLOGY, db_states(TOPOLOGY, endpoints))
    assert new != old
    with _remote(endpoints, new) as r:
        assert _present_once(r, writer.acked) == []
    assert events and events[-1]["new"] == new
    if fault == "stop-machine":
        subprocess.run(["vagrant", "up", old], cwd=PROJECT_ROOT, capture_output=True, check=True)
    with _remote(endpoints, old) as r:
        assert _read_only_when_back(r, old)
    fab("db.rejoin", "--host", old, "--discard")
    assert db_states(TOPOLOGY, endpoints)[old].role == "replica"


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
