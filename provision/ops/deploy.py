"""`fab deploy`: choose the database primary safely, then run every role."""

from __future__ import annotations

import json
import os

from provision import PROJECT_ROOT, STATE_DIR, dbcluster, engine, inventory, topology
from provision.ops.common import TaskError, endpoints, load
from provision.roles import ALL_ROLES

LAST_REPORT = STATE_DIR / "last-deploy.json"
"""What the last deploy did (JSON): read by `fab status` users and the idempotence test."""


def deploy(
    topology_name: str | None, inventory_file: str | None, only: str, options: str = ""
) -> engine.Report:
    topo = load(topology_name, options)
    only_hosts = [h for h in only.split(",") if h]
    unknown = [h for h in only_hosts if h not in topo.hosts]
    if unknown:
        raise TaskError(f"--only: {', '.join(unknown)} not in topology {topo.name!r}")
    eps = endpoints(topo, inventory_file)
    print(
        f"Deploying topology {topo.name!r} ({os.path.relpath(topo.path, PROJECT_ROOT)}) to "
        f"{len(only_hosts) or len(topo.hosts)} hosts.",
        flush=True,
    )
    defaults = topology.parse(topo.path.read_text(), topo.path).options
    changed = {k: v for k, v in {**topo.options, **topo.scaled}.items() if defaults.get(k) != v}
    if changed:
        print(
            "Options in force (kept for later commands; set one back with --option NAME=VALUE): "
            + ", ".join(f"{k}={v}" for k, v in sorted(changed.items())),
            flush=True,
        )
    db_names = {h.name for h in topo.in_tier("db")}
    touches_db = not only_hosts or bool(db_names & set(only_hosts))
    primary = db_primary(topo, eps, strict=touches_db)
    topology.save_options(topo.name, {**topo.options, **topo.scaled}, defaults)
    report = engine.deploy(
        topo,
        eps,
        ALL_ROLES,
        only_hosts=only_hosts,
        shared_facts={"db_primary": primary},
        record=LAST_REPORT,
    )
    print(engine.summary(report), flush=True)
    return report


def last_report() -> dict[str, object]:
    return json.loads(LAST_REPORT.read_text())


def db_primary(
    topo: topology.Topology, eps: dict[str, inventory.Endpoint], strict: bool = True
) -> str:
    """The primary the deploy keeps (or, with no writable node, the one it may unfence).

    strict: refuse, naming the hosts and what to run, rather than pick a node that could
    lack acknowledged writes (a node down, or holding transactions the others lack)."""
    if not topo.in_tier("db"):
        return ""
    try:
        primary = dbcluster.choose_primary(topo, dbcluster.states(topo, eps))
    except engine.StepError as exc:
        if not strict:
            return ""
        raise TaskError(str(exc)) from None
    default = topo.with_role("db-primary")[0].name
    if primary != default:
        print(f"Database primary is {primary} (the topology starts it on {default}).", flush=True)
    return primary
