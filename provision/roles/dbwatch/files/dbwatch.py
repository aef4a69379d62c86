#!/usr/bin/python3
"""Automatic, fenced database failover for webinfra-testbed (runs on the monitor host).

Managed by webinfra-testbed (provision/roles/dbwatch/files/dbwatch.py). The five parts of
a failover, as docs/database.md describes them:

* Detection. Twice a second the controller renews the primary's lease through the node's
  agent (dbcheck), which first checks that MariaDB answers. Slow is not dead: only when no
  renewal has succeeded for the whole lease (3 s) is the primary suspect, or sooner when
  the primary's own agent says MariaDB is down or restarted read-only (a witness on the
  host itself, twice in a row).
* Second witness. A suspect primary is failed over only when no replica receives from
  it either (or its own agent says it is down). While a replica still receives, the
  primary is alive and keeps its lease through that replica: it is the controller that is
  cut off, and nothing is done. With more than one replica, every one of them must answer
  the controller: a replica it cannot reach may be on the primary's side of a partition,
  vouching for it (and acknowledging its writes), so promoting another would make two
  writers. The controller then waits; safety before availability.
* Reaction and fencing. The old primary is fenced before the new one may take writes:
  through its agent when it answers (the agent drops it from every writer endpoint at
  once, ends the app's sessions and sets read_only, even if MariaDB is paused: then the
  moment it resumes), and in any case by time: the candidate stops receiving (so it no
  longer vouches for the old primary), and the controller waits until the old primary's
  lease has certainly run out (lease + margin); an old primary cut off from everyone has
  fenced itself by then. Every replica stops receiving before the candidate is chosen,
  and the candidate is the one that *received* the most (Gtid_IO_Pos), not the one that
  applied the most: semi-sync acknowledges on receipt, so an acknowledged write may sit
  only in one replica's relay log. Promotion is refused when the old primary's last renewal showed
  semi-sync off (acknowledged writes may exist only there): the operator decides
  (`fab db.failover --force`).
* Service discovery. The new primary gets a lease in a new epoch; the writer endpoints
  send writes only to a node that holds one (one at a time, `balance first`).
* Split brain. Two writable nodes are logged and alerted (Prometheus, SplitBrain); the one
  that is not the current epoch's primary is fenced. Nothing is discarded: rebuilding the
  stale node is the operator's `fab db.rejoin`, which lists what it would throw away.

Every event is one JSON line in the journal (`journalctl -u dbwatch -o cat`).
"""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

CONFIG = sys.argv[1] if len(sys.argv) > 1 else "/etc/webinfra-testbed/dbwatch.json"
STATE = "/var/lib/dbwatch/state.json"


def log(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


class Controller:
    def __init__(self, cfg):
        self.cfg = cfg
        self.nodes = {n["name"]: n for n in cfg["nodes"]}
        saved = self.load()
        self.primary = saved.get("primary")
        self.epoch = int(saved.get("epoch", 0))
        self.last_renewal = time.monotonic()  # conservative: as if renewed at start
        self.semisync = "ON"
        self.suspect_since = None
        self.split_since = None
        self.fresh = True  # until the first round that saw the cluster
        self.said = set()  # one log line per episode for repeated refusals

    # --- persistence -----------------------------------------------------------------
    def load(self):
        try:
            with open(STATE) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def save(self):
        with open(STATE + ".tmp", "w") as f:
            json.dump({"primary": self.primary, "epoch": self.epoch}, f)
        os.replace(STATE + ".tmp", STATE)

    # --- talking to the agents and to MariaDB ------------------------------------------
    def url(self, name, path):
        return f"http://{self.nodes[name]['address']}:{self.cfg['check_port']}{path}"

    def get_state(self, name):
        try:
            with urllib.request.urlopen(self.url(name, "/state"), timeout=0.4) as res:
                return json.load(res)
        except (OSError, ValueError):
            return None

    def post(self, name, path, **body):
        data = json.dumps({"token": self.cfg["token"], **body}).encode()
        req = urllib.request.Request(self.url(name, path), data=data, method="POST")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=1.5) as res:
                return res.status, json.load(res)
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read() or b"{}")
            except ValueError:
                return exc.code, {}
        except (OSError, ValueError):
            return None, {}

    def sql(self, name, statement, timeout=5, names=False):
        res = subprocess.run(
            ["mariadb", f"--defaults-extra-file={self.cfg['client_cnf']}",
             "-h", self.nodes[name]["address"], "--connect-timeout=2", "-B",
             "-e", statement, *([] if names else ["-N"])],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if res.returncode != 0:
            raise RuntimeError(f"{name}: {res.stderr.strip()[-300:]}")
        return res.stdout

    def once(self, key, event, **fields):
        if key not in self.said:
            self.said.add(key)
            log(event, **fields)

    # --- one round -------------------------------------------------------------------
    def step(self):
        names = list(self.nodes)
        states = {}
        threads = [
            threading.Thread(target=lambda n=n: states.__setitem__(n, self.get_state(n)))
            for n in names
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        writable = [n for n in names if is_writable(states[n])]

        if self.fresh:
            # At start, what the nodes say beats what was remembered: an operator may have
            # moved the primary while this controller was off.
            self.fresh = False
            if len(writable) == 1 and writable[0] != self.primary:
                self.adopt(writable[0], "the only writable node when the controller started")
                return
        if self.primary is None:
            if len(writable) == 1:
                self.adopt(writable[0], "the only writable node")
            return
        stale = [n for n in writable if n != self.primary]
        if stale:
            own = states.get(self.primary) or {}
            moved_to = [n for n in stale if own.get("replicating_from") == self.nodes[n]["address"]]
            if len(stale) == 1 and moved_to:
                self.adopt(stale[0], f"{self.primary} now replicates from it (switchover)")
                return
            # A switchover makes the new primary writable a moment before the old one
            # follows it; only a second writable node that stays is a split brain.
            self.split_since = self.split_since or time.monotonic()
            settled = time.monotonic() - self.split_since >= self.cfg["split_brain_grace"]
            if settled and self.primary in writable:
                self.split_brain(writable, stale)
            elif settled and len(stale) == 1:
                # The primary this controller remembers takes no writes, and one other node
                # does and stays so: an operator promoted it (fab db.failover --force).
                self.adopt(stale[0], f"{self.primary} is not writable; an operator promoted it")
                return
        else:
            self.split_since = None

        now = time.monotonic()
        code, reply = self.post(self.primary, "/lease", epoch=self.epoch,
                                seconds=self.cfg["lease_seconds"])  # fmt: skip
        if code == 200:
            self.last_renewal, self.semisync = now, reply.get("semisync_master", "?")
            if self.suspect_since is not None:
                log("primary-answers-again", primary=self.primary,
                    after_s=round(now - self.suspect_since, 2))  # fmt: skip
            self.suspect_since, self.said = None, set()
            return
        if reply.get("mariadb"):
            # The agent read MariaDB afresh to answer the renewal: newer than its /state.
            states[self.primary] = reply
        self.suspected(states, code, reply, now)

    def suspected(self, states, code, reply, now):
        p = self.primary
        own = states.get(p)
        if code == 409 and int(reply.get("epoch", 0)) > self.epoch:
            # The agent holds a newer epoch: someone else leased it. Never fight it.
            self.once("stale-epoch", "stale-epoch", primary=p, reply=reply.get("result"))
            return
        # (A 409 for a fence this controller set in an attempt that did not finish: go on.)
        if self.suspect_since is None:
            self.suspect_since = now
            seen = own or {}
            log("fault-seen", primary=p, agent="unreachable" if own is None else "answers",
                mariadb=seen.get("mariadb"), read_only=seen.get("read_only"))  # fmt: skip
        # A witness on the host itself: MariaDB is gone, or came back read-only (fenced), or
        # has answered no query for wedged_seconds while its agent answers us (a wedged
        # server: its replicas may still "receive" its heartbeats, yet it takes no write).
        # Its agent answers, so the fence reaches it: it leaves every writer endpoint first.
        wedged = (
            own is not None
            and own.get("mariadb") == "unresponsive"
            and now - self.suspect_since >= self.cfg.get("wedged_seconds", 15.0)
        )
        if wedged:
            self.once("wedged", "primary-wedged", primary=p,
                      after_s=round(now - self.suspect_since, 1))  # fmt: skip
        host_says_dead = wedged or (own is not None and (
            own.get("mariadb") == "down" or (own.get("mariadb") == "up" and own.get("read_only"))
        ))  # fmt: skip
        if host_says_dead and not wedged:
            # Read-only takes longer to believe than "down": a planned switchover fences
            # the primary for a moment before the new one is writable.
            wait = self.cfg["confirm_seconds"] * (3 if own.get("read_only") else 1)
            if now - self.suspect_since < wait:
                return
        elif now - self.last_renewal < self.cfg["lease_seconds"]:
            return  # slow is not dead: the lease has not run out yet
        address = self.nodes[p]["address"]
        replicas = [
            n for n in self.nodes
            if n != p and states.get(n) and states[n].get("mariadb") == "up"
            and states[n].get("replicating_from") == address
        ]  # fmt: skip
        receiving = [n for n in replicas if states[n].get("io_running") == "Yes"]
        if receiving and not host_says_dead:
            self.once("witness", "not-promoting",
                      reason=f"{', '.join(receiving)} still receives from {p}: it is alive; "
                      "the controller may be the one cut off")  # fmt: skip
            return
        # Every other node must answer with its MariaDB up: one that does not may be on
        # the primary's side of a partition, receiving and acknowledging its writes (two
        # writers), or hold in its relay log the only copy of an acknowledged write (lost
        # if another is promoted). Even when the primary's own host says it is dead.
        unheard = [
            n for n in self.nodes
            if n != p and (states.get(n) is None or states[n].get("mariadb") != "up")
        ]  # fmt: skip
        if unheard:
            why = (
                f"{', '.join(unheard)} cannot be reached or its MariaDB does not answer: it "
                f"may receive from {p} or hold an acknowledged write alone; promoting "
                "another could make two writers or lose it"
            )
            self.once(f"unheard:{','.join(unheard)}", "not-promoting", reason=why)
            return
        if self.semisync != "ON":
            self.once("semisync", "not-promoting",
                      reason=f"{p}'s last renewal showed semi-sync {self.semisync}: "
                      "acknowledged writes may exist only there; operator: "
                      "fab db.failover --force")  # fmt: skip
            return
        if not replicas:
            self.once("no-replica", "not-promoting", reason=f"no replica of {p} answers")
            return
        self.failover(p, replicas, own is not None, now, states)

    def failover(self, old, replicas, agent_answers, seen, states=None):
        started = self.suspect_since or seen
        t = lambda: round(time.monotonic() - started, 3)  # noqa: E731
        log("promoting", old=old, replicas=replicas, t=t())
        fenced_at = None
        if agent_answers:
            code, _ = self.post(old, "/fence", epoch=self.epoch + 1,
                                reason=f"failover (epoch {self.epoch + 1})")  # fmt: skip
            if code == 200:
                fenced_at = time.monotonic()
                log("fenced", node=old, by="its agent", t=t())
        stopped, committed = [], []
        try:
            received, io_stopped = self.stop_receiving(replicas, stopped, t)
            new = max(received, key=lambda n: (seq(received[n]), n == replicas[0]))
            log("candidate", node=new, received={n: received[n] for n in received}, t=t())
            # A node that is no replica of `old` (a fenced earlier primary) may hold
            # acknowledged writes the candidate never received: promoting it would lose
            # them (the split drill, then a second failover, did exactly that).
            for n, state in (states or {}).items():
                if n in (old, new) or n in received or not state:
                    continue
                held = state.get("gtid_current_pos") or ""
                if seq(held) > seq(received[new]):
                    raise RuntimeError(
                        f"{n} holds transactions up to {held} that {new} never received "
                        f"({received[new]}): promoting {new} would lose them; operator: "
                        f"`fab db.status`, then `fab db.failover` or `fab db.rejoin`"
                    )
            if self.promote(old, new, received[new], fenced_at, io_stopped, t, committed):
                self.repoint_others(new, [n for n in received if n != new])
                return
        except Exception as exc:
            if committed:
                # The new primary is in place (and remembered): never undo that by
                # restarting the other replicas on the old one.
                log("error", error=f"after the promotion: {type(exc).__name__}: {exc}"[:300])
                return
            log("not-promoting", reason=f"promotion failed: {exc}"[:300], t=t())
        # Leave every replica receiving again; the next round starts over.
        for n in stopped:
            try:
                self.sql(n, "START SLAVE IO_THREAD")
            except Exception as again:
                log("error", error=f"restarting {n}'s IO thread: {again}"[:300])

    def stop_receiving(self, replicas, stopped, t):
        """Stop every replica's IO thread (none vouches for the old primary any more) and
        read what each received. Raises if any of them cannot be stopped or read."""
        received = {}
        for n in replicas:
            # Listed first: if the client times out, the server may still stop the thread,
            # and a failed attempt must start it again.
            stopped.append(n)
            # MariaDB answers STOP SLAVE only once the IO thread gives up its connection
            # attempt to a silent primary: seconds, more than the default 5 s budget.
            self.sql(n, "STOP SLAVE IO_THREAD", timeout=20)
        io_stopped = time.monotonic()
        log("receiving-stopped", nodes=stopped, t=t())
        for n in replicas:
            for line in self.sql(n, "SHOW SLAVE STATUS\\G", names=True).splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "Gtid_IO_Pos":
                    received[n] = value.strip()
            if not received.get(n):
                # Never promote without knowing what was received: the relay log goes.
                raise RuntimeError(f"cannot read what {n} received")
        return received, io_stopped

    def promote(self, old, new, received, fenced_at, io_stopped, t, committed):
        out = self.sql(new, f"SELECT MASTER_GTID_WAIT('{received}', 30)", 35).split()
        if out[-1:] != ["0"]:
            log("not-promoting", reason=f"{new} did not apply up to {received}")
            return False
        log("relay-log-applied", node=new, gtid=received, t=t())
        if fenced_at is not None:
            # Every writer endpoint checks twice a second: after this, none sends to `old`.
            ready = fenced_at + self.cfg["writer_check_window"]
        else:
            # Fenced by time: `old` held its lease at most lease_seconds after the last
            # renewal by this controller or a vouch by a replica, whichever came later.
            ready = max(self.last_renewal, io_stopped) + self.cfg["lease_seconds"]
            ready += self.cfg["fence_margin"]
            log("fencing-by-lease", node=old, wait_s=round(max(ready - time.monotonic(), 0), 2))
        time.sleep(max(0.0, ready - time.monotonic()))
        self.end_stale_dump_threads(new)
        # No replica can acknowledge yet: semi-sync waits resume when one rejoins.
        self.sql(new, "STOP SLAVE; RESET SLAVE ALL; SET GLOBAL rpl_semi_sync_master_enabled = OFF; "
                 "SET GLOBAL read_only = OFF;")  # fmt: skip
        committed.append(new)
        self.epoch += 1
        self.primary = new
        self.save()
        promoted = t()
        for _ in range(10):
            code, _ = self.post(new, "/lease", epoch=self.epoch, seconds=self.cfg["lease_seconds"])
            if code == 200:
                break
            time.sleep(0.2)
        self.last_renewal, self.semisync = time.monotonic(), "ON"
        log("failover", old=old, new=new, epoch=self.epoch, fenced_by="agent" if fenced_at
            else "lease", fault_to_promotion_s=promoted, fault_to_lease_s=t())  # fmt: skip
        self.suspect_since, self.said = None, set()
        return True

    def end_stale_dump_threads(self, node):
        """End the binlog dump threads `node` kept from an earlier time as primary, before it
        takes writes. A replica whose connection died without a word (a partition, a
        failover) leaves its dump thread waiting on the old primary; when that replica
        connects to it again, MariaDB ends the old thread itself, and with semi-sync
        commits in flight that has wedged the server (the drills saw it twice; MDEV-35397,
        still open, is a likely relative). Ended here, before any write, it cannot."""
        try:
            ids = self.sql(node, "SELECT ID FROM information_schema.PROCESSLIST "
                           "WHERE COMMAND LIKE 'Binlog Dump%'").split()  # fmt: skip
            for i in ids:
                self.sql(node, f"KILL CONNECTION {int(i)}")
        except (RuntimeError, subprocess.SubprocessError, ValueError) as exc:
            log("error", error=f"ending {node}'s old dump threads: {exc}"[:300])
            return
        if ids:
            log("stale-dump-threads-ended", node=node, threads=len(ids))

    def repoint_others(self, new, others):
        """The other replicas, stopped for the failover, follow the new primary.

        Semi-sync is switched on at the new primary first: a replica negotiates it when its
        IO thread connects, so one that connected before would stay asynchronous."""
        if not others:
            return
        address = self.nodes[new]["address"]
        try:
            self.sql(new, "SET GLOBAL rpl_semi_sync_master_enabled = ON")
        except (RuntimeError, subprocess.SubprocessError) as exc:
            log("error", error=f"semi-sync on at {new}: {exc}"[:300])
        moved = []
        for n in others:
            try:
                self.sql(n, "SET GLOBAL rpl_semi_sync_master_enabled = OFF; STOP SLAVE; "
                         f"CHANGE MASTER TO MASTER_HOST = '{address}', "
                         "MASTER_USE_GTID = slave_pos; START SLAVE;")  # fmt: skip
                moved.append(n)
            except (RuntimeError, subprocess.SubprocessError) as exc:
                log("error", error=f"pointing {n} at {new}: {exc}"[:300])
        if not moved:
            # Nobody to acknowledge: commits would wait for the semi-sync timeout.
            try:
                self.sql(new, "SET GLOBAL rpl_semi_sync_master_enabled = OFF")
            except (RuntimeError, subprocess.SubprocessError) as exc:
                log("error", error=f"semi-sync off at {new}: {exc}"[:300])
            return
        log("replicas-follow", primary=new, replicas=moved)

    def adopt(self, name, why):
        self.epoch += 1
        self.primary = name
        self.save()
        code, _ = self.post(name, "/lease", epoch=self.epoch, seconds=self.cfg["lease_seconds"])
        self.last_renewal = time.monotonic()
        self.suspect_since, self.said = None, set()
        log("primary", node=name, epoch=self.epoch, why=why, leased=code == 200)

    def split_brain(self, writable, stale):
        self.once(f"split:{','.join(writable)}", "split-brain", writable=writable,
                  primary=self.primary, epoch=self.epoch)  # fmt: skip
        for n in stale:
            code, _ = self.post(n, "/fence", epoch=self.epoch,
                                reason=f"split brain: {self.primary} is the primary")  # fmt: skip
            if code != 200:
                try:
                    self.sql(n, "SET GLOBAL read_only = ON", timeout=3)
                    code = 200
                except (RuntimeError, subprocess.SubprocessError) as exc:
                    log("error", error=f"cannot fence {n}: {exc}")
            if code == 200:
                self.once(f"fenced:{n}", "fenced", node=n, by="split-brain handling")


def is_writable(state):
    return bool(
        state and state.get("mariadb") == "up" and not state.get("read_only", True)
        and not state.get("replicating_from")
    )  # fmt: skip


def seq(pos):
    return max((int(g.split("-")[2]) for g in pos.split(",") if g.count("-") == 2), default=0)


def main():
    with open(CONFIG) as f:
        cfg = json.load(f)
    ctl = Controller(cfg)
    log("started", nodes=list(ctl.nodes), primary=ctl.primary, epoch=ctl.epoch,
        lease_s=cfg["lease_seconds"])  # fmt: skip
    while True:
        time.sleep(cfg["interval_seconds"])
        try:
            ctl.step()
        except Exception as exc:  # keep watching; a failed attempt is retried next round
            log("error", error=f"{type(exc).__name__}: {str(exc)[:300]}")


if __name__ == "__main__":
    main()
