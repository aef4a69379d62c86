"""Fabric tasks of webinfra-testbed. `fab -l` lists them; `fab --help TASK` explains one.

The logic lives in provision/ops/ (one module per concern); this file only declares the
tasks. Every task exits the same way:

  0  done;
  1  it ran and found a failure (a deploy step failed, a drill's invariant broke,
     a host is down in `fab status`);
  2  it could not run, or refused to (bad input, a host unreachable before anything
     started, a database operation that would lose writes); the message names the host,
     the input or the step.

`--inventory FILE` (or $TESTBED_INVENTORY) reaches real servers instead of Vagrant's machines
(docs/inventory.md).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from fabric import task
from invoke import Collection, Context
from invoke.exceptions import Exit

from provision import secrets, site
from provision.engine import StepError
from provision.inventory import InventoryError
from provision.ops import db as dbops
from provision.ops import deploy as deploy_ops
from provision.ops import firewall_view, machines
from provision.ops import load as load_ops
from provision.ops import logs as logs_ops
from provision.ops import status as status_ops
from provision.ops import tls as tls_ops
from provision.ops.common import TaskError, endpoints, load
from provision.power import PowerError

TOPOLOGY_HELP = "topology name or file (default: $TESTBED_TOPOLOGY or seed)"
INVENTORY_HELP = (
    "YAML inventory of real servers instead of Vagrant (default: $TESTBED_INVENTORY; "
    "see docs/inventory.md)"
)
CANNOT_RUN = (TaskError, StepError, InventoryError, PowerError)

F = TypeVar("F", bound=Callable[..., Any])


def exits(name: str) -> Callable[[F], F]:
    """Turn an error that stopped the task before or while it ran into exit code 2,
    with the task's name in front of the message."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except CANNOT_RUN as exc:
                raise Exit(f"{name}: {exc}", code=2) from None

        return run  # type: ignore[return-value]

    return wrap


@task(
    help={
        "topology": TOPOLOGY_HELP,
        "inventory": INVENTORY_HELP,
        "only": "comma-separated hosts",
        "option": "override topology options for this run, e.g. reencrypt=true",
    }
)
@exits("deploy")
def deploy(
    c: Context, topology: str = "", inventory: str = "", only: str = "", option: str = ""
) -> None:
    """Configure every machine, role by role; prints what changed."""
    report = deploy_ops.deploy(topology, inventory, only, option)
    if report.failures:
        raise Exit(code=1)


@task(help={"topology": TOPOLOGY_HELP, "inventory": INVENTORY_HELP})
@exits("status")
def status(c: Context, topology: str = "", inventory: str = "") -> None:
    """Show each machine, its roles and whether its services are up."""
    results = status_ops.status(topology, inventory)
    if not results or not all(r.reachable for r in results):
        raise Exit(code=1)


@task(name="endpoints", help={"topology": TOPOLOGY_HELP, "inventory": INVENTORY_HELP})
@exits("endpoints")
def endpoints_(c: Context, topology: str = "", inventory: str = "") -> None:
    """Print the URLs and commands a user opens."""
    print("\n".join(status_ops.endpoint_lines(load(topology), inventory or None)))


@task(
    positional=["spec"],
    help={
        "spec": "TIER=COUNT, such as web=3 (a host group with `count:` in the topology)",
        "topology": TOPOLOGY_HELP,
        "inventory": INVENTORY_HELP,
    },
)
@exits("scale")
def scale(c: Context, spec: str, topology: str = "", inventory: str = "") -> None:
    """Grow or shrink a counted tier under load: fab scale web=3.

    Out: creates the new machines (vagrant up; with an inventory they must be in it), then
    deploys every host, so the balancers, firewalls and Prometheus take them in. In:
    drains the servers that go on every balancer (HAProxy admin socket), waits until no
    session is left, removes their machines and deploys without them. The count is kept
    with the deploy's options; `fab scale web=<the file's count>` goes back."""
    from provision.ops import scale as scale_op

    scale_op.scale(spec, topology or None, inventory or None, lambda line: print(line, flush=True))


@task(help={"topology": TOPOLOGY_HELP})
@exits("destroy")
def destroy(c: Context, topology: str = "") -> None:
    """Remove every container, network and volume of the testbed."""
    machines.destroy(topology)


@task(
    name="inventory",
    help={
        "topology": TOPOLOGY_HELP,
        "out": "file to write (default: print it)",
    },
)
@exits("inventory")
def inventory_(c: Context, topology: str = "", out: str = "") -> None:
    """Write an inventory file that reaches the running machines without Vagrant.

    Each host by its own address and sshd (not Vagrant's forwarded port), the site where
    this machine reaches it (docker's published ports on 127.0.0.1, or the balancers'
    floating address), and power commands that stop and start each machine. Then
    `fab deploy --inventory FILE` and `pytest acceptance/ --inventory FILE` run exactly as
    they would against real servers (docs/inventory.md)."""
    text = machines.export_inventory(load(topology))
    if out:
        machines.write_private(out, text)
        print(f"Wrote {out} (mode 0600).")
    else:
        print(text, end="")


@task(name="show", help={"topology": TOPOLOGY_HELP, "inventory": INVENTORY_HELP})
@exits("firewall.show")
def firewall_show(c: Context, topology: str = "", inventory: str = "") -> None:
    """Print each host's live firewall as a matrix: which sources reach which ports."""
    firewall_view.show(topology, inventory)


@task(
    name="logs",
    help={
        "host": "only this host's logs (default: every host's)",
        "unit": "only this program's lines: the syslog tag before [pid] and the colon, e.g. "
        "nginx, haproxy, sshd, mariadbd, gunicorn, ulogd (the firewall's drops)",
        "since": "how far back: 30s, 10m, 2h, 1d, an RFC 3339 time, or all "
        f"(default {logs_ops.DEFAULT_SINCE})",
        "grep": "only lines whose message matches this Python regular expression",
        "topology": TOPOLOGY_HELP,
        "inventory": INVENTORY_HELP,
    },
)
@exits("logs")
def logs_(
    c: Context,
    host: str = "",
    unit: str = "",
    since: str = logs_ops.DEFAULT_SINCE,
    grep: str = "",
    topology: str = "",
    inventory: str = "",
) -> None:
    """Print every host's logs as the monitor keeps them (/var/log/remote), filtered.

    Each line is prefixed by its host, oldest first: fab logs --host web1 --unit nginx
    --since 2h --grep ' 5[0-9][0-9] '. Read over SSH from the monitor, where rsyslog
    receives them over TLS from every host that shares a network with it
    (docs/monitoring.md, "Central logs")."""
    printed = logs_ops.logs(topology, inventory, host, unit, since, grep)
    if not printed:
        print("logs: no line matches.", file=sys.stderr)


@task(help={"topology": TOPOLOGY_HELP})
@exits("ca")
def ca(c: Context, topology: str = "") -> None:
    """Print the path of the site CA certificate, to trust in a browser or curl. It can vouch
    only for the site's names and the testbed's addresses (name constraints, one year)."""
    site.authority(load(topology))
    print(secrets.site_ca_cert_path())


@task(name="renew", help={"topology": TOPOLOGY_HELP, "inventory": INVENTORY_HELP})
@exits("tls.renew")
def tls_renew(c: Context, topology: str = "", inventory: str = "") -> None:
    """Issue a new site certificate and reload HAProxy with it (no dropped connection)."""
    report = tls_ops.tls_renew(topology, inventory)
    if report.failures:
        raise Exit(code=1)


DB_HELP = {"topology": TOPOLOGY_HELP, "inventory": INVENTORY_HELP}


@task(name="status", help=DB_HELP)
@exits("db.status")
def db_status(c: Context, topology: str = "", inventory: str = "") -> None:
    """Show each database node: role, GTID position, threads, lag, semi-sync."""
    topo = load(topology)
    dbops.print_status(topo, endpoints(topo, inventory))


@task(name="switchover", help={**DB_HELP, "target": "replica to promote (default: most advanced)"})
@exits("db.switchover")
def db_switchover(c: Context, topology: str = "", inventory: str = "", target: str = "") -> None:
    """Planned switchover: no acknowledged write lost; prints the write pause."""
    topo = load(topology)
    dbops.switchover(topo, endpoints(topo, inventory), target)


@task(
    name="failover",
    help={
        **DB_HELP,
        "force": "go on although the old primary cannot be fenced over SSH, or automatic "
        "failover is on (you vouch that it is down)",
    },
)
@exits("db.failover")
def db_failover(c: Context, topology: str = "", inventory: str = "", force: bool = False) -> None:
    """Fence the lost primary (STONITH over SSH), then promote the most advanced replica.

    With every node fenced (read-only, following no one: no replica to promote), promote
    the node that holds every transaction any other holds, and only with --force; then
    `fab db.rejoin` the others."""
    topo = load(topology)
    dbops.failover(topo, endpoints(topo, inventory), force=force)


@task(
    name="rejoin",
    help={
        **DB_HELP,
        "host": "the node to rebuild as a replica",
        "discard": "throw away the transactions it has that the primary lacks (listed first)",
    },
)
@exits("db.rejoin")
def db_rejoin(
    c: Context, host: str, topology: str = "", inventory: str = "", discard: bool = False
) -> None:
    """Rebuild a node (e.g. a returning old primary) as a replica of the current primary."""
    topo = load(topology)
    dbops.rejoin(topo, endpoints(topo, inventory), host, discard=discard)


@task(name="backup", help=DB_HELP)
@exits("db.backup")
def db_backup(c: Context, topology: str = "", inventory: str = "") -> None:
    """Take a consistent dump of the primary into .testbed/backups/ (0600)."""
    topo = load(topology)
    dbops.backup(topo, endpoints(topo, inventory))


@task(name="restore", help={**DB_HELP, "host": "replica to restore onto", "file": "backup file"})
@exits("db.restore")
def db_restore(
    c: Context, host: str, file: str = "", topology: str = "", inventory: str = ""
) -> None:
    """Restore a backup onto a replica and let it catch up; compares row counts and checksums."""
    topo = load(topology)
    dbops.restore(topo, endpoints(topo, inventory), host, file)


@task(
    name="load",
    help={
        "workers": "Locust processes making requests (default 1: one plain Locust process); "
        "N > 1: a Locust master on 127.0.0.1 and N `locust --worker` processes on this "
        "machine, which share the users (Locust's own distributed engine)",
        "users": "simulated users in all, shared among the workers (default 10; at least "
        "--workers)",
        "rate": "fixed requests/s per user (qps.py's LOAD_RATE); total = users x rate "
        "(default 2); a rate no user can reach, such as 1000, means as fast as answered",
        "seconds": "run time in seconds (default 30)",
        "out": "prefix of Locust's reports: PREFIX.html, PREFIX_stats.csv, "
        "PREFIX_stats_history.csv, PREFIX_failures.csv, PREFIX.json (final counts), "
        "PREFIX_workers.json (N > 1: each worker's requests) (default "
        ".testbed/loadtests/load-<UTC time>)",
        "connect_timeout": "seconds the master waits for all its workers to connect (default 30)",
        "topology": TOPOLOGY_HELP,
        "inventory": INVENTORY_HELP,
    },
)
@exits("load")
def load_(
    c: Context,
    workers: int = 1,
    users: int = 10,
    rate: float = 2.0,
    seconds: int = 30,
    out: str = "",
    connect_timeout: int = 30,
    topology: str = "",
    inventory: str = "",
) -> None:
    """Load the site with qps.py's personas, headless: fab load --workers 4 --users 200.

    Aims at the site's entry from this machine (seed: https://127.0.0.1:8443) and nothing
    else, after checking that it answers. Prints Locust's progress, then one line: requests,
    failures, requests/s and, with --workers N > 1, how many workers reported requests.
    Every Locust process it started is stopped before it returns, whatever happened.
    Exit 0: done; 1: Locust's thresholds (loadtests/README.md) failed, no request was made,
    or a worker sent none; 2: could not run (bad option, site down, workers not connected).
    """
    plan = load_ops.plan(
        workers, users, rate, seconds, out, topology, inventory, connect_timeout=connect_timeout
    )
    code, summary = load_ops.run(plan, lambda line: print(line, flush=True))
    print(summary.line(), flush=True)
    problems = summary.problems()
    if problems:
        raise Exit(f"load: {'; '.join(problems)}", code=1)
    if code != 0:
        raise Exit(f"load: Locust exited with code {code} (see its output above)", code=1)


@task(
    positional=["fault"],
    help={
        "fault": "kill | stop | pause | partition | loss | delay | deploy (see above)",
        "target": "a host (lb1, web1, ...) or a role resolved now: db-primary, db-replica, "
        "web, app, lb (required)",
        "duration": "seconds the fault is held before the heal (default 8)",
        "users": "Locust users (default 10)",
        "rate": "requests/s per user, fixed; total = users x rate (default 2)",
        "peers": "partition/loss/delay: comma-separated hosts or roles to cut the target "
        "from (default: db target -> the other db nodes and the monitor; web/app -> the "
        "load balancers; lb -> the web hosts)",
        "side": "partition/loss: hosts or roles cut off together with the target, a split in "
        "two groups (e.g. --target db-primary --side db3 --peers monitor,db2); the side "
        "keeps talking to itself",
        "loss": "loss: share of packets dropped, 0 < P < 1 (default 0.3)",
        "warmup": "seconds of load before the fault (default 8)",
        "settle": "seconds of load kept after the cluster settled (default 10)",
        "topology": TOPOLOGY_HELP,
        "inventory": INVENTORY_HELP,
    },
)
def drill(
    c: Context,
    fault: str,
    target: str = "",
    duration: float = 8.0,
    users: int = 10,
    rate: float = 2.0,
    peers: str = "",
    loss: float = 0.3,
    warmup: float = 8.0,
    settle: float = 10.0,
    topology: str = "",
    inventory: str = "",
    side: str = "",
) -> None:
    """Run a fault drill under load, heal it, check the history: fab drill FAULT --target T.

    Starts Locust (qps.py's personas, fixed rate), warms up, injects FAULT on the target,
    holds it, heals it (always, Ctrl-C included), waits until exactly one database node is
    writable for 3 s (at most 60 s), keeps the load --settle s more, collects the final
    database state and runs the checker. Writes .testbed/drills/<UTC time>-<fault>-<host>/
    (history.jsonl, events.jsonl, samples.jsonl, final.json, drill.json, locust.html and
    CSV, summary.md, timeline.png). Exit 0: PASS; 1: FAIL; 2: could not run (the message
    names the host and the step).

    Faults:
      kill       SIGKILL the target's services (db: mariadbd; web/app: nginx and gunicorn,
                 unit testbed-app; lb: haproxy); heal: systemctl start them.
      stop       vagrant halt HOST, then vagrant up HOST (both timed); with an
                 inventory, its power.stop and power.start commands.
      pause      SIGSTOP (db: mariadbd only; web/app: nginx and gunicorn; lb: haproxy);
                 heal: SIGCONT.
      partition  iptables DROP between the target and --peers, both directions, in a DRILL
                 chain on the target (SSH untouched); probes prove the cut and the heal.
                 With --side, more hosts are cut off with the target (two groups).
      loss       the same links, random drop of --loss of the packets.
      delay      tc netem: this kernel has none, so it says so and exits 2.
      deploy     stop the target's MariaDB, run `fab deploy` as a user would, record its
                 exit code, start MariaDB again.

    A host that runs both web and database roles (seed's web1, web2) is hit as a web host;
    aim at its database with --target db-primary or db-replica.
    Example: fab drill pause --target db-primary --duration 10
    """
    from provision.drills import runner

    try:
        passed = runner.run(
            fault,
            target,
            duration=duration,
            users=users,
            rate=rate,
            peers=peers,
            loss=loss,
            warmup=warmup,
            settle=settle,
            topology=topology,
            inventory=inventory,
            side=side,
        )
    except runner.DrillError as exc:
        raise Exit(f"drill: {exc}", code=2) from None
    if not passed:
        raise Exit(code=1)


firewall = Collection("firewall", firewall_show)
dbns = Collection("db", db_status, db_switchover, db_failover, db_rejoin, db_backup, db_restore)
tls = Collection("tls", tls_renew)
ns = Collection(
    deploy,
    status,
    endpoints_,
    inventory_,
    scale,
    destroy,
    ca,
    logs_,
    load_,
    drill,
    firewall,
    tls,
    dbns,
)
