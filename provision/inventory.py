"""Where each machine of a topology is reached over SSH.

Two sources, one shape (:class:`Endpoint`):

* Vagrant (the default): ``vagrant ssh-config`` through python-vagrant;
* an inventory file for real servers (``fab --inventory FILE``), YAML::

      hosts:
        lb1:  {host: 203.0.113.10, user: admin, port: 22, key: ~/.ssh/id_ed25519}
        web1: {host: 203.0.113.21, user: admin}

  Every host of the topology must be listed; an unknown name is an error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from provision import PROJECT_ROOT
from provision.topology import Topology


class InventoryError(RuntimeError):
    pass


@dataclass(frozen=True)
class Endpoint:
    name: str
    hostname: str
    port: int = 22
    user: str = "vagrant"
    key_file: str | None = None

    def connect_kwargs(self) -> dict[str, object]:
        kwargs: dict[str, object] = {"banner_timeout": 20, "auth_timeout": 20}
        if self.key_file:
            kwargs["key_filename"] = [self.key_file]
            kwargs["look_for_keys"] = False
            kwargs["allow_agent"] = False
        return kwargs


def parse_ssh_config(text: str) -> dict[str, Endpoint]:
    """Parse the output of ``vagrant ssh-config`` (all machines) into endpoints."""
    endpoints: dict[str, Endpoint] = {}
    current: dict[str, str] = {}

    def flush() -> None:
        if current:
            name = current["host"]
            endpoints[name] = Endpoint(
                name=name,
                hostname=current.get("hostname", name),
                port=int(current["port"]) if current.get("port", "").isdigit() else 22,
                user=current.get("user", "vagrant"),
                key_file=current.get("identityfile", "").strip('"') or None,
            )

    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        key = key.lower()
        if key == "host":
            flush()
            current = {"host": value.strip()}
        elif current and key not in current:
            current[key] = value.strip()
    flush()
    return endpoints


def from_vagrant(topology: Topology, root: Path = PROJECT_ROOT) -> dict[str, Endpoint]:
    import vagrant  # python-vagrant

    env = dict(os.environ, TESTBED_TOPOLOGY=topology.name)
    v = vagrant.Vagrant(root=str(root), env=env, quiet_stderr=True)
    try:
        text = v.ssh_config()
    except Exception as exc:  # python-vagrant raises CalledProcessError
        raise InventoryError(
            "`vagrant ssh-config` failed: are the machines up? Run `vagrant up` "
            f"(or ./testbed up) first. ({exc})"
        ) from None
    endpoints = parse_ssh_config(text)
    missing = [h.name for h in topology if h.name not in endpoints]
    if missing:
        raise InventoryError(
            f"Vagrant has no running machine for {', '.join(missing)}: run `vagrant up`"
        )
    return {h.name: endpoints[h.name] for h in topology}


def from_file(path: Path, topology: Topology) -> dict[str, Endpoint]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InventoryError(f"{path}: cannot read inventory: {exc}") from None
    hosts = data.get("hosts") if isinstance(data, dict) else None
    if not isinstance(hosts, Mapping):
        raise InventoryError(f"{path}: expected a top-level 'hosts' mapping")
    unknown = sorted(set(hosts) - set(topology.hosts))
    if unknown:
        raise InventoryError(
            f"{path}: hosts.{unknown[0]}: not a host of topology {topology.name!r}"
        )
    endpoints: dict[str, Endpoint] = {}
    for host in topology:
        spec = hosts.get(host.name)
        if not isinstance(spec, Mapping) or "host" not in spec:
            raise InventoryError(f"{path}: hosts.{host.name}: missing (needs at least 'host')")
        key = spec.get("key")
        port = spec.get("port", 22)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise InventoryError(f"{path}: hosts.{host.name}.port: expected 1-65535, got {port!r}")
        endpoints[host.name] = Endpoint(
            name=host.name,
            hostname=str(spec["host"]),
            port=port,
            user=str(spec.get("user", "root")),
            key_file=os.path.expanduser(str(key)) if key else None,
        )
    return endpoints


def load(topology: Topology, inventory_file: str | None = None) -> dict[str, Endpoint]:
    if inventory_file:
        return from_file(Path(inventory_file), topology)
    return from_vagrant(topology)
