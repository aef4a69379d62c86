"""The `db` role: MariaDB with GTID and lossless semi-sync replication on every db host.

Tier `db` (all db hosts at once): packages, config, local users with least privilege,
the writability check (dbcheck) and, on the primary, the schema and write access.
Tier `replication` (after it): each replica is seeded from the primary once and then
replicates; a second deploy leaves a running replica alone.

Which host is primary is discovered at deploy time (provision/dbcluster.py): after a
failover it is no longer the topology's db-primary.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from provision import PROJECT_ROOT, dbcluster, secrets
from provision.engine import (
    OK,
    Command,
    File,
    FlushHandlers,
    HostContext,
    Outcome,
    Packages,
    Remote,
    Role,
    Service,
    Step,
    StepError,
    render,
    restart_handler,
    role_script,
    system_user,
)
from provision.layout import APP_USER, DATABASE, DB_TLS_DIR, DBWATCH_TOKEN, FAILOVER_USER
from provision.topology import Host, Topology

CONFIG = "/etc/mysql/mariadb.conf.d/60-webinfra-testbed.cnf"
DBCHECK = "/usr/local/lib/webinfra-testbed/dbcheck.py"
DBCHECK_CONFIG = "/etc/webinfra-testbed/dbcheck.json"
SEMISYNC_TIMEOUT_MS = 10000
SLAVE_NET_TIMEOUT = 2
LOCAL_WATCHER_CONNECTIONS = 8
"""At most this many connections each for the node's agent and its exporter. Once, after a
split of the cluster (hardened's drill), MariaDB stopped answering their status queries
and their abandoned polls held all 151 connections: the app could not even connect. The
cap keeps that from taking the node's service down with it."""


def primary_name(ctx: HostContext) -> str:
    return ctx.facts.get("db_primary") or ctx.topology.with_role("db-primary")[0].name


NOT_FENCED_CHECK = """\
import json, sys, urllib.request
# Re-checked on the machine just before read_only goes off: the primary this deploy chose
# at its start may have been fenced since (automatic failover), or another node promoted.
cfg = json.load(open(sys.argv[1]))
def state(address):
    url = "http://%s:%d/state" % (address, cfg["port"])
    try:
        with urllib.request.urlopen(url, timeout=2) as res:
            return json.load(res)
    except Exception:
        return {}
if state(cfg["address"]).get("fenced"):
    sys.exit("this node was fenced by the failover controller: not making it writable")
for peer in cfg["peers"]:
    st = state(peer["address"])
    if st.get("read_only") is False and not st.get("replicating_from"):
        sys.exit("%s accepts writes already: not making a second writable node" % peer["name"])
"""


def agent_config(topology: Topology, host: Host) -> dict[str, object]:
    """dbcheck's settings (files/dbcheck.py explains the lease and the fence)."""
    return {
        "_managed_by": "webinfra-testbed, from provision/roles/db (local edits are lost)",
        "name": host.name,
        "listen": dbcluster.node_address(topology, host),
        "address": dbcluster.node_address(topology, host),
        "port": topology.port("dbcheck"),
        "lease_required": bool(topology.option("auto_failover", False)),
        "lease_seconds": dbcluster.LEASE_SECONDS,
        "drain_seconds": dbcluster.ENDPOINT_DRAIN_SECONDS,
        "peers": [
            {"name": p.name, "address": str(topology.address_for(host, p))}
            for p in dbcluster.db_hosts(topology)
            if p.name != host.name
        ],
        "controllers": [str(topology.address_for(host, m)) for m in topology.with_role("monitor")],
        "token": secrets.password(DBWATCH_TOKEN),
    }


def app_clients(topology: Topology, db: Host) -> list[tuple[str, str]]:
    """(app host, the address it connects from): the app user may connect from these only."""
    return [(h.name, str(topology.address_for(db, h))) for h in topology.with_role("app")]


@dataclass(frozen=True)
class DbUser:
    user: str
    host: str
    password: str | None
    """None: authenticated by the unix socket (same name as a system user)."""
    global_privs: tuple[str, ...] = ()
    schema_privs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    why: str = ""
    tls: bool = False
    """REQUIRE SSL: the account cannot log in over a connection that is not TLS."""
    max_connections: int = 0
    """MAX_USER_CONNECTIONS (0: no cap of its own). The node's local watchers are capped, so
    that polls stuck inside a wedged server can never take the connections the app needs."""

    @property
    def require(self) -> str:
        cap = f" WITH MAX_USER_CONNECTIONS {self.max_connections}"
        return ("REQUIRE SSL" if self.tls else "REQUIRE NONE") + cap

    @property
    def account(self) -> str:
        return f"'{self.user}'@'{self.host}'"

    def create_sql(self) -> str:
        auth = f"IDENTIFIED BY '{self.password}'" if self.password else "IDENTIFIED VIA unix_socket"
        lines = [
            "SET SESSION sql_log_bin = 0;",  # users are each node's own, never replicated
            f"CREATE USER IF NOT EXISTS {self.account} {auth} {self.require};",
            f"ALTER USER {self.account} {auth} {self.require};",
            f"REVOKE ALL PRIVILEGES, GRANT OPTION FROM {self.account};",
        ]
        if self.global_privs:
            lines.append(f"GRANT {', '.join(self.global_privs)} ON *.* TO {self.account};")
        for schema, privs in self.schema_privs.items():
            lines.append(f"GRANT {', '.join(privs)} ON `{schema}`.* TO {self.account};")
        return "\n".join(lines) + "\n"

    def check_sql(self) -> str:
        grantee = f'"{self.account}"'
        auth = (
            f"authentication_string = PASSWORD('{self.password}')"
            if self.password
            else "JSON_VALUE(Priv, '$.plugin') = 'unix_socket'"
        )
        return (
            "SELECT CONCAT_WS('|', "
            f"(SELECT {auth} FROM mysql.global_priv g JOIN mysql.user u USING (User, Host) "
            f"WHERE User = '{self.user}' AND Host = '{self.host}'), "
            f"(SELECT CONCAT(IF(ssl_type = '', 'NONE', ssl_type), '/', max_user_connections) "
            "FROM mysql.user "
            f"WHERE User = '{self.user}' AND Host = '{self.host}'), "
            "(SELECT GROUP_CONCAT(PRIVILEGE_TYPE ORDER BY PRIVILEGE_TYPE) "
            f"FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = {grantee}), "
            "IFNULL((SELECT GROUP_CONCAT(CONCAT(TABLE_SCHEMA, ':', PRIVILEGE_TYPE) "
            "ORDER BY TABLE_SCHEMA, PRIVILEGE_TYPE) "
            f"FROM information_schema.SCHEMA_PRIVILEGES WHERE GRANTEE = {grantee}), ''));\n"
        )

    def expected(self) -> str:
        glob = ",".join(sorted(self.global_privs)) or "USAGE"
        schemas = ",".join(
            f"{schema}:{p}" for schema in sorted(self.schema_privs)
            for p in sorted(self.schema_privs[schema])
        )  # fmt: skip
        ssl = "ANY" if self.tls else "NONE"
        return f"1|{ssl}/{self.max_connections}|{glob}|{schemas}"


def users(topology: Topology, host: Host) -> list[DbUser]:
    app_pw = secrets.password("db-app")
    tls = dbcluster.uses_tls(topology)  # every account that logs in over the network
    result = [
        DbUser(APP_USER, source, app_pw, schema_privs={DATABASE: ("INSERT", "SELECT")},
               why=f"the app on {name}", tls=tls)
        for name, source in app_clients(topology, host)
    ]  # fmt: skip
    result += [
        DbUser(dbcluster.REPL_USER, dbcluster.node_address(topology, peer),
               dbcluster.repl_password(), global_privs=("REPLICATION SLAVE",),
               why=f"replication to {peer.name}", tls=tls)
        for peer in dbcluster.db_hosts(topology)
        if peer.name != host.name
    ]  # fmt: skip
    result += [
        DbUser("monitor", "localhost", secrets.password("db-monitor"),
               global_privs=("BINLOG MONITOR", "PROCESS", "SLAVE MONITOR"),
               schema_privs={"performance_schema": ("SELECT",)}, why="the mysqld exporter",
               max_connections=LOCAL_WATCHER_CONNECTIONS),
        DbUser("dbcheck", "localhost", None,
               global_privs=("CONNECTION ADMIN", "PROCESS", "READ_ONLY ADMIN",
                             "REPLICATION MASTER ADMIN", "SLAVE MONITOR"),
               why="the node's agent: writability, lease and fence",
               max_connections=LOCAL_WATCHER_CONNECTIONS),
    ]  # fmt: skip
    if topology.option("auto_failover", False):
        result += [
            DbUser(FAILOVER_USER, str(topology.address_for(host, m)),
                   secrets.password("db-failover"),
                   # CONNECTION ADMIN and PROCESS: see and end a new primary's stale
                   # binlog dump threads (dbwatch's end_stale_dump_threads).
                   global_privs=("BINLOG MONITOR", "CONNECTION ADMIN", "PROCESS",
                                 "READ_ONLY ADMIN", "RELOAD", "REPLICATION MASTER ADMIN",
                                 "REPLICATION SLAVE ADMIN", "SLAVE MONITOR"),
                   schema_privs={DATABASE: ("INSERT",)}, why=f"automatic failover from {m.name}",
                   tls=tls)
            for m in topology.with_role("monitor")
        ]  # fmt: skip
    return result


NETWORK_USERS = (APP_USER, dbcluster.REPL_USER, FAILOVER_USER)
"""The accounts that log in from other hosts: one row per allowed source address."""


def stray_accounts_sql(topology: Topology, host: Host) -> str:
    """A query listing the network users' accounts whose source is no longer a host of the
    topology (a web server scaled in, a replica removed), as `'user'@'host'` lines."""
    wanted = sorted(u.account for u in users(topology, host) if u.user in NETWORK_USERS)
    names = ", ".join(f"'{n}'" for n in NETWORK_USERS)
    keep = ", ".join(f'"{a}"' for a in wanted) or "''"
    return (
        "SELECT CONCAT(QUOTE(User), '@', QUOTE(Host)) FROM mysql.user "
        f"WHERE User IN ({names}) AND CONCAT(QUOTE(User), '@', QUOTE(Host)) NOT IN ({keep}) "
        "ORDER BY User, Host;\n"
    )


def absent_users(topology: Topology, host: Host) -> list[tuple[str, str]]:
    """(user, host) accounts that must not exist: the failover account while automatic
    failover is off."""
    if topology.option("auto_failover", False):
        return []
    return [
        (FAILOVER_USER, str(topology.address_for(host, m))) for m in topology.with_role("monitor")
    ]


def certificate(host: Host) -> secrets.KeyPair:
    """This node's server certificate: its name and every address it has, so a replica
    or the controller that connects by address verifies it (VERIFY_SERVER_CERT)."""
    return secrets.leaf(f"db-{host.name}", [host.name], [str(a) for a in host.addresses.values()])


def tls_steps(host: Host) -> list[Step]:
    pair = certificate(host)
    return [
        File(f"{DB_TLS_DIR}/ca.crt", secrets.ca().cert_pem, notify=["restart mariadb"],
             name="Ensure the testbed CA is installed for MariaDB (replicas verify with it)."),
        File(f"{DB_TLS_DIR}/server.crt", pair.cert_pem, notify=["restart mariadb"],
             name="Ensure this node's MariaDB certificate is installed."),
        File(f"{DB_TLS_DIR}/server.key", pair.key_pem, mode="0600", owner="mysql",
             group="mysql", notify=["restart mariadb"],
             name="Ensure this node's MariaDB private key is installed (0600, mysql)."),
    ]  # fmt: skip


def steps(ctx: HostContext) -> list[Step]:
    topo, host = ctx.topology, ctx.host
    listen = dbcluster.node_address(topo, host)
    tls = dbcluster.uses_tls(topo)
    result: list[Step] = [
        Packages(
            ("mariadb-server", "mariadb-client", "python3-pymysql"),  # dbcheck's connection
            name="Ensure MariaDB is installed.",
        ),
        *(tls_steps(host) if tls else []),
        File(
            CONFIG,
            render(
                "db",
                "server.cnf.j2",
                bind_address=listen,
                port=topo.port("mysql"),
                server_id=host.number,  # stable when a tier is scaled
                semisync_timeout_ms=SEMISYNC_TIMEOUT_MS,
                slave_net_timeout=SLAVE_NET_TIMEOUT,
                tls=tls,
                tls_dir=DB_TLS_DIR,
            ),
            notify=["restart mariadb"],
            name="Ensure MariaDB is configured for GTID and semi-sync replication.",
        ),
        Service("mariadb", name="Ensure MariaDB is enabled and running."),
        FlushHandlers(),  # a new config must be live before the steps below rely on it
    ]
    for user in users(topo, host):
        result.append(
            Command(
                f"Ensure MariaDB user {user.account} ({user.why}) has exactly its privileges.",
                check=f'[ "$(mariadb -N -B)" = "{user.expected()}" ]',
                check_stdin=user.check_sql(),
                run="mariadb",
                run_stdin=user.create_sql(),
            )
        )
    for name, source in absent_users(topo, host):
        result.append(
            Command(
                f"Ensure MariaDB user '{name}'@'{source}' does not exist (no automatic failover).",
                check='[ "$(mariadb -N -B)" = 0 ]',
                check_stdin=f"SELECT COUNT(*) FROM mysql.user WHERE User = '{name}' "
                f"AND Host = '{source}';\n",
                run="mariadb",
                run_stdin="SET SESSION sql_log_bin = 0;\n"
                f"DROP USER IF EXISTS '{name}'@'{source}';\n",
            )
        )
    stray = stray_accounts_sql(topo, host)
    result.append(
        Command(
            "Ensure no app, replication or failover account is left for a host the topology "
            "no longer has.",
            check='[ -z "$(mariadb -N -B)" ]',
            check_stdin=stray,
            # Each node's accounts are its own (never replicated): sql_log_bin off.
            run="mariadb -N -B | sed 's/.*/DROP USER &;/' | "
            "(echo 'SET SESSION sql_log_bin = 0;'; cat) | mariadb",
            run_stdin=stray,
        )
    )
    result += [
        system_user("dbcheck"),
        role_script(
            "db", "dbcheck.py", DBCHECK, "dbcheck", "Ensure the writability check is installed."
        ),
        File(
            DBCHECK_CONFIG,
            json.dumps(agent_config(topo, host), indent=2) + "\n",
            mode="0600",
            owner="dbcheck",
            group="dbcheck",
            notify=["restart dbcheck"],
            name="Ensure the node's agent knows its peers, its controller and the lease.",
        ),
        File(
            "/etc/systemd/system/dbcheck.service",
            render("db", "dbcheck.service.j2", script=DBCHECK, config=DBCHECK_CONFIG),
            notify=["restart dbcheck"],
            name="Ensure the writability check's unit is up to date.",
        ),
        Service("dbcheck", name="Ensure the writability check is running."),
        # The agent runs its new config before the primary's steps ask it whether this
        # node is fenced: a fence from automatic failover does not outlive the switch off.
        FlushHandlers(),
    ]
    if host.name == primary_name(ctx):
        schema = (PROJECT_ROOT / "app" / "schema.sql").read_text()
        tables = sorted(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", schema))
        result += [
            Command(
                f"Ensure the {DATABASE} database and its tables exist (on the primary).",
                check=f"[ \"$(mariadb -N -B -e 'SHOW TABLES FROM {DATABASE}' | sort | "
                f"tr '\\n' ' ')\" = '{' '.join(tables)} ' ]",
                run=f"mariadb -e 'CREATE DATABASE IF NOT EXISTS {DATABASE}' && mariadb {DATABASE}",
                run_stdin=schema,
            ),
            Command(
                "Ensure the primary waits for a replica's acknowledgement when it has one.",
                # No replica connected (just after a failover): a commit would hang for the
                # timeout, so the waits resume when one (re)joins (dbcluster.resume_semisync).
                check="[ \"$(mariadb -N -B -e 'SELECT @@rpl_semi_sync_master_enabled')\" = 1 ] "
                "|| [ -z \"$(mariadb -N -B -e 'SHOW SLAVE HOSTS')\" ]",
                # Replicas negotiate semi-sync when they connect: end their binlog dump
                # sessions so they reconnect (in a second) and acknowledge from then on.
                run="mariadb -e 'SET GLOBAL rpl_semi_sync_master_enabled = ON' && "
                'for id in $(mariadb -N -B -e "SELECT ID FROM information_schema.PROCESSLIST '
                'WHERE COMMAND LIKE \'Binlog Dump%\'"); do mariadb -e "KILL $id" || true; done',
            ),
            Command(
                "Ensure the primary accepts writes (read_only off).",
                check="[ \"$(mariadb -N -B -e 'SELECT @@read_only')\" = 0 ]",
                run="if mariadb -e 'SHOW SLAVE STATUS' | grep -q .; then "
                "echo 'this node replicates from another: refusing to make it writable' >&2; "
                f"exit 1; fi; python3 - {DBCHECK_CONFIG} && "
                "mariadb -e 'SET GLOBAL read_only = OFF'",
                run_stdin=NOT_FENCED_CHECK,
            ),
        ]
    return result


@dataclass
class Replicates(Step):
    """This replica replicates from the primary; seeded from it once if it does not."""

    ctx: HostContext
    primary: str
    name: str = ""
    notify: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.name = f"Ensure this replica replicates from {self.primary} (GTID, semi-sync)."

    def apply(self, remote: Remote) -> Outcome:
        topo = self.ctx.topology
        address = dbcluster.node_address(topo, topo.hosts[self.primary])
        state = dbcluster.read_state(self.ctx.host, remote)
        tls = dbcluster.uses_tls(topo)
        if (
            state.replicating_from == address
            and state.using_gtid == "Slave_Pos"
            and state.sql_running == "Yes"
            and (state.ssl == "Yes") != tls
        ):
            dbcluster.mysql(
                remote,
                f"STOP SLAVE; CHANGE MASTER TO {dbcluster.master_tls(tls)}; START SLAVE;",
            )
            return Outcome(True, f"replication switched {'to' if tls else 'off'} TLS")
        if (
            state.replicating_from == address
            and state.using_gtid == "Slave_Pos"
            and state.io_running in ("Yes", "Connecting")
            and state.sql_running == "Yes"
            and state.read_only
        ):
            return self.semisync(remote, state)
        if state.replicating_from == address and state.sql_running == "Yes":
            dbcluster.mysql(remote, "SET GLOBAL read_only = ON; START SLAVE;", check=False)
            return Outcome(True, "restarted replication threads")
        if not state.read_only and not state.replicating_from:
            raise StepError(
                f"{self.ctx.host.name} accepts writes: the primary moved while this deploy ran "
                f"(it chose {self.primary} at its start). Nothing was changed; run `fab deploy` "
                "again."
            )
        if self.ctx.peer is None:
            raise StepError("no way to reach the primary to seed this replica")
        with self.ctx.peer(self.primary) as primary:
            lacking = dbcluster.missing_from(
                state, dbcluster.read_state(topo.hosts[self.primary], primary)
            )
            if lacking:
                raise StepError(
                    f"{self.ctx.host.name} holds transactions the primary {self.primary} "
                    f"lacks ({', '.join(lacking)}): re-seeding it would throw them away, so "
                    "the deploy leaves it alone. See them with `fab db.status`; rebuild it "
                    f"with `fab db.rejoin --host {self.ctx.host.name} --discard`, which lists "
                    "what it discards."
                )
            dump, gtid = dbcluster._dump(primary)
            dbcluster.seed_replica(
                remote, address, dump, gtid, port=topo.port("mysql"), tls=dbcluster.uses_tls(topo)
            )
            dbcluster.wait_replicating(remote)
            dbcluster.resume_semisync(primary, remote)
        return Outcome(True, f"seeded from {self.primary} at GTID {gtid}")

    def semisync(self, remote: Remote, state: dbcluster.NodeState) -> Outcome:
        """A replica acknowledges (semi-sync) whenever its primary waits for it, and never
        waits for acknowledgements itself (server.cnf.j2 says why)."""
        done = []
        if dbcluster.mysql(remote, "SELECT @@rpl_semi_sync_master_enabled;")[0][0] == "1":
            dbcluster.mysql(remote, "SET GLOBAL rpl_semi_sync_master_enabled = OFF;")
            done.append("no longer waits for acknowledgements itself")
        if state.semisync_slave != "ON" and state.io_running == "Yes" and self.ctx.peer:
            with self.ctx.peer(self.primary) as primary:
                waits = dbcluster.mysql(primary, "SELECT @@rpl_semi_sync_master_enabled;")
            if waits[0][0] == "1":  # it connected before its primary waited: reconnect
                dbcluster.mysql(remote, "STOP SLAVE IO_THREAD; START SLAVE IO_THREAD;")
                done.append("reconnected to acknowledge its primary's commits")
        return Outcome(True, "; ".join(done)) if done else OK


def replication_steps(ctx: HostContext) -> list[Step]:
    primary = primary_name(ctx)
    if ctx.host.name == primary:
        return []
    return [Replicates(ctx, primary)]


ROLE = Role("db", "db", steps, handlers=[restart_handler("mariadb"), restart_handler("dbcheck")])
REPLICATION = Role("replication", "replication", replication_steps)
