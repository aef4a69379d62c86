"""The database cluster at run time: who is primary, and the operations that move it.

The topology says which host *starts* as primary; after a failover the truth is on the
machines. Every db host boots read-only (fencing: a returning old primary never takes
writes); the primary is the node made writable by the deploy or by a failover task.
Discovery: the writable node that replicates from no one; else the single node that
replicates from no one; else the topology's db-primary.

All SQL runs as root over the unix socket through SSH; passwords travel on stdin.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from provision import layout, secrets
from provision.engine import File, Remote, Step, StepError
from provision.inventory import Endpoint
from provision.topology import Host, Topology

DATABASE = layout.DATABASE
REPL_USER = layout.REPL_USER
LEASE_SECONDS = 3.0
"""How long a primary keeps taking writes once neither the controller nor a replica
reaches it. The controller waits longer than this before it promotes anyone."""
CATCH_UP_SECONDS = 30.0
ENDPOINT_CHECK_MS = 500
"""How often each app host's database endpoints (HAProxy, `fall 1`) ask every node's agent
whether it may take writes (GET /) or serve reads (GET /read)."""
ENDPOINT_DRAIN_SECONDS = 1.0
"""How long after a node's agent stops answering 200 the endpoints may still send it
queries: one check interval, and the check's own time. The controller waits this long after
a fence before it promotes; the agent waits this long before it ends the app's sessions,
since ending one that waits for the semi-sync acknowledgement commits it on this node
alone, and no reader may see that (docs/database.md, "Fencing")."""


def slave_status(remote: Remote) -> dict[str, str]:
    """SHOW SLAVE STATUS as a mapping; empty when the node replicates from no one."""
    out = remote.run(SLAVE_STATUS, check=False).stdout
    return {
        k.strip(): v.strip()
        for k, _, v in (line.partition(":") for line in out.splitlines())
        if v.strip()
    }


STATE_TIMEOUT = 10.0
"""Seconds a read of a node's state may take. A hung MariaDB (every query waits, its own
shutdown too: docs/database.md) must not hang `fab db.status`, a deploy or a rejoin."""
TIMED_OUT = 124
"""timeout(1)'s exit code."""
SLAVE_STATUS = f"timeout {STATE_TIMEOUT:g} mariadb -e 'SHOW SLAVE STATUS\\G'"
"""SHOW SLAVE STATUS, given up after STATE_TIMEOUT (a hung server answers nothing: empty)."""


def mysql(
    remote: Remote, sql: str, check: bool = True, timeout: float | None = None
) -> list[list[str]]:
    """Run SQL as root on the machine; rows of tab-separated columns. With `timeout`, a
    server that does not answer within it is an error (check) or no rows."""
    if timeout is None:
        res = remote.run("mariadb -N -B", stdin=sql, check=check)
    else:
        res = remote.run(f"timeout {timeout:g} mariadb -N -B", stdin=sql, check=False)
        if check and res.rc == TIMED_OUT:
            raise StepError(
                f"MariaDB did not answer within {timeout:g} s: it may be hung (every query "
                "waits, `systemctl stop mariadb` too); `systemctl kill -s KILL mariadb`, "
                "then start it"
            )
        if check and not res.ok:
            err = (res.stderr.strip() or res.stdout.strip()).splitlines()[-3:]
            raise StepError(f"`mariadb -N -B` exited {res.rc}: {' | '.join(err)}")
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
    gtid_binlog_state: str = ""
    fresh: bool = False
    """MariaDB is not installed yet: a new machine, with nothing to lose."""
    last_error: str = ""
    ssl: str = ""
    """Master_SSL_Allowed: "Yes" when this replica's connection to its primary is TLS."""
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
            "SELECT @@read_only, @@gtid_binlog_pos, @@gtid_slave_pos, @@gtid_current_pos, "
            "@@gtid_binlog_state;",
            timeout=STATE_TIMEOUT,
        )
    except StepError as exc:
        fresh = not remote.run("test -d /var/lib/mysql/mysql", check=False).ok
        return NodeState(host.name, False, f"MariaDB not answering: {exc}", fresh=fresh)
    ro, binlog, slave, current, bstate = (vars_[0] + [""] * 5)[:5]
    state = NodeState(
        host.name, True, read_only=ro == "1", gtid_binlog_pos=binlog,
        gtid_slave_pos=slave, gtid_current_pos=current, gtid_binlog_state=bstate,
    )  # fmt: skip
    fields = slave_status(remote)
    state.replicating_from = fields.get("Master_Host", "")
    state.io_running = fields.get("Slave_IO_Running", "")
    state.sql_running = fields.get("Slave_SQL_Running", "")
    state.lag = fields.get("Seconds_Behind_Master", "")
    state.using_gtid = fields.get("Using_Gtid", "")
    state.last_error = fields.get("Last_IO_Error", "") or fields.get("Last_SQL_Error", "")
    state.ssl = fields.get("Master_SSL_Allowed", "")
    rows = mysql(
        remote, "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync%';", check=False, timeout=STATE_TIMEOUT
    )
    state.status = {r[0]: r[1] for r in rows if len(r) == 2}
    return state


def db_hosts(topology: Topology) -> list[Host]:
    return topology.in_tier("db")


def node_address(topology: Topology, host: Host) -> str:
    """Where a db host listens: its address on the network the app hosts reach it by."""
    apps = topology.with_role("app")
    return str(topology.address_for(apps[0], host)) if apps else str(host.primary_address)


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


def _gtids(text: str) -> list[tuple[int, int, int]]:
    out = []
    for g in text.split(","):
        parts = g.strip().split("-")
        if len(parts) == 3 and all(x.isdigit() for x in parts):
            out.append((int(parts[0]), int(parts[1]), int(parts[2])))
    return out


def missing_from(node: NodeState, other: NodeState) -> list[str]:
    """GTIDs `node` has that `other` lacks, as ranges ("0-1-51..52"); [] when none.

    With gtid_strict_mode every domain's history is one sequence, so `node` holds nothing
    `other` lacks when its last transaction of each domain is one `other` has seen: the
    last sequence number `other` knows for that (domain, server) (its binlog state, or the
    position it was seeded at) is at least as high.
    """
    known: dict[tuple[int, int], int] = {}
    for d, srv, n in _gtids(other.gtid_binlog_state) + _gtids(other.gtid_slave_pos):
        known[(d, srv)] = max(known.get((d, srv), 0), n)
    missing = []
    for d, srv, n in _gtids(node.gtid_current_pos):
        have = known.get((d, srv), 0)
        if n > have:
            missing.append(f"{d}-{srv}-{have + 1}" + (f"..{n}" if n > have + 1 else ""))
    return missing


def choose_primary(topology: Topology, states: Mapping[str, NodeState]) -> str:
    """The node a deploy treats as primary; it is made writable only if none is.

    Never a node that could lack acknowledged writes: with no writable node, every db node
    must be readable (or brand new), and the chosen one must hold every transaction any
    other holds. Otherwise a StepError says which hosts and what to run.
    """
    db_hosts = [h.name for h in topology.in_tier("db")]
    found = [states[n] for n in db_hosts if n in states]
    writable = [s.name for s in found if s.reachable and not s.read_only and not s.replicating_from]
    if len(writable) > 1:
        raise StepError(
            f"split brain: {', '.join(writable)} all accept writes. Nothing was changed. "
            "Fence all but the real primary (`fab db.status` shows their GTIDs) and rebuild "
            "the others with `fab db.rejoin --host NAME` (it lists what it would discard)."
        )
    if writable:
        return writable[0]
    down = [s for s in found if not s.reachable and not s.fresh]
    if down:
        names = ", ".join(s.name for s in down)
        raise StepError(
            f"no database node accepts writes, and {names} cannot be read "
            f"({'; '.join(s.error[:120] for s in down)}). Making another node writable could "
            f"lose writes that only {names} acknowledged, so the deploy stops here, "
            f"changing nothing. Bring {names} back (`vagrant up {down[0].name}`, or "
            f"`vagrant ssh {down[0].name} -c 'sudo systemctl start mariadb'`) and run "
            "`fab deploy` again; if it is gone for good, promote explicitly with "
            "`fab db.failover --force`."
        )
    up = [s for s in found if s.reachable]
    if not up:
        return topology.with_role("db-primary")[0].name
    home = topology.with_role("db-primary")[0].name
    best = max(up, key=lambda s: (s.seq, not s.replicating_from, s.name == home))
    lacking = {s.name: m for s in up if s is not best and (m := missing_from(s, best))}
    if lacking:
        detail = "; ".join(f"{n} has {', '.join(m)}" for n, m in lacking.items())
        raise StepError(
            f"no database node accepts writes, and none holds every transaction: {detail}, "
            f"which {best.name} lacks. The deploy stops here, changing nothing. Decide which "
            f"history to keep: `fab db.rejoin --host NAME --discard` rebuilds a node from the "
            "primary and lists what it throws away."
        )
    return best.name


def repl_password() -> str:
    return secrets.password("db-repl")


def uses_tls(topology: Topology) -> bool:
    """Option `db_tls`: the app's and the replicas' connections are TLS, verified."""
    return bool(topology.option("db_tls", False))


def client_ca_steps(topology: Topology, service: str) -> list[Step]:
    """On a host whose `service` connects to MariaDB over TCP: the testbed CA it verifies
    the server with, when `db_tls` is on (nothing otherwise)."""
    if not uses_tls(topology):
        return []
    return [
        File(
            layout.DB_CLIENT_CA,
            secrets.ca().cert_pem,
            notify=[f"restart {service}"],
            name=f"Ensure the testbed CA is installed ({service} verifies MariaDB's TLS).",
        )
    ]


def master_tls(tls: bool) -> str:
    """The TLS part of CHANGE MASTER: verified against the testbed CA and the primary's
    address (its certificate names every address it has), or explicitly off."""
    if not tls:
        return "MASTER_SSL = 0"
    return (
        f"MASTER_SSL = 1, MASTER_SSL_CA = '{layout.DB_TLS_DIR}/ca.crt', "
        "MASTER_SSL_VERIFY_SERVER_CERT = 1"
    )


def _dump(primary: Remote) -> tuple[str, str]:
    """A consistent dump of the app's database and the GTID position it stops at."""
    dump = primary.output_bytes(
        f"mariadb-dump --single-transaction --gtid --master-data=2 --databases {DATABASE}"
    ).decode("utf-8")
    match = re.search(r"gtid_slave_pos='([^']*)'", dump)
    if not match:
        raise StepError("the primary's dump carries no GTID position (is log_bin on?)")
    return dump, match.group(1)


def seed_replica(
    replica: Remote, primary_address: str, dump: str, gtid: str, *, port: int, tls: bool = False
) -> None:
    """Make `replica` an exact copy of the dump, then replicate from that GTID on.

    Whatever the replica had is discarded, its own binary log included: a returning old
    primary's unacknowledged transactions are thrown away, never merged.
    """
    mysql(
        replica,
        "STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = ON; "
        "SET GLOBAL rpl_semi_sync_master_enabled = OFF;",
        check=False,
    )
    replica.run("mariadb", stdin="SET SESSION sql_log_bin = 0;\n" + dump)
    mysql(
        replica,
        "RESET MASTER;\n"
        f"SET GLOBAL gtid_slave_pos = '{gtid}';\n"
        f"CHANGE MASTER TO MASTER_HOST = '{primary_address}', MASTER_PORT = {port}, "
        f"MASTER_USER = '{REPL_USER}', MASTER_PASSWORD = '{repl_password()}', "
        f"MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1, {master_tls(tls)};\n"
        "START SLAVE;\n",
    )


def wait_replicating(replica: Remote, seconds: float = CATCH_UP_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        res = replica.run(SLAVE_STATUS, check=False).stdout
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


END_STALE_DUMP_THREADS = (
    "mariadb -N -B -e \"SELECT CONCAT('KILL CONNECTION ', ID, ';') "
    "FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'\" | mariadb"
)


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
    # A replica runs with the primary side of semi-sync off (server.cnf.j2): on for a
    # switchover, whose old primary follows at once; paused otherwise.
    pause = (
        "SET GLOBAL rpl_semi_sync_master_enabled = ON;"
        if replica_follows
        else "SET GLOBAL rpl_semi_sync_master_enabled = OFF;"
    )
    # Binlog dump threads this node kept from an earlier time as primary end before it
    # takes writes: MariaDB ending one itself when its replica reconnects, with semi-sync
    # commits in flight, has wedged the server (docs/database.md).
    node.run(END_STALE_DUMP_THREADS, check=False)
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


def demote_to_replica(node: Remote, primary_address: str, *, port: int, tls: bool = False) -> None:
    """A caught-up old primary (planned switchover) follows the new one."""
    mysql(
        node,
        "SET GLOBAL read_only = ON; SET GLOBAL rpl_semi_sync_master_enabled = OFF;\n"
        f"CHANGE MASTER TO MASTER_HOST = '{primary_address}', MASTER_PORT = {port}, "
        f"MASTER_USER = '{REPL_USER}', MASTER_PASSWORD = '{repl_password()}', "
        "MASTER_USE_GTID = slave_pos, MASTER_DEMOTE_TO_SLAVE = 1, MASTER_CONNECT_RETRY = 1, "
        f"{master_tls(tls)};\n"
        "START SLAVE;\n",
    )


def most_advanced(states: Sequence[NodeState]) -> NodeState:
    return max(states, key=lambda s: s.seq)


def states(topo: Topology, eps: Mapping[str, Endpoint]) -> dict[str, NodeState]:
    """Each db host's replication state, read in parallel (DOWN where unreachable)."""

    def one(host: Host) -> NodeState:
        with contextlib.ExitStack() as stack:
            try:
                remote = stack.enter_context(Remote(host, eps[host.name]))
            except Exception as exc:
                return NodeState(host.name, False, f"SSH: {type(exc).__name__}: {exc}")
            return read_state(host, remote)

    hosts = topo.in_tier("db")
    with ThreadPoolExecutor(max_workers=max(len(hosts), 1)) as pool:
        return {s.name: s for s in pool.map(one, hosts)}
