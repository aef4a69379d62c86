#!/usr/bin/python3
"""Automatic, fenced database failover for webinfra-testbed (runs on the monitor host).

Managed by webinfra-testbed (provision/roles/dbwatch/files/dbwatch.py).

Every second it asks each db node's dbcheck whether it is writable. When no node has
been writable for `confirm` seconds, it promotes the most advanced replica, but only
when that is safe:
  * the last primary answers and is read-only (it restarted: every node boots fenced), or
  * the last primary does not answer, and no replica still receives from it either
    (a second witness that it is gone, not just cut off from this host).
It never makes a node writable while another one is. The old primary stays read-only
until `fab db.rejoin` (or the next deploy) rebuilds it as a replica. Every failover is
logged as one JSON line: fault seen, promotion done, first write accepted.
"""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

CONFIG = sys.argv[1] if len(sys.argv) > 1 else "/etc/webinfra-testbed/dbwatch.json"


def log(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def writable(node, port):
    """True (writable), False (answers, read-only or MariaDB down), None (unreachable)."""
    try:
        with urllib.request.urlopen(f"http://{node['address']}:{port}/", timeout=1) as res:
            return res.status == 200
    except urllib.error.HTTPError:
        return False
    except OSError:
        return None


def sql(cfg, node, statement, timeout=5):
    res = subprocess.run(
        [
            "mariadb",
            f"--defaults-extra-file={cfg['client_cnf']}",
            "-h",
            node["address"],
            "--connect-timeout=2",
            "-e",
            statement,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if res.returncode != 0:
        raise RuntimeError(res.stderr.strip())
    return res.stdout


def slave_status(cfg, node):
    out = sql(cfg, node, "SHOW SLAVE STATUS\\G")
    pairs = (line.partition(":") for line in out.splitlines())
    return {k.strip(): v.strip() for k, _, v in pairs if v}


def seq(cfg, node):
    out = sql(cfg, node, "SELECT @@gtid_current_pos").split()
    pos = out[-1] if len(out) > 1 else ""
    return max((int(g.split("-")[2]) for g in pos.split(",") if g.count("-") == 2), default=0)


def promote(cfg, node, started):
    # Apply everything this replica received (and acknowledged) before its relay log is
    # discarded. With parallel replication "read all relay log" is not "applied": wait
    # for the received GTID position itself. If it cannot be reached, do not promote.
    log("promoting", node=node["name"], t=round(time.monotonic() - started, 3))
    sql(cfg, node, "STOP SLAVE IO_THREAD;")
    received = slave_status(cfg, node).get("Gtid_IO_Pos", "")
    log("receiving-stopped", node=node["name"], t=round(time.monotonic() - started, 3))
    if received:
        out = sql(cfg, node, f"SELECT MASTER_GTID_WAIT('{received}', 30)", timeout=35).split()
        if out[-1:] != ["0"]:
            raise RuntimeError(f"{node['name']} did not apply up to {received}: not promoting")
    log(
        "relay-log-applied",
        node=node["name"],
        gtid=received,
        t=round(time.monotonic() - started, 3),
    )
    # No replica can acknowledge yet: pause semi-sync waits until one rejoins (the rejoin
    # turns them back on), or the first commit would hang for the semi-sync timeout.
    sql(
        cfg,
        node,
        "STOP SLAVE; RESET SLAVE ALL; SET GLOBAL rpl_semi_sync_master_enabled = OFF; "
        "SET GLOBAL read_only = OFF;",
    )
    promoted = time.monotonic()
    deadline = time.monotonic() + 10
    first_write = None
    while time.monotonic() < deadline and first_write is None:
        try:
            sql(cfg, node, "INSERT INTO testbed.failover_probe (written_by) VALUES ('dbwatch')")
            first_write = time.monotonic()
        except RuntimeError:
            time.sleep(0.2)
    return promoted - started, (first_write - started) if first_write else None


STATE = "/var/lib/dbwatch/last-primary"


def remember(name):
    with open(STATE + ".tmp", "w") as f:
        f.write(name)
    os.replace(STATE + ".tmp", STATE)


def recall():
    try:
        with open(STATE) as f:
            return f.read().strip() or None
    except OSError:
        return None


def main():
    with open(CONFIG) as f:
        cfg = json.load(f)
    nodes = cfg["nodes"]
    # The last primary seen survives a restart of this controller.
    ctx = {"last_primary": recall(), "silent_since": None}
    log(
        "started",
        nodes=[n["name"] for n in nodes],
        confirm_s=cfg["confirm_seconds"],
        last_primary=ctx["last_primary"],
    )
    while True:
        time.sleep(cfg["interval_seconds"])
        try:
            step(cfg, ctx)
        except Exception as exc:  # keep watching; a failed attempt is retried next round
            log("error", error=f"{type(exc).__name__}: {str(exc)[:300]}")


def step(cfg, ctx):
    """One round: read every node, and fail over when it is both needed and safe."""
    nodes, port = cfg["nodes"], cfg["check_port"]
    states = {n["name"]: writable(n, port) for n in nodes}
    up = [n["name"] for n in nodes if states[n["name"]]]
    if len(up) > 1:
        log("split-brain", writable=up)  # never promote anything while this holds
        return
    if up:
        if ctx["last_primary"] != up[0]:
            log("primary", node=up[0])
            remember(up[0])
        ctx["last_primary"], ctx["silent_since"] = up[0], None
        return
    last = ctx["last_primary"]
    if last is None:
        return  # never saw a primary: nothing to fail over from
    now = time.monotonic()
    if ctx["silent_since"] is None:
        ctx["silent_since"] = now
        log(
            "fault-seen",
            primary=last,
            primary_state={
                True: "writable",
                False: "read-only or MariaDB down",
                None: "unreachable",
            }[states.get(last)],
        )
    if now - ctx["silent_since"] < cfg["confirm_seconds"]:
        return
    candidates = []
    for n in nodes:
        if n["name"] == last or states[n["name"]] is None:
            continue
        st = slave_status(cfg, n)
        if not st:
            continue  # not a replica
        if states.get(last) is None and st.get("Slave_IO_Running") == "Yes":
            log("not-promoting", reason=f"{n['name']} still receives from {last}")
            continue
        candidates.append((seq(cfg, n), n))
    if not candidates:
        return
    _, best = max(candidates, key=lambda c: c[0])
    promoted_s, first_write_s = promote(cfg, best, ctx["silent_since"])
    log(
        "failover",
        old=last,
        new=best["name"],
        fault_to_promotion_s=round(promoted_s, 3),
        fault_to_first_write_s=round(first_write_s, 3) if first_write_s else None,
    )
    remember(best["name"])
    ctx["last_primary"], ctx["silent_since"] = best["name"], None


if __name__ == "__main__":
    main()
