#!/usr/bin/python3
"""The database node's agent: whether this node may take writes, and its fence.

Managed by webinfra-testbed (provision/roles/db/files/dbcheck.py). Runs on every db host as
the `dbcheck` user (MariaDB knows it through unix_socket; it may read replication state,
set read_only and end the app's sessions, nothing else). docs/database.md explains the
design; in short:

* One thread reads MariaDB every 0.25 s (1 s budget) into a cache, over one connection it
  keeps (PyMySQL, the unix socket): starting a client for every read cost 50 ms on an idle
  machine and over 1 s while a deploy kept the host's CPUs busy, enough to miss a lease
  renewal. The HTTP answers come from the cache, so a paused or slow MariaDB never stalls
  them: a cache older than 1 s reads as "unresponsive".
* GET /      200 only when this node is the primary the writer endpoints may use:
             writable, replicating from no one, not fenced and, when leases are on
             (automatic failover), holding a lease. HAProxy on every app host checks it.
* GET /read  200 when MariaDB answers and is the primary the writer endpoints may use
             (holding its lease) or a replica that applies; never a primary that lost its
             lease or was fenced: it may hold commits no replica has (below).
* GET /state the cache and the lease, as JSON (for the controller and for peers).
* POST /lease {token, epoch, seconds}: the controller (dbwatch) renews the primary's lease
  after a fresh read shows MariaDB answering. A lease from an older epoch is refused.
* POST /fence {token, epoch}: revoke the lease at once, answer 503 to the endpoints from
  now on, then, once they have had time to drop this node (`drain_seconds`), end the
  app's sessions and set read_only (retried until MariaDB answers: a paused server is
  fenced the moment it resumes), then switch semi-sync's primary side off (retried by the
  watch loop while the node stays fenced: a fenced node waits for no replica).

Why the fence waits before it ends sessions: a commit that waits for the replica's
semi-sync acknowledgement, cut off from every replica, is committed here, and only here,
the moment its session is ended. No client was told it succeeded, and the next primary
will not have it; but a reader sent here after that would see it, then see it vanish
after the failover (a drill caught exactly that: a note listed, then 404). So the node
stops answering GET /read as soon as it is no longer leased, and its sessions end only
after every endpoint has stopped sending it queries.

A primary also holds its lease while a replica receives from it (the replica vouches, as
a second witness that it is alive), so a controller that is down or cut off does not
stop writes. A primary that has held a lease and lost it (neither the controller nor a
replica reached it for `lease_seconds`) fences itself: cut off from the others, it stops
taking writes before the controller may promote anyone (the controller waits longer).
"""

import contextlib
import http.client
import json
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONFIG = sys.argv[1] if len(sys.argv) > 1 else "/etc/webinfra-testbed/dbcheck.json"
SOCKET = "/run/mysqld/mysqld.sock"
QUERY = (
    "SELECT /* dbcheck-poll */ @@read_only, @@gtid_current_pos, @@gtid_binlog_state, "
    "@@gtid_slave_pos, "
    "(SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
    " WHERE VARIABLE_NAME = 'RPL_SEMI_SYNC_MASTER_STATUS'), "
    "(SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
    " WHERE VARIABLE_NAME = 'RPL_SEMI_SYNC_MASTER_CLIENTS'), "
    "(SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
    " WHERE VARIABLE_NAME = 'RPL_SEMI_SYNC_MASTER_NO_TX')"
)
SLAVE_QUERY = "SHOW /* dbcheck-poll */ SLAVE STATUS"
# How many of this agent's earlier polls MariaDB still runs. A poll that times out is
# killed on this side, but its statement may stay blocked inside the server, holding a
# connection: polling again on top of it, four times a second, once used up every
# connection of a hung server within 40 s (docs/database.md). The pattern is built so
# that this query does not match itself.
STUCK_QUERY = (
    "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
    "WHERE ID <> CONNECTION_ID() AND INFO LIKE CONCAT('%dbcheck', '-poll%');"
)
WAITERS_QUERY = (
    "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
    "WHERE VARIABLE_NAME = 'RPL_SEMI_SYNC_MASTER_WAIT_SESSIONS'"
)
FRESH = 1.0
READ_GRACE = 3.0
"""Seconds a replica that applied stays readable while its polls time out (/read)."""
WRITE_GRACE = 2.0
"""Seconds the primary stays writable (GET /) while its polls time out, when its last
answer showed it writable and it still holds its lease and no fence. A busy machine (a
deploy and a container removed at once, on a 2-core host) made one poll time out on every
database node at the same moment: the writer endpoints, `fall 1` with
`on-marked-down shutdown-sessions`, cut the primary's sessions and one commit failed.
2 s is one timed-out poll (1 s budget, then 0.5 s of back-off) and no more: a paused
server is still reported within about 2.5 s, and the lease and the fence, which make
failover safe, do not depend on this answer."""


def backoff(timeouts):
    """Seconds before the next poll after `timeouts` in a row: quick at first (a paused
    server that resumes is seen within 2 s), then every 30 s once it has stayed hung for
    about 20 s, so a server that never answers gets at most two stuck polls a minute."""
    if timeouts < 3:
        return 0.25 * 2**timeouts
    return 2.0 if timeouts < 12 else 30.0


def log(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def sql(statement, timeout=1.0):
    """A statement through the mariadb client (the fence and the stuck-poll count: rare)."""
    return subprocess.run(
        ["mariadb", "-B", "-N", "--connect-timeout=1", "-e", statement],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    ).stdout


def restarting():
    try:
        unit = subprocess.run(
            ["systemctl", "is-active", "mariadb"], capture_output=True, text=True, timeout=1
        ).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return False
    return unit in ("activating", "inactive", "failed", "deactivating")


def state_of(row, slave):
    """The poll's two answers (QUERY's row, SHOW SLAVE STATUS's fields) as the cache keeps
    them; values as the mariadb client prints them (NULL for a missing lag)."""
    cols = ["" if v is None else str(v) for v in (list(row or ()) + [None] * 7)[:7]]
    slave = {k: "NULL" if v is None else str(v) for k, v in (slave or {}).items()}
    return {
        "mariadb": "up",
        "read_only": cols[0] == "1",
        "gtid_current_pos": cols[1],
        "gtid_binlog_state": cols[2],
        "gtid_slave_pos": cols[3],
        "semisync_master": cols[4] or "?",
        "semisync_clients": int(cols[5] or 0),
        "semisync_no_tx": int(cols[6] or 0),
        "replicating_from": slave.get("Master_Host", ""),
        "io_running": slave.get("Slave_IO_Running", ""),
        "sql_running": slave.get("Slave_SQL_Running", ""),
        "lag": slave.get("Seconds_Behind_Master", ""),
    }


class PollTimeout(Exception):
    """MariaDB did not answer the poll within its budget (it may still be running it)."""


class PollError(Exception):
    """MariaDB refused the poll or is not there; the message is the server's or the OS's."""


def left(deadline):
    """Seconds until `deadline` (time.monotonic()); PollTimeout once none are left."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise PollTimeout("the poll's budget ran out")
    return remaining


class Poller:
    """One connection to MariaDB, kept from poll to poll and used by one thread at a time
    (the agent's poll lock). Any error drops it; a kept connection the server has closed
    since (a restart, a killed session) is opened again once before the error counts."""

    def __init__(self):
        self.conn = None

    def drop(self):
        if self.conn is not None:
            with contextlib.suppress(Exception):  # a connection that timed out may be closed
                self.conn.close()
        self.conn = None

    def connect(self, budget):
        import pymysql  # Debian's python3-pymysql (the db role installs it)

        self.conn = pymysql.connect(
            unix_socket=SOCKET,
            user="dbcheck",  # unix_socket authentication: the process's own user
            connect_timeout=budget,
            read_timeout=budget,
            write_timeout=budget,
            autocommit=True,
        )

    def limit(self, deadline):
        """Give the next query what is left of the poll's budget. PyMySQL (1.0) sets the
        socket's time-out from these before every read and write, so without this each
        read would get the whole budget again."""
        self.conn._read_timeout = self.conn._write_timeout = left(deadline)

    def ask(self, deadline):
        if self.conn is None:
            self.connect(left(deadline))
        self.limit(deadline)
        with self.conn.cursor() as cur:
            cur.execute(QUERY)
            row = cur.fetchone()
        self.limit(deadline)
        with self.conn.cursor() as cur:
            cur.execute(SLAVE_QUERY)
            values = cur.fetchone()  # None on a node that replicates from no one
            names = [d[0] for d in cur.description or ()]
            slave = dict(zip(names, values, strict=False)) if values else None
        return row, slave

    def poll(self, budget):
        """QUERY and SHOW SLAVE STATUS, both answered within `budget` seconds in all (a
        new connection's handshake included, give or take one read)."""
        deadline = time.monotonic() + budget
        for attempt in (0, 1):
            kept = self.conn is not None
            try:
                row, slave = self.ask(deadline)
            except Exception as exc:  # PyMySQL's errors, the OS's, or the budget's end
                self.drop()
                text = str(exc) or type(exc).__name__
                if isinstance(exc, (PollTimeout, TimeoutError)) or "timed out" in text:
                    raise PollTimeout(text) from None
                if kept and attempt == 0:
                    continue  # the server closed a connection kept from an earlier poll
                raise PollError(text) from None
            return state_of(row, slave)  # an unreadable answer raises here, not "down"
        raise PollError("unreachable")


class Agent:
    def __init__(self, cfg):
        self.cfg = cfg
        self.lock = threading.Lock()
        self.cache = {"at": 0.0, "mariadb": "unknown"}
        self.controller_until = 0.0
        self.vouch_until = 0.0
        self.held_lease = False
        self.epoch = 0
        self.fenced = False
        self.fence_epoch = 0
        self.hidden_at = 0.0
        """Since when the endpoints have been told to stop sending here (the fence's wait)."""
        self.semisync_off_pending = False
        """The fence could not switch semi-sync off yet (the watch loop tries again)."""
        self.fence_reason = ""
        self.enforcing = False
        self.timeouts = 0
        self.next_poll = 0.0
        self.applying_at = 0.0
        """When a poll last showed this node a replica that applies (for /read)."""
        self.writable_at = 0.0
        """When a poll last showed this node a writable primary (for /)."""
        self.poller = Poller()
        self.poll_lock = threading.Lock()
        """One poll at a time: a lease request waits for the running poll, rather than
        counting it as stuck (STUCK_QUERY) and backing off."""

    # --- reading MariaDB -------------------------------------------------------------
    def read(self):
        with self.poll_lock:
            return self._read()

    def _read(self):
        started = time.monotonic()
        with self.lock:
            if started < self.next_poll:  # backing off: the last answer stands
                return dict(self.cache)
        if self.timeouts and self.stuck_polls() != 0:
            return self.timed_out(started, "earlier polls are still blocked in MariaDB")
        try:
            try:
                state = self.poller.poll(0.4)
            except PollTimeout:
                # Slow is not dead, unless systemd says the server is (re)starting: then
                # it crashed or was killed, and comes back read-only after its recovery.
                if restarting():
                    raise
                state = self.poller.poll(0.6)
        except PollTimeout:
            return self.timed_out(started, "")
        except PollError as exc:
            err = str(exc)
            # MAX_USER_CONNECTIONS reached: earlier polls are stuck inside a server that
            # is there (slow is not dead), not a server that is down.
            busy = "max_user_connections" in err or "1226" in err
            state = {"mariadb": "unresponsive" if busy else "down", "error": err.strip()[-200:]}
        except (ValueError, IndexError, TypeError) as exc:
            state = {"mariadb": "unresponsive", "error": f"unreadable answer: {exc}"[:200]}
        state["at"] = started
        with self.lock:
            self.cache = state
            self.timeouts = 0
            self.next_poll = 0.0
            if state.get("replicating_from") and state.get("sql_running") == "Yes":
                self.applying_at = started
            primary = state.get("mariadb") == "up" and not state.get("replicating_from")
            if primary and state.get("read_only") is False:
                self.writable_at = started
        return state

    def stuck_polls(self):
        """How many earlier polls MariaDB still runs (None: it did not say in time)."""
        try:
            return int(sql(STUCK_QUERY, 0.4).strip() or 0)
        except (subprocess.SubprocessError, OSError, ValueError):
            return None

    def timed_out(self, started, why):
        state = {"mariadb": "down" if restarting() else "unresponsive", "at": started}
        if why:
            state["error"] = why
        with self.lock:
            self.timeouts += 1
            self.next_poll = time.monotonic() + backoff(self.timeouts)
            self.cache = state
        return dict(state)

    def reader(self):
        while True:
            try:
                self.read()
            except Exception as exc:  # the one reading thread must never die
                log("error", where="reader", error=str(exc)[:200])
            time.sleep(0.25)

    def snapshot(self):
        with self.lock:
            state = dict(self.cache)
        if state["mariadb"] == "up" and time.monotonic() - state["at"] > FRESH:
            state["mariadb"] = "unresponsive"
        return state

    # --- lease and fence -------------------------------------------------------------
    def holds_lease(self, now):
        if self.fenced:
            return False
        if not self.cfg["lease_required"]:
            return True
        return self.controller_until > now or self.vouch_until > now

    def public_state(self):
        now = time.monotonic()
        state = self.snapshot()
        state.pop("at", None)
        state.update(
            name=self.cfg["name"],
            epoch=self.epoch,
            fenced=self.fenced,
            fence_epoch=self.fence_epoch,
            fence_reason=self.fence_reason,
            lease=self.holds_lease(now),
            lease_remaining=round(max(self.controller_until, self.vouch_until) - now, 2),
        )
        return state

    def readable(self):
        """(may the reader endpoints send reads here, why): see GET /read."""
        st = self.snapshot()
        if st["mariadb"] == "unresponsive" and time.monotonic() - self.applying_at < READ_GRACE:
            # A replica whose poll timed out (a busy machine: the client did not start in
            # time) stays readable for READ_GRACE after it last applied: a read may be a
            # little stale, and with every replica briefly "slow" at once the app had no
            # node to read from at all. Not when MariaDB is down.
            return True, "readable (a poll was slow)"
        if st["mariadb"] != "up":
            return False, st["mariadb"]
        if st.get("replicating_from"):
            if st.get("sql_running") != "Yes":
                return False, "a replica that does not apply"
            return True, "readable"
        if st.get("read_only", True):
            return False, "read-only"
        # The primary, only while the writer endpoints may use it: once its lease is gone
        # it is cut off and about to fence itself, and ending its sessions may commit
        # writes here that no replica has (the module's docstring).
        if self.fenced:
            return False, f"fenced ({self.fence_reason})"
        if not self.holds_lease(time.monotonic()):
            return False, "no lease"
        return True, "readable"

    def writable(self):
        state = self.snapshot()
        slow = (
            state["mariadb"] == "unresponsive" and time.monotonic() - self.writable_at < WRITE_GRACE
        )
        if slow:  # one slow poll: its last answer stands (see WRITE_GRACE)
            state = dict(state, mariadb="up", replicating_from="", read_only=False)
        if state["mariadb"] != "up":
            return False, state["mariadb"]
        if state["replicating_from"]:
            return False, "replica"
        if state["read_only"]:
            return False, "read-only"
        if self.fenced:
            return False, f"fenced ({self.fence_reason})"
        if not self.holds_lease(time.monotonic()):
            return False, "no lease"
        return True, "writable (a poll was slow)" if slow else "writable"

    def grant(self, epoch, seconds):
        with self.lock:
            if epoch < self.epoch or (self.fenced and epoch <= self.fence_epoch):
                return 409, f"stale epoch {epoch} (have {self.epoch}, fenced in {self.fence_epoch})"
        state = self.read()  # a lease means "answering now", never from an old read
        if state["mariadb"] != "up":
            return 503, state["mariadb"]
        if state["read_only"] or state["replicating_from"]:
            # Not a primary (it restarted read-only, or follows another): no lease, so the
            # controller sees the primary is gone instead of renewing it forever.
            return 503, "replica" if state["replicating_from"] else "read-only"
        with self.lock:
            self.epoch = epoch
            if self.fenced and epoch > self.fence_epoch:
                log("unfenced", epoch=epoch)
                self.fenced, self.fence_reason = False, ""
            self.controller_until = time.monotonic() + seconds
            self.held_lease = True
        return 200, "leased"

    def fence(self, reason, epoch=0):
        with self.lock:
            already = self.fenced
            if not already:
                # GET / and /read turned 503 when the lease ran out (a self-fence), or now.
                now = time.monotonic()
                lease_end = max(self.controller_until, self.vouch_until)
                leased = self.cfg["lease_required"] and self.held_lease
                self.hidden_at = min(now, lease_end) if leased else now
            self.fenced, self.fence_reason = True, reason
            self.fence_epoch = max(self.fence_epoch, epoch)
            self.controller_until = self.vouch_until = 0.0
            self.held_lease = False
        if not already:
            log("fenced", reason=reason, epoch=epoch)
        self.ensure_enforced()

    def ensure_enforced(self):
        with self.lock:
            if self.enforcing:
                return
            self.enforcing = True
        threading.Thread(target=self.enforce_fence, daemon=True).start()

    def enforce_fence(self):
        try:
            self._enforce()
        finally:
            with self.lock:
                self.enforcing = False

    def _enforce(self):
        """End the app's sessions, then read_only: retried until MariaDB has done both.
        Not before the endpoints have dropped this node (see the module's docstring).
        Then the semi-sync waits of the sessions just ended (end_semisync_waits)."""
        while self.fenced:
            # Read on every pass: a fence lifted and laid again while this thread waited
            # starts a new drain, which this thread must honour too.
            drained = self.hidden_at + self.cfg.get("drain_seconds", 0.0)
            if time.monotonic() < drained:
                time.sleep(min(0.2, drained - time.monotonic()))
                continue
            try:
                ids = sql(
                    "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'app'", 2.0
                ).split()
                if ids:
                    sql("".join(f"KILL CONNECTION {i};" for i in ids), 2.0)
                sql("SET GLOBAL read_only = ON", 2.0)
                if sql("SELECT @@read_only", 2.0).strip() == "1":
                    ended = self.end_semisync_waits()
                    log("fence-enforced", killed=len(ids), semisync_waits_ended=ended)
                    return
            except (subprocess.SubprocessError, OSError):
                pass
            time.sleep(0.2)

    def end_semisync_waits(self):
        """Switch the primary side of semi-sync off; how many commits were still waiting
        for an acknowledgement just before (None: unknown). The kill above ends the waits
        of the sessions it ends (measured: 0 left); this is for the dump threads: once,
        about 10 s after a fence, a stale binlog dump thread of the cut-off replica ended
        beside the semi-sync state and MariaDB hung for good (every query, its own shutdown
        included: docs/database.md). Nothing on a fenced, read-only node needs semi-sync.
        Never in the way of the fence itself: read_only is already on. A refusal is logged;
        the watch loop tries again while the node stays fenced (semisync_off_pending)."""
        try:
            waiting = int(sql(WAITERS_QUERY, 2.0).strip() or 0)
        except (subprocess.SubprocessError, OSError, ValueError):
            waiting = None
        try:
            sql("SET GLOBAL rpl_semi_sync_master_enabled = OFF", 2.0)
            self.semisync_off_pending = False
        except (subprocess.SubprocessError, OSError) as exc:
            self.semisync_off_pending = True
            detail = getattr(exc, "stderr", "") or str(exc)
            log("error", where="fence: semi-sync off", error=str(detail).strip()[-200:])
        return waiting

    def watch(self):
        while True:
            time.sleep(0.5)
            try:
                self.watch_once()
            except Exception as exc:  # the lease must keep being watched
                log("error", where="watch", error=str(exc)[:200])

    def watch_once(self):
        """Renew the lease from replicas that receive from this node; fence on expiry."""
        peers, port = self.cfg["peers"], self.cfg["port"]
        me = self.cfg["address"]
        if self.fenced and self.snapshot().get("read_only") is False:
            self.ensure_enforced()  # made writable again by hand or by a stale deploy
        elif self.fenced and self.semisync_off_pending:
            self.end_semisync_waits()
        if not self.cfg["lease_required"]:
            return
        for peer in peers:
            try:
                url = f"http://{peer['address']}:{port}/state"
                with urllib.request.urlopen(url, timeout=0.5) as res:
                    st = json.load(res)
            except (OSError, ValueError, http.client.HTTPException):
                continue
            if st.get("replicating_from") == me and st.get("io_running") == "Yes":
                with self.lock:
                    if not self.fenced:
                        self.vouch_until = time.monotonic() + self.cfg["lease_seconds"]
        now = time.monotonic()
        state = self.snapshot()
        writable_here = state.get("mariadb") != "down" and not state.get("read_only", True)
        if self.held_lease and not self.holds_lease(now) and not self.fenced:
            if writable_here or state.get("mariadb") == "unresponsive":
                self.fence("lease expired: cut off from the controller and every replica")
            else:
                self.held_lease = False


def handler_for(agent):
    cfg = agent.cfg

    class Handler(BaseHTTPRequestHandler):
        def reply(self, code, body, kind="text/plain"):
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 - http.server's naming
            if self.path == "/":
                ok, why = agent.writable()
                self.reply(200 if ok else 503, why + "\n")
            elif self.path == "/read":
                ok, why = agent.readable()
                self.reply(200 if ok else 503, why + "\n")
            elif self.path == "/state":
                self.reply(200, json.dumps(agent.public_state()), "application/json")
            else:
                self.reply(404, "not found\n")

        def do_POST(self):  # noqa: N802
            if self.client_address[0] not in cfg["controllers"]:
                return self.reply(403, "only the failover controller may do this\n")
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(min(length, 4096)) or b"{}")
            except ValueError:
                return self.reply(400, "expected a JSON body\n")
            if body.get("token") != cfg["token"]:
                return self.reply(403, "bad token\n")
            epoch = int(body.get("epoch", 0))
            if self.path == "/lease":
                code, why = agent.grant(epoch, float(body.get("seconds", cfg["lease_seconds"])))
                self.reply(code, json.dumps({"result": why, **agent.public_state()}))
            elif self.path == "/fence":
                agent.fence(str(body.get("reason", "fenced by the controller"))[:200], epoch)
                self.reply(200, json.dumps({"result": "fenced", **agent.public_state()}))
            else:
                self.reply(404, "not found\n")

        def log_message(self, *args):
            pass

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a health checker that hangs up early is not news


def main():
    with open(CONFIG) as f:
        cfg = json.load(f)
    agent = Agent(cfg)
    agent.read()
    threading.Thread(target=agent.reader, daemon=True).start()
    threading.Thread(target=agent.watch, daemon=True).start()
    log("started", lease_required=cfg["lease_required"], lease_seconds=cfg["lease_seconds"])
    Server((cfg["listen"], cfg["port"]), handler_for(agent)).serve_forever()


if __name__ == "__main__":
    main()
