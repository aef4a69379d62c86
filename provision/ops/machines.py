"""The machines themselves: `fab destroy` (every container, network and volume), and
`fab inventory` (an inventory file that reaches the running machines without Vagrant)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from provision import PROJECT_ROOT, STATE_DIR, inventory, topology, vagrant
from provision.ops.common import TaskError, load


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
            f"label=webinfra-testbed.project={vagrant.project_id()}",
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
    running = STATE_DIR / "running-topology"  # written by ./testbed up
    with contextlib.suppress(OSError):
        if running.read_text().strip() == topo.name:
            running.unlink()
    print("Destroyed: no testbed container or network is left.")


def export_inventory(topo: topology.Topology) -> str:
    """An inventory (YAML) for the running docker-provider machines, reached without
    Vagrant: each container's own address and sshd on port 22, Vagrant's key for the
    login, `docker stop`/`docker start` as power commands, and the site through the ports
    docker publishes on 127.0.0.1 (the site certificate names 127.0.0.1 and the topology's
    addresses, not the containers' docker-bridge addresses)."""
    try:
        eps = inventory.from_vagrant(topo)
    except inventory.InventoryError as exc:
        raise TaskError(str(exc)) from None
    view = {m["name"]: m for m in vagrant.vagrant_view(topo)["machines"]}
    hosts: dict[str, dict[str, object]] = {}
    known_lines: list[str] = []
    for host in topo:
        container = view[host.name]["container"]
        res = subprocess.run(
            ["docker", "inspect", "--format", "{{json .NetworkSettings.Networks}}", container],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            raise TaskError(
                f"{host.name}: `docker inspect {container}` failed: {res.stderr.strip()} "
                "(fab inventory exports the docker provider's machines only)"
            )
        networks = json.loads(res.stdout)
        bridge = (networks.get("bridge") or {}).get("IPAddress")
        if not bridge:
            raise TaskError(f"{host.name}: container {container} has no address on docker's bridge")
        # The machine's host keys, read through docker (not over the network they secure).
        keys = subprocess.run(
            ["docker", "exec", container, "sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub"],
            capture_output=True,
            text=True,
            check=False,
        )
        if keys.returncode != 0 or not keys.stdout.strip():
            raise TaskError(f"{host.name}: cannot read its SSH host keys: {keys.stderr.strip()}")
        known_lines += [
            f"{bridge} {' '.join(line.split()[:2])}" for line in keys.stdout.splitlines() if line
        ]
        ep = eps[host.name]
        hosts[host.name] = {
            "host": bridge,
            "port": 22,
            "user": ep.user,
            "key": ep.key_file,
            "power": {
                "stop": f"docker stop -t 10 {container}",
                "start": f"docker start {container}",
            },
        }
    try:  # docker's published ports, or the balancers' floating address
        site = inventory.vagrant_site_entry(topo)
    except inventory.InventoryError as exc:
        raise TaskError(str(exc)) from None
    known_hosts = inventory.KNOWN_HOSTS_DIR / f"inventory-{topo.name}"
    write_private(str(known_hosts), "".join(f"{line}\n" for line in known_lines))
    data = {
        "hosts": hosts,
        "site": {"address": site.address, "https": site.https, "http": site.http},
        # Every server's SSH host key: a deploy refuses a server whose key is not here.
        "known_hosts": str(known_hosts),
    }
    header = (
        f"# Inventory of the running machines of topology {topo.name}, reached without Vagrant\n"
        "# (written by `fab inventory`; docs/inventory.md). Addresses change when the\n"
        "# machines are re-created: write it again after `./testbed up`.\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False)


def write_private(path: str, text: str) -> None:
    """Write `text` to `path`, readable by its owner only (it names private key files)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    target.chmod(0o600)
