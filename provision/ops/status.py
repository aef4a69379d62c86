"""`fab status` and `fab endpoints`: what runs where, and what a user opens."""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from provision import (
    PROJECT_ROOT,
    engine,
    inventory,
    layout,
    monitoring,
    secrets,
    topology,
)
from provision.ops import db as dbops
from provision.ops.common import load


@dataclass
class HostStatus:
    name: str
    roles: str
    reachable: bool
    services: dict[str, str]
    error: str = ""


def _probe(host: topology.Host, ep: inventory.Endpoint) -> HostStatus:
    units = sorted({u for r in ("common", *host.roles) for u in layout.UNITS_BY_ROLE.get(r, ())})
    with contextlib.ExitStack() as stack:
        try:
            remote = stack.enter_context(engine.Remote(host, ep))
        except Exception as exc:
            return HostStatus(
                host.name, ",".join(host.roles), False, {}, f"{type(exc).__name__}: {exc}"
            )
        res = remote.run(
            "for u in " + " ".join(units) + "; do if systemctl cat $u >/dev/null 2>&1; "
            'then echo "$u $(systemctl is-active $u)"; else echo "$u not-deployed"; fi; done',
            check=False,
        )
        services = dict(line.split(" ", 1) for line in res.stdout.splitlines() if " " in line)
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
        dbops.print_status(topo, eps)
    return results


def endpoint_lines(topo: topology.Topology, inventory_file: str | None = None) -> list[str]:
    where = "Vagrant's machines" if not inventory.selected(inventory_file) else "the inventory"
    lines = [f"Testbed {topo.name!r} ({where}): what to open from this machine."]
    try:
        entry = inventory.site_entry(topo, inventory_file)
    except inventory.InventoryError as exc:
        lines.append(f"  Site:           not reachable from here ({exc})")
    else:
        site = topo.site.name
        lines.append(
            f"  Site (HTTPS):   https://{site}:{entry.https}/   "
            f"(curl --resolve {site}:{entry.https}:{entry.address} https://{site}:{entry.https}/)"
        )
        lines.append(f"  Site (HTTP):    {entry.url('http')}/  (redirects to HTTPS)")
    site_ports = {topo.port("site-https"), topo.port("site-http")}
    if inventory.selected(inventory_file):
        for mon in topo.with_role("monitor")[:1]:
            address, port = inventory.service_entry(topo, mon.name, "prometheus", inventory_file)
            lines += prometheus_lines(topo, f"{address}:{port}")
        eps = inventory.load(topo, inventory_file)
        for host in topo:
            ep = eps[host.name]
            lines.append(f"  SSH {host.name + ':':<10} ssh -p {ep.port} {ep.user}@{ep.hostname}")
    else:
        for host in topo:
            for guest, local in host.forward.items():
                if host.has_role("lb") and guest in site_ports:
                    continue
                if host.has_role("monitor") and guest == topo.port("prometheus"):
                    lines += prometheus_lines(topo, f"127.0.0.1:{local}")
                    continue
                lines.append(f"  {host.name} port {guest}: http://127.0.0.1:{local}/")
        lines.append(
            "  SSH:            vagrant ssh <host>   (hosts: " + ", ".join(topo.hosts) + ")"
        )
    ca = secrets.site_ca_cert_path()
    if ca.exists():
        lines.append(f"  Site CA:        {ca}   (trust it for the site; `fab ca`)")
    return lines


def prometheus_lines(topo: topology.Topology, where: str) -> list[str]:
    """Where the dashboard and Prometheus answer, and how to log in when they ask."""
    url = f"{monitoring.scheme(topo)}://{where}"
    lines = [
        f"  Dashboard:      {url}/consoles/testbed.html",
        f"  Prometheus:     {url}/   (alerts: /alerts)",
    ]
    if monitoring.uses_tls(topo):
        secret = (
            secrets.SECRETS_DIR / f"{monitoring.password_secret(monitoring.OPERATOR_USER)}.password"
        )
        lines.append(
            f"                  user {monitoring.OPERATOR_USER}, password in "
            f"{os.path.relpath(secret, PROJECT_ROOT)}; its certificate is from the internal "
            f"CA, {os.path.relpath(secrets.SECRETS_DIR / 'ca.crt', PROJECT_ROOT)}"
        )
    return lines
