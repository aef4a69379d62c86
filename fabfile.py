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


firewall = Collection("firewall", firewall_show)
tls = Collection("tls", tls_renew)
ns = Collection(deploy, status, endpoints, destroy, ca, firewall, tls)
