"""The `dbwatch` role (monitor hosts): automatic, fenced database failover.

On when the topology option `auto_failover` is true (seed: off, so failover is the
operator's `fab db.failover`; try it with `fab deploy --option auto_failover=true`).
When off, the service is stopped and disabled. The logic is in files/dbwatch.py.
"""

from __future__ import annotations

import json

from provision import dbcluster, layout, secrets
from provision.engine import (
    Command,
    File,
    HostContext,
    Packages,
    Role,
    Service,
    Step,
    render,
    restart_handler,
    role_script,
    system_user,
)

HOME = "/etc/webinfra-testbed"
SCRIPT = "/usr/local/lib/webinfra-testbed/dbwatch.py"
CONFIG = f"{HOME}/dbwatch.json"
CLIENT_CNF = f"{HOME}/dbwatch.cnf"
CONFIRM_SECONDS = 0.5
"""How long the primary's own agent must say MariaDB is down (gone, or restarting after a
crash) before that counts: two rounds. "Read-only" needs three times as long."""
INTERVAL_SECONDS = 0.5
FENCE_MARGIN_SECONDS = 1.5
"""Waited past the old primary's lease, for the writer endpoints' checks and clock skew."""
WRITER_CHECK_WINDOW_SECONDS = dbcluster.ENDPOINT_DRAIN_SECONDS
"""Waited after an agent confirmed a fence, until no writer endpoint sends to the old primary."""
SPLIT_BRAIN_GRACE_SECONDS = 2.0
WEDGED_SECONDS = 15.0
"""How long the primary's own agent must say MariaDB does not answer (its process is there,
but no query returns) before that counts as dead, even while replicas still hold a
connection to it: a wedged server keeps its replication threads, and their heartbeats, but
takes no write (the split drill found one, after a replica reconnected)."""


def steps(ctx: HostContext) -> list[Step]:
    topo = ctx.topology
    if not topo.option("auto_failover", False):
        return [
            Command(
                "Ensure automatic failover is off (topology option auto_failover).",
                check="! systemctl is-active --quiet dbwatch && "
                "! systemctl is-enabled --quiet dbwatch",
                # Its memory of the primary and epoch goes too: it would be stale by the
                # time automatic failover is turned on again.
                run="systemctl disable --now dbwatch 2>/dev/null || true; "
                f"rm -f {layout.DBWATCH_STATE}",
            )
        ]
    nodes = [
        {"name": h.name, "address": dbcluster.node_address(topo, h)}
        for h in dbcluster.db_hosts(topo)
    ]
    config = {
        "_managed_by": "webinfra-testbed, from provision/roles/dbwatch (local edits are lost)",
        "nodes": nodes,
        "check_port": topo.port("dbcheck"),
        "client_cnf": CLIENT_CNF,
        "confirm_seconds": CONFIRM_SECONDS,
        "wedged_seconds": WEDGED_SECONDS,
        "interval_seconds": INTERVAL_SECONDS,
        "lease_seconds": dbcluster.LEASE_SECONDS,
        "fence_margin": FENCE_MARGIN_SECONDS,
        "writer_check_window": WRITER_CHECK_WINDOW_SECONDS,
        "split_brain_grace": SPLIT_BRAIN_GRACE_SECONDS,
        "token": secrets.password(layout.DBWATCH_TOKEN),
    }
    return [
        Packages(("mariadb-client",), name="Ensure the MariaDB client is installed."),
        system_user("dbwatch"),
        role_script(
            "dbwatch",
            "dbwatch.py",
            SCRIPT,
            "dbwatch",
            "Ensure the failover controller is installed.",
        ),
        File(
            CONFIG,
            json.dumps(config, indent=2) + "\n",
            mode="0600",
            owner="dbwatch",
            group="dbwatch",
            notify=["restart dbwatch"],
            name="Ensure the failover controller knows every database node.",
        ),
        *dbcluster.client_ca_steps(topo, "dbwatch"),
        File(
            CLIENT_CNF,
            render(
                "dbwatch",
                "client.cnf.j2",
                ca=layout.DB_CLIENT_CA if dbcluster.uses_tls(topo) else "",
                user=layout.FAILOVER_USER,
                port=topo.port("mysql"),
                password=secrets.password("db-failover"),
            ),
            mode="0600",
            owner="dbwatch",
            group="dbwatch",
            notify=["restart dbwatch"],
            name="Ensure the controller's database credentials are in place (0600).",
        ),
        File(
            "/etc/systemd/system/dbwatch.service",
            render("dbwatch", "dbwatch.service.j2", script=SCRIPT, config=CONFIG),
            notify=["restart dbwatch"],
            name="Ensure the controller's unit is up to date.",
        ),
        Service("dbwatch", name="Ensure the failover controller is running."),
    ]


ROLE = Role("dbwatch", "monitor", steps, handlers=[restart_handler("dbwatch")])
