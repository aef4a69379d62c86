"""What the Fabric tasks do; fabfile.py only declares them."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from provision import PROJECT_ROOT, STATE_DIR, dbcluster, engine, inventory, topology
from provision.roles import ALL_ROLES

SERVICES_BY_ROLE: dict[str, tuple[str, ...]] = {
    "common": ("ssh",),
    "lb": ("haproxy",),
    "web": ("nginx",),
    "app": ("testbed-app", "db-writer"),
    "db-primary": ("mariadb", "dbcheck"),
    "db-replica": ("mariadb", "dbcheck"),
    "monitor": ("prometheus", "prometheus-alertmanager", "alert-receiver"),
    "client": (),
}
"""The units a host of each role should run once every issue's roles are deployed."""


class TaskError(RuntimeError):
    pass


def load(topology_name: str | None, options: str = "") -> topology.Topology:
    try:
        return topology.load(topology_name or None, topology.parse_option_overrides(options))
    except topology.TopologyError as exc:
        raise TaskError(str(exc)) from None


def endpoints(topo: topology.Topology, inventory_file: str | None) -> dict[str, inventory.Endpoint]:
    try:
        return inventory.load(topo, inventory_file)
    except inventory.InventoryError as exc:
        raise TaskError(str(exc)) from None


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
        f"Deploying topology {topo.name!r} ({topo.path.relative_to(PROJECT_ROOT)}) to "
        f"{len(only_hosts) or len(topo.hosts)} hosts.",
        flush=True,
    )
    defaults = topology.parse(topo.path.read_text(), topo.path).options
    changed = {k: v for k, v in topo.options.items() if defaults.get(k) != v}
    if changed:
        print(
            "Options in force (kept for later commands; set one back with --option NAME=VALUE): "
            + ", ".join(f"{k}={v}" for k, v in sorted(changed.items())),
            flush=True,
        )
    db_names = {h.name for h in topo.in_tier("db")}
    touches_db = not only_hosts or bool(db_names & set(only_hosts))
    primary = db_primary(topo, eps, strict=touches_db)
    topology.save_options(topo.name, topo.options, defaults)
    report = engine.deploy(
        topo, eps, ALL_ROLES, only_hosts=only_hosts, shared_facts={"db_primary": primary}
    )
    print(engine.summary(report), flush=True)
    return report


@dataclass
class HostStatus:
    name: str
    roles: str
    reachable: bool
    services: dict[str, str]
    error: str = ""


def _probe(host: topology.Host, ep: inventory.Endpoint) -> HostStatus:
    units = sorted({u for r in ("common", *host.roles) for u in SERVICES_BY_ROLE.get(r, ())})
    try:
        remote = engine.Remote(host, ep)
        remote.connect()
    except Exception as exc:
        return HostStatus(
            host.name, ",".join(host.roles), False, {}, f"{type(exc).__name__}: {exc}"
        )
    try:
        res = remote.run(
            "for u in " + " ".join(units) + "; do if systemctl cat $u >/dev/null 2>&1; "
            'then echo "$u $(systemctl is-active $u)"; else echo "$u not-deployed"; fi; done',
            check=False,
        )
        services = dict(line.split(" ", 1) for line in res.stdout.splitlines() if " " in line)
    finally:
        remote.close()
    return HostStatus(host.name, ",".join(host.roles), True, services)


def status(topology_name: str | None, inventory_file: str | None) -> list[HostStatus]:
    topo = load(topology_name)
    try:
        eps = inventory.load(topo, inventory_file)
    except inventory.InventoryError as exc:
        print(f"Machines are not reachable: {exc}")
        return []
    with ThreadPoolExecutor(max_workers=len(eps)) as pool:
        results = list(pool.map(lambda h: _probe(h, eps[h.name]), topo))
    print(f"Topology {topo.name!r}:")
    print(f"  {'host':<10} {'roles':<22} {'ssh':<5} services")
    for st in results:
        if not st.reachable:
            print(f"  {st.name:<10} {st.roles:<22} {'DOWN':<5} {st.error}")
            continue
        svc = "  ".join(f"{u}={'up' if s == 'active' else s}" for u, s in st.services.items())
        print(f"  {st.name:<10} {st.roles:<22} {'up':<5} {svc}")
    if topo.in_tier("db") and any(r.reachable for r in results):
        from provision import dbops

        print("Database nodes:")
        print("\n".join(dbops.status_lines(dbops.states(topo, eps))))
    return results


def endpoint_lines(topo: topology.Topology) -> list[str]:
    lines = [f"Testbed {topo.name!r}: what to open (all on this machine's loopback)."]
    for host in topo.with_role("lb")[:1]:
        https = host.forward.get(443)
        http = host.forward.get(80)
        site = topo.site.name
        if https:
            lines.append(
                f"  Site (HTTPS):   https://{site}:{https}/   "
                f"(curl --resolve {site}:{https}:127.0.0.1 https://{site}:{https}/)"
            )
        if http:
            lines.append(f"  Site (HTTP):    http://127.0.0.1:{http}/  (redirects to HTTPS)")
    for host in topo:
        for guest, local in host.forward.items():
            if host.has_role("lb") and guest in (80, 443):
                continue
            if host.has_role("monitor") and guest == 9090:
                lines.append(f"  Dashboard:      http://127.0.0.1:{local}/consoles/testbed.html")
                lines.append(f"  Prometheus:     http://127.0.0.1:{local}/   (alerts: /alerts)")
                continue
            lines.append(f"  {host.name} port {guest}: http://127.0.0.1:{local}/")
    lines.append("  SSH:            vagrant ssh <host>   (hosts: " + ", ".join(topo.hosts) + ")")
    ca = STATE_DIR / "secrets" / "ca.crt"
    if ca.exists():
        lines.append(f"  Testbed CA:     {ca}")
    return lines


def destroy(topology_name: str | None) -> None:
    topo = load(topology_name)
    env_cmd = ["env", f"TESTBED_TOPOLOGY={topo.name}", "vagrant", "destroy", "-f"]
    print("Destroying the machines (vagrant destroy -f)...", flush=True)
    subprocess.run(env_cmd, cwd=PROJECT_ROOT, check=False)
    leftovers = subprocess.run(
        [
            "docker",
            "ps",
            "-aq",
            "--filter",
            f"label=webinfra-testbed={topo.name}",
            "--filter",
            f"label=webinfra-testbed.project={topology.project_id()}",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if leftovers:
        print(f"Removing {len(leftovers)} leftover containers...", flush=True)
        subprocess.run(["docker", "rm", "-f", "-v", *leftovers], check=False, capture_output=True)
    nets = [f"vagrant_network_{n.cidr}" for n in topo.networks.values()]
    existing = subprocess.run(
        ["docker", "network", "ls", "--format", "{{.Name}}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    for net in nets:
        if net in existing:
            res = subprocess.run(
                ["docker", "network", "rm", net], capture_output=True, text=True, check=False
            )
            if res.returncode != 0:
                print(
                    f"Could not remove docker network {net}: {res.stderr.strip()}", file=sys.stderr
                )
    print("Destroyed: no testbed container or network is left.")


def last_report() -> dict[str, object]:
    return json.loads((STATE_DIR / "last-deploy.json").read_text())


def firewall_show(topology_name: str | None, inventory_file: str | None) -> None:
    """Print, per host, which sources its live rules let reach which ports."""
    from provision import firewall

    topo = load(topology_name)
    eps = endpoints(topo, inventory_file)
    names = {str(a): h.name for h in topo for a in h.addresses.values()}

    def fetch(host: topology.Host) -> tuple[str, str]:
        remote = engine.Remote(host, eps[host.name])
        try:
            remote.connect()
            out = remote.run("iptables -S INPUT; echo; iptables -S INPUT | head -1").stdout
        except Exception as exc:
            return host.name, f"ERROR {type(exc).__name__}: {exc}"
        finally:
            remote.close()
        return host.name, out

    with ThreadPoolExecutor(max_workers=len(eps)) as pool:
        results = dict(pool.map(fetch, topo))
    for host in topo:
        out = results[host.name]
        if out.startswith("ERROR"):
            print(f"{host.name}: {out}")
            continue
        policy = out.splitlines()[0] if out else "?"
        print(f"{host.name}  ({policy.replace('-P INPUT ', 'default ')})")
        by_port: dict[str, list[str]] = {}
        for source, port, _ in firewall.parse_live_accepts(out):
            ip = source.split("/")[0]
            label = names.get(ip, "management" if port == "22/tcp" else source)
            by_port.setdefault(port, []).append(f"{label} ({source})")
        if not by_port:
            print("    (nothing accepted)")
        for port, sources in sorted(by_port.items(), key=lambda kv: int(kv[0].split("/")[0])):
            print(f"    {port:<9} <- {', '.join(sources)}")


def ca_path() -> str:
    from provision import secrets

    return str(secrets.ca_cert_path())


def tls_renew(topology_name: str | None, inventory_file: str | None) -> engine.Report:
    """Issue a new site certificate and install it on the load balancers (HAProxy reload)."""
    from provision.roles import lb

    topo = load(topology_name)
    old = lb.site_certificate(topo).cert.serial_number
    new = lb.site_certificate(topo, renew=True).cert
    print(
        f"Issued a new certificate for {topo.site.name}: serial {old:x} -> {new.serial_number:x}, "
        f"valid until {new.not_valid_after_utc:%Y-%m-%d}.",
        flush=True,
    )
    eps = endpoints(topo, inventory_file)
    lbs = [h.name for h in topo.with_role("lb")]
    report = engine.deploy(topo, eps, [lb.ROLE], only_hosts=lbs)
    print(engine.summary(report), flush=True)
    return report


def db_states(
    topo: topology.Topology, eps: dict[str, inventory.Endpoint]
) -> dict[str, dbcluster.NodeState]:
    """Each db host's replication state (kept here for callers; see dbcluster.states)."""
    return dbcluster.states(topo, eps)


def db_primary(
    topo: topology.Topology, eps: dict[str, inventory.Endpoint], strict: bool = True
) -> str:
    """The primary the deploy keeps (or, with no writable node, the one it may unfence).

    strict: refuse, naming the hosts and what to run, rather than pick a node that could
    lack acknowledged writes (a node down, or holding transactions the others lack)."""
    if not topo.in_tier("db"):
        return ""
    try:
        primary = dbcluster.choose_primary(topo, db_states(topo, eps))
    except engine.StepError as exc:
        if not strict:
            return ""
        raise TaskError(str(exc)) from None
    default = topo.with_role("db-primary")[0].name
    if primary != default:
        print(f"Database primary is {primary} (the topology starts it on {default}).", flush=True)
    return primary


def db_task(
    action: str, topology_name: str | None, inventory_file: str | None, **kwargs: str | bool
) -> None:
    """Run one of provision.dbops' operations and turn its errors into TaskError."""
    from provision import dbops

    topo = load(topology_name)
    eps = endpoints(topo, inventory_file)
    try:
        if action == "status":
            print("Database nodes:")
            print("\n".join(dbops.status_lines(dbops.states(topo, eps))))
        elif action == "switchover":
            dbops.switchover(topo, eps, str(kwargs.get("target", "")))
        elif action == "failover":
            dbops.failover(topo, eps, force=bool(kwargs.get("force")))
        elif action == "rejoin":
            dbops.rejoin(topo, eps, str(kwargs["host"]), discard=bool(kwargs.get("discard")))
        elif action == "backup":
            dbops.backup(topo, eps)
        elif action == "restore":
            dbops.restore(topo, eps, str(kwargs["host"]), str(kwargs.get("file", "")))
        else:
            raise TaskError(f"unknown database action {action!r}")
    except (dbops.DbOpError, engine.StepError) as exc:
        raise TaskError(str(exc)) from None
