"""The Vagrant view of a topology: the machines the Vagrantfile creates.

The Vagrantfile runs ``python -m provision.vagrant TOPOLOGY --vagrant-json`` and builds
every machine from the JSON; without ``--vagrant-json`` the command validates the topology
file and lists its hosts (``python -m provision.vagrant --help``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from provision import PROJECT_ROOT, box, layout
from provision.topology import DEFAULT_TOPOLOGY, Topology, TopologyError, load


def vagrant_view(topology: Topology) -> dict[str, Any]:
    """What the Vagrantfile needs: machines with their networks and forwarded ports."""
    project = project_id()
    machines = []
    for host in topology:
        machines.append(
            {
                "name": host.name,
                "hostname": host.name,
                "container": f"testbed-{topology.name}-{host.name}-{project}",
                "ssh_port": host.ssh_port,
                "networks": [
                    {
                        "name": net,
                        "ip": str(addr),
                        "netmask": str(topology.networks[net].cidr.netmask),
                        "prefix": topology.networks[net].cidr.prefixlen,
                    }
                    for net, addr in host.addresses.items()
                ],
                "forwards": [{"guest": g, "host": h} for g, h in host.forward.items()],
            }
        )
    return {
        "topology": topology.name,
        "project": project,
        "checkout": str(PROJECT_ROOT),
        "docker_image": box.image_tag(),
        # A docker machine's kernel network settings are set when it is created.
        "sysctls": [f"{k}={v}" for k, v in layout.NET_SYSCTLS.items()],
        "machines": machines,
    }


def project_id() -> str:
    """A short id of this checkout, so two clones never fight over container names."""
    return hashlib.sha256(str(PROJECT_ROOT).encode()).hexdigest()[:6]


def shadowed_names(index_ids: dict[str, str]) -> dict[str, str]:
    """{machine name: the other machine that Vagrant would take it for}.

    Vagrant reads a name on its command line as an id of its global machine index first,
    and an id prefix is enough: a machine named `db1` is taken for another whose random
    index id starts with "db1" (hex: it happens about once in 150 bring-ups of hardened).
    `index_ids`: machine name -> its index id (.vagrant/machines/NAME/PROVIDER/index_uuid).
    """
    return {
        name: other
        for name in index_ids
        for other, uuid in index_ids.items()
        if other != name and uuid.lower().startswith(name.lower())
    }


def index_ids(root: Path = PROJECT_ROOT) -> dict[str, str]:
    found = {}
    for path in sorted((root / ".vagrant" / "machines").glob("*/*/index_uuid")):
        found[path.parents[1].name] = path.read_text().strip()
    return found


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m provision.vagrant",
        description="Validate a topology file and print views of it.",
    )
    parser.add_argument(
        "topology",
        nargs="?",
        default=None,
        help=f"name or path (default: $TESTBED_TOPOLOGY or {DEFAULT_TOPOLOGY})",
    )
    parser.add_argument(
        "--vagrant-json", action="store_true", help="print the machines as JSON for the Vagrantfile"
    )
    parser.add_argument(
        "--shadowed",
        action="store_true",
        help="print the machines whose index id Vagrant would take another's name for",
    )
    args = parser.parse_args(argv)
    if args.shadowed:
        print(" ".join(sorted(set(shadowed_names(index_ids()).values()))))
        return 0
    try:
        topology = load(args.topology)
    except TopologyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.vagrant_json:
        json.dump(vagrant_view(topology), sys.stdout)
        print()
        return 0
    print(f"{topology.path}: topology {topology.name!r} is valid")
    for host in topology:
        addrs = ", ".join(f"{n}={a}" for n, a in host.addresses.items())
        print(f"  {host.name:<10} {','.join(host.roles):<28} {addrs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
