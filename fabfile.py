"""Fabric tasks of webinfra-testbed. `fab -l` lists them; `fab --help TASK` explains one.

The logic lives in provision/; this file only declares the tasks.
"""

from __future__ import annotations

from fabric import task
from invoke import Collection, Context
from invoke.exceptions import Exit

from provision import tasks

TOPOLOGY_HELP = "topology name or file (default: $TESTBED_TOPOLOGY or seed)"
INVENTORY_HELP = "YAML inventory of real servers instead of Vagrant (see docs/inventory.md)"


@task(
    help={
        "topology": TOPOLOGY_HELP,
        "inventory": INVENTORY_HELP,
        "only": "comma-separated hosts",
        "option": "override topology options for this run, e.g. reencrypt=true",
    }
)
def deploy(
    c: Context, topology: str = "", inventory: str = "", only: str = "", option: str = ""
) -> None:
    """Configure every machine, role by role; prints what changed."""
    try:
        report = tasks.deploy(topology, inventory, only, option)
    except tasks.TaskError as exc:
        raise Exit(f"deploy: {exc}", code=2) from None
    if report.failures:
        raise Exit(code=1)


@task(help={"topology": TOPOLOGY_HELP, "inventory": INVENTORY_HELP})
def status(c: Context, topology: str = "", inventory: str = "") -> None:
    """Show each machine, its roles and whether its services are up."""
    try:
        results = tasks.status(topology, inventory)
    except tasks.TaskError as exc:
        raise Exit(f"status: {exc}", code=2) from None
    if not results or not all(r.reachable for r in results):
        raise Exit(code=1)


@task(help={"topology": TOPOLOGY_HELP})
def endpoints(c: Context, topology: str = "") -> None:
    """Print the URLs and commands a user opens."""
    try:
        print("\n".join(tasks.endpoint_lines(tasks.load(topology))))
    except tasks.TaskError as exc:
        raise Exit(f"endpoints: {exc}", code=2) from None


@task(help={"topology": TOPOLOGY_HELP})
def destroy(c: Context, topology: str = "") -> None:
    """Remove every container, network and volume of the testbed."""
    try:
        tasks.destroy(topology)
    except tasks.TaskError as exc:
        raise Exit(f"destroy: {exc}", code=2) from None


@task(name="show", help={"topology": TOPOLOGY_HELP, "inventory": INVENTORY_HELP})
def firewall_show(c: Context, topology: str = "", inventory: str = "") -> None:
    """Print each host's live firewall as a matrix: which sources reach which ports."""
    try:
        tasks.firewall_show(topology, inventory)
    except tasks.TaskError as exc:
        raise Exit(f"firewall.show: {exc}", code=2) from None


@task
def ca(c: Context) -> None:
    """Print the path of the testbed CA certificate (to trust it in a browser or curl)."""
    print(tasks.ca_path())


@task(name="renew", help={"topology": TOPOLOGY_HELP, "inventory": INVENTORY_HELP})
def tls_renew(c: Context, topology: str = "", inventory: str = "") -> None:
    """Issue a new site certificate and reload HAProxy with it (no dropped connection)."""
    try:
        report = tasks.tls_renew(topology, inventory)
    except tasks.TaskError as exc:
        raise Exit(f"tls.renew: {exc}", code=2) from None
    if report.failures:
        raise Exit(code=1)


def _db(action: str, topology: str, inventory: str, **kwargs: str) -> None:
    try:
        tasks.db_task(action, topology, inventory, **kwargs)
    except tasks.TaskError as exc:
        raise Exit(f"db.{action}: {exc}", code=1) from None


DB_HELP = {"topology": TOPOLOGY_HELP, "inventory": INVENTORY_HELP}


@task(name="status", help=DB_HELP)
def db_status(c: Context, topology: str = "", inventory: str = "") -> None:
    """Show each database node: role, GTID position, threads, lag, semi-sync."""
    _db("status", topology, inventory)


@task(name="switchover", help={**DB_HELP, "target": "replica to promote (default: most advanced)"})
def db_switchover(c: Context, topology: str = "", inventory: str = "", target: str = "") -> None:
    """Planned switchover: no acknowledged write lost; prints the write pause."""
    _db("switchover", topology, inventory, target=target)


@task(name="failover", help=DB_HELP)
def db_failover(c: Context, topology: str = "", inventory: str = "") -> None:
    """Promote the most advanced replica when the primary is dead or fenced."""
    _db("failover", topology, inventory)


@task(name="rejoin", help={**DB_HELP, "host": "the node to rebuild as a replica"})
def db_rejoin(c: Context, host: str, topology: str = "", inventory: str = "") -> None:
    """Rebuild a node (e.g. a returning old primary) as a replica; its own writes are dropped."""
    _db("rejoin", topology, inventory, host=host)


@task(name="backup", help=DB_HELP)
def db_backup(c: Context, topology: str = "", inventory: str = "") -> None:
    """Take a consistent dump of the primary into .testbed/backups/ (0600)."""
    _db("backup", topology, inventory)


@task(name="restore", help={**DB_HELP, "host": "replica to restore onto", "file": "backup file"})
def db_restore(
    c: Context, host: str, file: str = "", topology: str = "", inventory: str = ""
) -> None:
    """Restore a backup onto a replica and let it catch up; compares row counts and checksums."""
    _db("restore", topology, inventory, host=host, file=file)


firewall = Collection("firewall", firewall_show)
dbns = Collection("db", db_status, db_switchover, db_failover, db_rejoin, db_backup, db_restore)
tls = Collection("tls", tls_renew)
ns = Collection(deploy, status, endpoints, destroy, ca, firewall, tls, dbns)
