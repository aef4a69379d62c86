"""Database operations behind `fab db.*`: status, switchover, failover, rejoin, backup, restore.

Each prints what it does with a timeline (seconds since the task started) and appends
the timeline to .testbed/db-events.jsonl. SQL runs as root on the machines over SSH.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import json
import re
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from provision import STATE_DIR, dbcluster, engine, inventory, layout, monitoring, secrets, topology
from provision.dbcluster import NodeState, Timeline
from provision.ops.common import TaskError

EVENTS = STATE_DIR / "db-events.jsonl"
BACKUPS = STATE_DIR / "backups"


class DbOpError(TaskError):
    """A database operation refused or could not go on; the message says why and what to do."""


@contextmanager
def connected(
    topo: topology.Topology, eps: dict[str, inventory.Endpoint], name: str
) -> Iterator[engine.Remote]:
    with contextlib.ExitStack() as stack:
        try:
            remote = stack.enter_context(engine.Remote(topo.hosts[name], eps[name]))
        except Exception as exc:
            raise DbOpError(
                f"{name}: cannot connect over SSH: {type(exc).__name__}: {exc}"
            ) from None
        yield remote


def print_status(topo: topology.Topology, eps: dict[str, inventory.Endpoint]) -> None:
    """`fab db.status`: one line per database node."""
    print("Database nodes:")
    print("\n".join(status_lines(dbcluster.states(topo, eps))))


def status_lines(found: dict[str, NodeState]) -> list[str]:
    lines = [
        f"  {'node':<8} {'role':<8} {'gtid (current)':<16} {'io/sql':<12} {'lag':<5} "
        f"{'semi-sync':<22} note"
    ]
    for s in found.values():
        if not s.reachable:
            lines.append(f"  {s.name:<8} {'DOWN':<8} {s.error}")
            continue
        threads = f"{s.io_running or '-'}/{s.sql_running or '-'}"
        semi = f"master={s.semisync_master}" if s.role == "primary" else f"slave={s.semisync_slave}"
        note = s.last_error[:60] if s.last_error else ("read-only" if s.read_only else "writable")
        lines.append(
            f"  {s.name:<8} {s.role:<8} {s.gtid_current_pos or '-':<16} {threads:<12} "
            f"{s.lag or '-':<5} {semi:<22} {note}"
        )
    return lines


def _record(kind: str, timeline: Timeline, **extra: object) -> None:
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    entry = {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "operation": kind,
        "timeline": [(round(t - timeline.started, 3), e) for t, e in timeline.events],
        **extra,
    }
    with EVENTS.open("a") as out:
        out.write(json.dumps(entry) + "\n")


def _address(topo: topology.Topology, name: str) -> str:
    return dbcluster.node_address(topo, topo.hosts[name])


def _current(topo: topology.Topology, found: dict[str, NodeState]) -> str:
    try:
        return dbcluster.discover_primary(topo, found)
    except engine.StepError as exc:
        raise DbOpError(str(exc)) from None


def _wait_writer_endpoint(
    topo: topology.Topology, eps: dict[str, inventory.Endpoint], timeline: Timeline
) -> None:
    """First write through an app host's writer endpoint, with the app's own user."""
    app_host = topo.with_role("app")[0].name
    # The script (with the password) travels as a 0600 file, never on a command line.
    writer = layout.DB_WRITER_LISTEN
    script = (
        f"MYSQL_PWD='{secrets.password('db-app')}' mariadb -N -B "
        f"-h {layout.host_of(writer)} -P {layout.port_of(writer)} "
        f"-u {layout.APP_USER} --connect-timeout=2 {layout.DATABASE} "
        + (f"--ssl-ca={layout.DB_CLIENT_CA} " if dbcluster.uses_tls(topo) else "")
        + "-e "
        '"INSERT INTO failover_probe (written_by) VALUES (@@hostname); SELECT @@hostname"\n'
    )
    with connected(topo, eps, app_host) as remote:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            res = remote.run("sh", stdin=script, check=False)
            if res.ok and res.stdout.strip():
                timeline.mark(
                    f"first write accepted through {app_host}'s writer endpoint "
                    f"(by {res.stdout.strip()})"
                )
                return
            time.sleep(0.2)
    raise DbOpError("the writer endpoint did not reach a writable node within 30 s")


def switchover(
    topo: topology.Topology, eps: dict[str, inventory.Endpoint], target: str = ""
) -> Timeline:
    """Planned: fence the primary, let the replica catch up, promote it, demote the old one."""
    found = dbcluster.states(topo, eps)
    old = _current(topo, found)
    candidates = [s for s in found.values() if s.reachable and s.name != old]
    if target:
        candidates = [s for s in candidates if s.name == target]
    if not candidates:
        raise DbOpError(f"no reachable replica to switch to{' (' + target + ')' if target else ''}")
    new = dbcluster.most_advanced(candidates).name
    print(f"Switchover: {old} -> {new}", flush=True)
    timeline = Timeline()
    with connected(topo, eps, old) as old_r, connected(topo, eps, new) as new_r:
        dbcluster.fence(old_r)
        timeline.mark(f"{old} fenced (read_only on): writes pause")
        pos = dbcluster.mysql(old_r, "SELECT @@gtid_binlog_pos;")[0][0]
        dbcluster.wait_applied(new_r, pos)
        timeline.mark(f"{new} applied everything up to {pos}")
        dbcluster.promote(new_r, timeline, replica_follows=True)
        dbcluster.demote_to_replica(
            old_r, _address(topo, new), port=topo.port("mysql"), tls=dbcluster.uses_tls(topo)
        )
        timeline.mark(f"{old} replicates from {new}")
    _wait_writer_endpoint(topo, eps, timeline)
    pause = timeline.between(
        f"{old} fenced (read_only on): writes pause", "promotion done: new primary accepts writes"
    )
    print(f"Write pause (fence to promotion): {pause:.2f} s", flush=True)
    _record("switchover", timeline, old=old, new=new, write_pause_s=round(pause, 3))
    return timeline


def _notes_lacking(node: engine.Remote, primary: engine.Remote, limit: int = 200) -> list[str]:
    """The newest notes on `node` that the primary lacks (id and text), for the operator."""
    rows = dbcluster.mysql(
        node, f"SELECT id, text FROM {layout.DATABASE}.notes ORDER BY id DESC LIMIT {limit};",
        check=False, timeout=dbcluster.STATE_TIMEOUT,
    )  # fmt: skip
    if not rows:
        return []
    ids = ",".join(r[0] for r in rows if r and r[0].isdigit())
    there = {
        (r[0], r[1] if len(r) > 1 else "")
        for r in dbcluster.mysql(
            primary,
            f"SELECT id, text FROM {layout.DATABASE}.notes WHERE id IN ({ids});",
            check=False,
            timeout=dbcluster.STATE_TIMEOUT,
        )
    }
    return [f"note {r[0]}: {r[1][:60]!r}" for r in rows if len(r) > 1 and (r[0], r[1]) not in there]


def _fence_old(
    topo: topology.Topology, eps: dict[str, inventory.Endpoint], state: NodeState, force: bool
) -> str:
    """Make sure a lost primary cannot take writes before another node does (STONITH).

    Reachable over SSH: a MariaDB that answers read-only is fenced already; one that does
    not answer (stopped, crashed, paused) is killed, and systemd brings it back read-only.
    Unreachable: it may be alive and taking writes from app hosts that still reach it, so
    only --force (the operator knows it is powered off) goes on."""
    name = state.name
    try:
        with connected(topo, eps, name) as remote:
            if state.reachable and state.read_only:
                return f"{name} answers read-only: fenced already"
            remote.run("systemctl kill -s KILL mariadb.service", check=False)
            return f"{name}'s MariaDB killed over SSH (it restarts read-only)"
    except DbOpError as exc:
        if not force:
            raise DbOpError(
                f"cannot fence {name}: {exc}. It may still be taking writes from app hosts "
                f"that reach it. If you know {name} is powered off or cut off from every app "
                "host, run again with --force."
            ) from None
        return f"{name} unreachable; --force: the operator vouches that it is down"


def _semisync_when_last_writable(
    topo: topology.Topology, eps: dict[str, inventory.Endpoint], name: str
) -> str:
    """What the monitoring last saw of `name`'s semi-sync while it took writes: "ON",
    "OFF" (it had fallen back to asynchronous commits) or "unknown"."""
    mon = monitoring.monitor_host(topo)
    if mon is None:
        return "unknown"
    query = urllib.parse.quote(
        f'last_over_time((mysql_global_status_rpl_semi_sync_master_status{{host="{name}"}} '
        f'and on (host) mysql_global_variables_read_only{{host="{name}"}} == 0)[10m:5s])'
    )
    url = f"{monitoring.scheme(topo)}://127.0.0.1:{topo.port('prometheus')}/api/v1/query?query={query}"
    login = ""
    if monitoring.uses_tls(topo):  # HTTPS with the operator's login, read on the monitor
        login = (
            f"--cacert {monitoring.CA_FILE} "
            f'-u "{monitoring.OPERATOR_USER}:$(cat {monitoring.OPERATOR_PASSWORD_FILE})" '
        )
    try:
        with connected(topo, eps, mon.name) as remote:
            res = remote.run(f"curl -s --max-time 3 {login}'{url}'", check=False)
        result = json.loads(res.stdout)["data"]["result"]
    except (DbOpError, ValueError, KeyError):
        return "unknown"
    if not result:
        return "unknown"
    return "ON" if float(result[0]["value"][1]) == 1 else "OFF"


def failover(
    topo: topology.Topology, eps: dict[str, inventory.Endpoint], force: bool = False
) -> Timeline:
    """Unplanned: the primary is dead or fenced; fence it for sure, promote the best replica.

    With the old primary's MariaDB answering (it restarted read-only), the replica first
    catches up with everything it has, so nothing is discarded at all. With every node
    fenced, see _promote_fenced."""
    found = dbcluster.states(topo, eps)
    if found and all(s.role == "fenced" for s in found.values()):
        # Neither dbwatch nor a replica can end this: it is the operator's call.
        return _promote_fenced(topo, eps, found, force)
    if topo.option("auto_failover", False) and not force:
        raise DbOpError(
            "automatic failover is on: dbwatch on the monitor promotes and fences "
            "(`vagrant ssh monitor -c 'journalctl -u dbwatch -o cat'`). Use "
            "`fab db.switchover` for a planned move, or --force to act by hand anyway."
        )
    timeline = Timeline()
    replicas = [s for s in found.values() if s.reachable and s.replicating_from]
    writable = [s for s in found.values() if s.reachable and s.role == "primary"]
    if writable:
        raise DbOpError(f"{writable[0].name} still accepts writes: use `fab db.switchover`")
    if not replicas:
        raise DbOpError("no reachable replica to promote")
    lost = [s for s in found.values() if s not in replicas]
    receiving = [s.name for s in replicas if s.io_running == "Yes"]
    if receiving and any(not s.reachable for s in lost) and not force:
        raise DbOpError(
            f"{', '.join(receiving)} still receives from the primary: it is alive (only "
            "this machine cannot reach it?). Not failing over; --force to override."
        )
    timeline.mark(f"fault seen: no writable primary ({', '.join(s.name for s in lost)} lost)")
    for s in lost:
        semisync = _semisync_when_last_writable(topo, eps, s.name)
        timeline.mark(f"{s.name}'s semi-sync when it last took writes: {semisync} (Prometheus)")
        if semisync == "OFF" and not force:
            raise DbOpError(
                f"{s.name} had fallen back to asynchronous replication: it may hold "
                "acknowledged writes no replica received, and promoting a replica would lose "
                f"them. Bring {s.name} back (its replica then catches up), or accept the "
                "loss with --force."
            )
    for s in lost:
        timeline.mark(_fence_old(topo, eps, s, force))
    new = dbcluster.most_advanced(replicas).name
    with _hand_promotion(topo, eps, new, timeline) as remote:
        _lift_fence(remote, new, timeline)
        for s in lost:
            if s.reachable and s.read_only and s.gtid_binlog_pos:
                try:  # it answers: take everything it has (its replica reconnects to it)
                    dbcluster.wait_applied(remote, s.gtid_binlog_pos, seconds=10)
                    timeline.mark(f"{new} applied everything {s.name} has ({s.gtid_binlog_pos})")
                except engine.StepError:
                    timeline.mark(f"{new} could not catch up with {s.name}: rejoin lists it")
        dbcluster.promote(remote, timeline)
    _wait_writer_endpoint(topo, eps, timeline)
    print(
        f"Failover: {new} is the primary. Bring the old one back as a replica with "
        f"`fab db.rejoin --host <name>`.",
        flush=True,
    )
    _record("failover", timeline, new=new, lost=[s.name for s in lost])
    return timeline


def _lift_fence(remote: engine.Remote, name: str, timeline: Timeline | None = None) -> None:
    """Restart `name`'s agent: a fence lives in its memory, and a fenced agent sets
    read_only back on a node made writable by hand (docs/database.md, "Fencing"). Only for
    a node about to be promoted by hand, or one that now replicates from the primary."""
    remote.run("systemctl restart dbcheck")
    if timeline is not None:
        timeline.mark(f"{name}'s agent restarted: a fence it held is lifted")


@contextmanager
def _hand_promotion(
    topo: topology.Topology, eps: dict[str, inventory.Endpoint], new: str, timeline: Timeline
) -> Iterator[engine.Remote]:
    """A connection to `new` for a promotion by hand, which its agent and dbwatch let stand.

    With automatic failover, dbwatch is stopped for the while (it would fence a node it
    did not promote) and started again at the end, over a new connection, whatever
    happened: it then adopts the only writable node with a new epoch. The caller restarts
    `new`'s agent (_lift_fence) once it has checked the cluster with dbwatch stopped."""
    mon = monitoring.monitor_host(topo)
    watcher = mon.name if mon is not None and topo.option("auto_failover", False) else ""

    def start_watcher() -> None:
        # A new connection: the promotion may have outlived the first one.
        start = f"`vagrant ssh {watcher} -c 'sudo systemctl start dbwatch'`"
        try:
            with connected(topo, eps, watcher) as w:
                w.run("systemctl start dbwatch")
        except (DbOpError, engine.StepError) as exc:
            raise DbOpError(
                f"dbwatch could not be started again on {watcher} ({exc}); automatic "
                f"failover is off until it is: {start}"
            ) from None
        timeline.mark(f"dbwatch started again on {watcher}: it adopts the writable node")

    with contextlib.ExitStack() as stack:
        if watcher:
            with connected(topo, eps, watcher) as w:
                w.run("systemctl stop dbwatch")
            stack.callback(start_watcher)
            timeline.mark(f"dbwatch stopped on {watcher} for the promotion")
        remote = stack.enter_context(connected(topo, eps, new))
        yield remote


def _promote_fenced(
    topo: topology.Topology,
    eps: dict[str, inventory.Endpoint],
    found: dict[str, NodeState],
    force: bool,
) -> Timeline:
    """Every node answers read-only and follows no one: all fenced (docs/database.md, "A
    starved host can leave every node fenced"). dbwatch refuses to promote any of them, and
    each agent sets read_only back on a node made writable by hand. Promote the node that
    holds every transaction any other holds (the deploy's own rule, dbcluster.choose_primary):
    with dbwatch stopped, its agent restarted (a fence lives in the agent's memory), then
    dbwatch started again, which adopts the only writable node with a new epoch."""
    names = ", ".join(sorted(found))
    try:
        new = dbcluster.choose_primary(topo, found)
    except engine.StepError as exc:
        raise DbOpError(
            f"every database node ({names}) is read-only and follows no one; {exc}"
        ) from None
    if not force:
        raise DbOpError(
            f"every database node ({names}) is read-only and follows no one (fenced): "
            f"nothing takes writes. {new} holds every transaction the others hold "
            f"({found[new].gtid_current_pos or 'none yet'}); `fab db.failover --force` "
            "promotes it and loses nothing."
        )
    timeline = Timeline()
    timeline.mark(f"every node fenced ({names}); {new} holds every transaction the others hold")
    with _hand_promotion(topo, eps, new, timeline) as remote:
        # Read again with dbwatch stopped: it may have acted since the first read.
        again = dbcluster.states(topo, eps)
        if not all(s.role == "fenced" for s in again.values()):
            raise DbOpError(
                "the cluster changed while dbwatch was being stopped: "
                + ", ".join(f"{n} {s.role}" for n, s in sorted(again.items()))
                + ". Nothing was promoted; look at `fab db.status` and run again."
            )
        try:
            if dbcluster.choose_primary(topo, again) != new:
                raise DbOpError(f"{new} no longer holds every transaction; run again")
        except engine.StepError as exc:
            raise DbOpError(str(exc)) from None
        _lift_fence(remote, new, timeline)
        dbcluster.promote(remote, timeline)
    _wait_writer_endpoint(topo, eps, timeline)
    others = [n for n in sorted(found) if n != new]
    print(
        f"Failover: {new} is the primary. Bring the others back as replicas: "
        + "; ".join(f"`fab db.rejoin --host {n}`" for n in others),
        flush=True,
    )
    _record("failover", timeline, new=new, lost=others, all_fenced=True)
    return timeline


def rejoin(
    topo: topology.Topology, eps: dict[str, inventory.Endpoint], host: str, discard: bool = False
) -> Timeline:
    """Rebuild `host` as a replica of the current primary.

    Transactions `host` has that the primary lacks (an old primary's writes that never
    reached a replica) are listed first, and thrown away only with `discard`."""
    found = dbcluster.states(topo, eps)
    primary = _current(topo, found)
    if host == primary:
        raise DbOpError(f"{host} is the primary; rejoin another node")
    if not found[host].reachable:
        # Unread, it cannot say what it holds alone; and the rebuild needs its MariaDB.
        raise DbOpError(
            f"{host} cannot be read ({found[host].error}); bring its MariaDB back "
            f"(`vagrant ssh {host} -c 'sudo systemctl start mariadb'`; a hung one: "
            "`sudo systemctl kill -s KILL mariadb` first), then run this again"
        )
    timeline = Timeline()
    with connected(topo, eps, primary) as p, connected(topo, eps, host) as r:
        lacking = dbcluster.missing_from(found[host], found[primary])
        if lacking:
            notes = _notes_lacking(r, p)
            listing = "\n".join(f"    {n}" for n in notes) or "    (no notes: other tables)"
            print(
                f"{host} holds transactions {primary} lacks ({', '.join(lacking)}); "
                f"newest notes among them:\n{listing}",
                flush=True,
            )
            if not discard:
                raise DbOpError(
                    f"not rebuilding {host}: it would discard the transactions above. "
                    "Keep what you need, then run again with --discard."
                )
            timeline.mark(f"discarding {', '.join(lacking)} from {host} (--discard)")
        dump, gtid = dbcluster._dump(p)
        timeline.mark(f"dumped {primary} at GTID {gtid}")
        dbcluster.seed_replica(
            r, _address(topo, primary), dump, gtid, port=topo.port("mysql"),
            tls=dbcluster.uses_tls(topo),
        )  # fmt: skip
        dbcluster.wait_replicating(r)
        dbcluster.resume_semisync(p, r)
        timeline.mark(f"{host} replicates from {primary}")
        # A fence from its time as primary would set read_only back on it if it were ever
        # promoted by hand (a switchover): a replica of the primary has nothing to fence.
        _lift_fence(r, host, timeline)
    _record("rejoin", timeline, host=host, primary=primary, gtid=gtid, discarded=lacking)
    return timeline


def table_summary(remote: engine.Remote) -> dict[str, str]:
    """Row count and a checksum of the notes' content (id, text, server, created).

    Content, not CHECKSUM TABLE: that one also hashes the storage format, which differs
    between a table created by the schema and one re-created from a dump.
    """
    rows = dbcluster.mysql(
        remote,
        "SELECT COUNT(*), COALESCE(SUM(CRC32(CONCAT_WS('#', id, text, server, created))), 0) "
        f"FROM {layout.DATABASE}.notes;",
    )
    return {"rows": rows[0][0], "checksum": rows[0][1]}


def backup(topo: topology.Topology, eps: dict[str, inventory.Endpoint]) -> Path:
    found = dbcluster.states(topo, eps)
    primary = _current(topo, found)
    with connected(topo, eps, primary) as remote:
        dump, gtid = dbcluster._dump(remote)
        summary = table_summary(remote)
    BACKUPS.mkdir(parents=True, mode=0o700, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = BACKUPS / f"{layout.DATABASE}-{stamp}.sql.gz"
    with gzip.open(path, "wt") as out:
        out.write(dump)
    path.chmod(0o600)
    print(
        f"Backup of {primary} at GTID {gtid}: {path} ({summary.get('rows')} notes, "
        f"checksum {summary.get('checksum')})",
        flush=True,
    )
    return path


def restore(
    topo: topology.Topology, eps: dict[str, inventory.Endpoint], host: str, file: str = ""
) -> dict[str, str]:
    """Load a backup onto `host` (a replica) and let it catch up from the backup's GTID."""
    found = dbcluster.states(topo, eps)
    primary = _current(topo, found)
    if host == primary:
        raise DbOpError(f"{host} is the primary; restore onto a replica (or a fresh node)")
    path = Path(file) if file else max(BACKUPS.glob("*.sql.gz"), default=None)
    if path is None or not path.exists():
        raise DbOpError("no backup found: run `fab db.backup` first, or pass --file")
    with gzip.open(path, "rt") as src:
        dump = src.read()
    match = re.search(r"gtid_slave_pos='([^']*)'", dump)
    if not match:
        raise DbOpError(f"{path}: no GTID position in the backup")
    with connected(topo, eps, host) as r, connected(topo, eps, primary) as p:
        dbcluster.seed_replica(
            r, _address(topo, primary), dump, match.group(1), port=topo.port("mysql"),
            tls=dbcluster.uses_tls(topo),
        )  # fmt: skip
        dbcluster.wait_replicating(r)
        dbcluster.resume_semisync(p, r)
        pos = dbcluster.mysql(p, "SELECT @@gtid_binlog_pos;")[0][0]
        dbcluster.wait_applied(r, pos)
        here, there = table_summary(r), table_summary(p)
    print(
        f"Restored {path.name} onto {host}; caught up with {primary}: "
        f"{here['rows']} notes, checksum {here['checksum']} "
        f"({'identical' if here == there else 'DIFFERENT: ' + str(there)})",
        flush=True,
    )
    return here
