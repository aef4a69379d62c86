"""The database cluster at run time: who is primary, and the operations that move it.

The topology says which host *starts* as primary; after a failover the truth is on the
machines. Every db host boots read-only (fencing: a returning old primary never takes
writes); the primary is the node made writable by the deploy or by a failover task.
Discovery: the writable node that replicates from no one; else the single node that
replicates from no one; else the topology's db-primary.

All SQL runs as root over the unix socket through SSH; passwords travel on stdin.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from provision import secrets
from provision.engine import Remote, StepError
from provision.topology import Host, Topology

DATABASE = "testbed"
REPL_USER = "repl"
CATCH_UP_SECONDS = 30.0


def slave_status(remote: Remote) -> dict[str, str]:
    """SHOW SLAVE STATUS as a mapping; empty when the node replicates from no one."""
    out = remote.run("mariadb -e 'SHOW SLAVE STATUS\\G'", check=False).stdout
    return {
        k.strip(): v.strip()
        for k, _, v in (line.partition(":") for line in out.splitlines())
        if v.strip()
    }


def mysql(remote: Remote, sql: str, check: bool = True) -> list[list[str]]:
    """Run SQL as root on the machine; rows of tab-separated columns."""
    res = remote.run("mariadb -N -B", stdin=sql, check=check)
    return [line.split("\t") for line in res.stdout.splitlines() if line]


@dataclass
class NodeState:
    name: str
    reachable: bool
    error: str = ""
    read_only: bool = True
    replicating_from: str = ""
    io_running: str = ""
    sql_running: str = ""
    lag: str = ""
    using_gtid: str = ""
    gtid_binlog_pos: str = ""
    gtid_slave_pos: str = ""
    gtid_current_pos: str = ""
    last_error: str = ""
    status: dict[str, str] = field(default_factory=dict)

    @property
    def semisync_master(self) -> str:
        return self.status.get("Rpl_semi_sync_master_status", "?")

    @property
    def semisync_slave(self) -> str:
        return self.status.get("Rpl_semi_sync_slave_status", "?")

    @property
    def role(self) -> str:
        if not self.reachable:
            return "DOWN"
        if self.replicating_from:
            return "replica"
        return "primary" if not self.read_only else "fenced"

    @property
    def seq(self) -> int:
        """Highest GTID sequence number this node has (single replication domain)."""
        seqs = [int(g.split("-")[2]) for g in self.gtid_current_pos.split(",") if g.count("-") == 2]
        return max(seqs, default=0)


def read_state(host: Host, remote: Remote | None) -> NodeState:
    if remote is None:
        return NodeState(host.name, False, "no SSH connection")
    try:
        vars_ = mysql(
            remote,
            "SELECT @@read_only, @@gtid_binlog_pos, @@gtid_slave_pos, @@gtid_current_pos;",
        )
    except StepError as exc:
        return NodeState(host.name, False, f"MariaDB not answering: {exc}")
    ro, binlog, slave, current = (vars_[0] + ["", "", "", ""])[:4]
    state = NodeState(
        host.name, True, read_only=ro == "1", gtid_binlog_pos=binlog,
        gtid_slave_pos=slave, gtid_current_pos=current,
    )  # fmt: skip
    fields = slave_status(remote)
    state.replicating_from = fields.get("Master_Host", "")
    state.io_running = fields.get("Slave_IO_Running", "")
    state.sql_running = fields.get("Slave_SQL_Running", "")
    state.lag = fields.get("Seconds_Behind_Master", "")
    state.using_gtid = fields.get("Using_Gtid", "")
    state.last_error = fields.get("Last_IO_Error", "") or fields.get("Last_SQL_Error", "")
    rows = mysql(remote, "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync%';", check=False)
    state.status = {r[0]: r[1] for r in rows if len(r) == 2}
    return state


def discover_primary(topology: Topology, states: Mapping[str, NodeState]) -> str:
    db_hosts = [h.name for h in topology.in_tier("db")]
    up = [states[n] for n in db_hosts if n in states and states[n].reachable]
    writable = [s.name for s in up if not s.read_only and not s.replicating_from]
    if len(writable) == 1:
        return writable[0]
    if len(writable) > 1:
        raise StepError(f"split brain: {', '.join(writable)} all accept writes; fix by hand")
    unreplicated = [s.name for s in up if not s.replicating_from and s.gtid_binlog_pos]
    if len(unreplicated) == 1:
        return unreplicated[0]
    return topology.with_role("db-primary")[0].name


def repl_password() -> str:
    return secrets.password("db-repl")


def _dump(primary: Remote) -> tuple[str, str]:
    """A consistent dump of the app's database and the GTID position it stops at."""
    dump = primary.output_bytes(
        f"mariadb-dump --single-transaction --gtid --master-data=2 --databases {DATABASE}"
    ).decode("utf-8")
    match = re.search(r"gtid_slave_pos='([^']*)'", dump)
    if not match:
        raise StepError("the primary's dump carries no GTID position (is log_bin on?)")
    return dump, match.group(1)


def seed_replica(replica: Remote, primary_address: str, dump: str, gtid: str) -> None:
    """Make `replica` an exact copy of the dump, then replicate from that GTID on.

    Whatever the replica had is discarded, its own binary log included: a returning old
    primary's unacknowledged transactions are thrown away, never merged.
    """
    mysql(replica, "STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = ON;", check=False)
    replica.run("mariadb", stdin="SET SESSION sql_log_bin = 0;\n" + dump)
    mysql(
        replica,
        "RESET MASTER;\n"
        f"SET GLOBAL gtid_slave_pos = '{gtid}';\n"
        f"CHANGE MASTER TO MASTER_HOST = '{primary_address}', MASTER_PORT = 3306, "
        f"MASTER_USER = '{REPL_USER}', MASTER_PASSWORD = '{repl_password()}', "
        "MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1;\n"
        "START SLAVE;\n",
    )


def wait_replicating(replica: Remote, seconds: float = CATCH_UP_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        res = replica.run("mariadb -e 'SHOW SLAVE STATUS\\G'", check=False).stdout
        if "Slave_IO_Running: Yes" in res and "Slave_SQL_Running: Yes" in res:
            return
        time.sleep(0.5)
    raise StepError(f"replication did not start within {seconds:.0f} s:\n{res[-800:]}")


def wait_applied(replica: Remote, gtid: str, seconds: float = CATCH_UP_SECONDS) -> None:
    """Wait until the replica has applied up to `gtid` (MASTER_GTID_WAIT)."""
    rows = mysql(replica, f"SELECT MASTER_GTID_WAIT('{gtid}', {seconds});")
    if rows[0][0] != "0":
        raise StepError(f"replica did not apply up to {gtid} within {seconds:.0f} s")


@dataclass
class Timeline:
    events: list[tuple[float, str]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def mark(self, event: str, say: Callable[[str], None] = print) -> None:
        now = time.monotonic()
        self.events.append((now, event))
        say(f"  t+{now - self.started:6.2f} s  {event}")

    def between(self, first: str, last: str) -> float:
        times = {e: t for t, e in self.events}
        return times[last] - times[first]


def promote(node: Remote, timeline: Timeline, replica_follows: bool = False) -> None:
    """Apply what the replica already received, stop replicating and accept writes.

    Without a replica to acknowledge, a semi-sync primary would hold its first commit for
    rpl_semi_sync_master_timeout; so unless a replica follows at once (switchover),
    semi-sync waits are paused until one rejoins (resume_semisync)."""
    # Everything the replica received (and acknowledged) must be applied before the relay
    # log is thrown away. "Read all relay log" is not enough with parallel replication:
    # the coordinator reads ahead of the workers. Wait for the received GTID instead.
    mysql(node, "STOP SLAVE IO_THREAD;", check=False)
    received = slave_status(node).get("Gtid_IO_Pos", "")
    if received:
        wait_applied(node, received)
    timeline.mark(f"relay log applied on the new primary (up to {received or 'nothing'})")
    pause = "" if replica_follows else "SET GLOBAL rpl_semi_sync_master_enabled = OFF;"
    mysql(node, f"STOP SLAVE; RESET SLAVE ALL; {pause} SET GLOBAL read_only = OFF;")
    timeline.mark("promotion done: new primary accepts writes")
    if not replica_follows:
        timeline.mark("semi-sync paused on the new primary until a replica rejoins")


def resume_semisync(primary: Remote, replica: Remote) -> None:
    """A replica is back: the primary waits for its acknowledgements again.

    A replica negotiates semi-sync when its IO thread connects, so after turning it back
    on at the primary the replica reconnects; without that it would stay asynchronous.
    """
    mysql(primary, "SET GLOBAL rpl_semi_sync_master_enabled = ON;")
    mysql(replica, "STOP SLAVE IO_THREAD; START SLAVE IO_THREAD;")
    wait_replicating(replica)


def fence(node: Remote) -> None:
    mysql(node, "SET GLOBAL read_only = ON;")


def demote_to_replica(node: Remote, primary_address: str) -> None:
    """A caught-up old primary (planned switchover) follows the new one."""
    mysql(
        node,
        "SET GLOBAL read_only = ON;\n"
        f"CHANGE MASTER TO MASTER_HOST = '{primary_address}', MASTER_PORT = 3306, "
        f"MASTER_USER = '{REPL_USER}', MASTER_PASSWORD = '{repl_password()}', "
        "MASTER_USE_GTID = slave_pos, MASTER_DEMOTE_TO_SLAVE = 1, MASTER_CONNECT_RETRY = 1;\n"
        "START SLAVE;\n",
    )


def most_advanced(states: Sequence[NodeState]) -> NodeState:
    return max(states, key=lambda s: s.seq)
