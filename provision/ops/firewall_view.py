"""`fab firewall.show`: each host's live INPUT rules as a matrix of sources and ports."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from provision import engine, firewall, topology
from provision.ops.common import endpoints, load


def show(topology_name: str | None, inventory_file: str | None) -> None:
    """Print, per host, which sources its live rules let reach which ports."""
    topo = load(topology_name)
    eps = endpoints(topo, inventory_file)
    names = {str(a): h.name for h in topo for a in h.addresses.values()}

    def fetch(host: topology.Host) -> tuple[str, str]:
        try:
            with engine.Remote(host, eps[host.name]) as remote:
                out = remote.run("iptables -S INPUT").stdout
        except Exception as exc:
            return host.name, f"ERROR {type(exc).__name__}: {exc}"
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
