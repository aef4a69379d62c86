"""Where each machine of a topology is reached over SSH.

Two sources, one shape (:class:`Endpoint`):

* Vagrant (the default): ``vagrant ssh-config`` through python-vagrant;
* an inventory file for real servers (``fab --inventory FILE``, or ``$TESTBED_INVENTORY``),
  YAML (docs/inventory.md)::

      hosts:
        lb1:  {host: 203.0.113.10, user: admin, port: 22, key: ~/.ssh/id_ed25519}
        web1: {host: 203.0.113.21, user: admin,
               power: {stop: "virsh shutdown web1", start: "virsh start web1"}}
      site: {address: 203.0.113.10}   # optional: where this machine reaches the site

  Every host of the topology must be listed; an unknown name is an error. ``power`` (optional)
  holds the commands, run on this machine, that stop and start a server: the machine-level
  faults (`fab drill stop`, the reboot test) need them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from provision import PROJECT_ROOT, STATE_DIR
from provision.topology import Topology

INVENTORY_ENV = "TESTBED_INVENTORY"
"""An inventory file every command (fab, pytest acceptance/, bench/) uses when given none."""


class InventoryError(RuntimeError):
    pass


def selected(inventory_file: str | None = None) -> str | None:
    """The inventory file in force: the argument, else $TESTBED_INVENTORY, else None (Vagrant)."""
    return inventory_file or os.environ.get(INVENTORY_ENV) or None


@dataclass(frozen=True)
class Endpoint:
    name: str
    hostname: str
    port: int = 22
    user: str = "vagrant"
    key_file: str | None = None
    power: tuple[tuple[str, str], ...] = ()
    """("stop", command), ("start", command): how this machine stops and starts the server."""
    known_hosts: str | None = None
    """The known_hosts file its SSH host key must be in (None: ~/.ssh/known_hosts)."""
    record_new_key: bool = False
    """A testbed machine: its key is recorded there at first contact (an inventory's
    servers must be known beforehand)."""

    def power_command(self, action: str) -> str | None:
        return dict(self.power).get(action)

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


SSH_CONFIG_CACHE = STATE_DIR / "vagrant-ssh-config.json"


def _machine_ids(root: Path) -> dict[str, str]:
    """Vagrant's id of each machine it has created (.vagrant/machines/NAME/PROVIDER/id)."""
    return {
        p.parent.parent.name: p.read_text().strip()
        for p in sorted((root / ".vagrant" / "machines").glob("*/*/id"))
        if p.read_text().strip()
    }


def vagrant_ssh_config(topology: Topology, root: Path = PROJECT_ROOT) -> str:
    """`vagrant ssh-config` of every machine, kept while the same machines exist.

    Asking Vagrant costs about 5 s (Ruby, its plugins, the Vagrantfile); the answer changes
    only when a machine is created or destroyed, which changes Vagrant's machine ids, the
    cache's key. A machine halted and started again keeps its id, port and key."""
    import vagrant  # python-vagrant

    key = hashlib.sha256(
        json.dumps([topology.name, str(root), sorted(_machine_ids(root).items())]).encode()
    ).hexdigest()
    cache = SSH_CONFIG_CACHE if root == PROJECT_ROOT else None
    try:
        kept = json.loads(cache.read_text()) if cache else {}
    except (OSError, ValueError):
        kept = {}
    text = str(kept.get("ssh_config", "")) if kept.get("key") == key else ""
    if text and all(h.name in parse_ssh_config(text) for h in topology):
        return text
    env = dict(os.environ, TESTBED_TOPOLOGY=topology.name)
    v = vagrant.Vagrant(root=str(root), env=env, quiet_stderr=True)
    try:
        text = v.ssh_config()
    except Exception as exc:  # python-vagrant raises CalledProcessError
        raise InventoryError(
            "`vagrant ssh-config` failed: are the machines up? Run `vagrant up` "
            f"(or ./testbed up) first. ({exc})"
        ) from None
    if cache:  # replaced in one step: a process reading it never sees half a file
        cache.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=".ssh-config.")
        with os.fdopen(fd, "w") as out:
            json.dump({"key": key, "ssh_config": text}, out)
        os.replace(tmp, cache)
    return text


def from_vagrant(topology: Topology, root: Path = PROJECT_ROOT) -> dict[str, Endpoint]:
    text = vagrant_ssh_config(topology, root)
    endpoints = parse_ssh_config(text)
    missing = [h.name for h in topology if h.name not in endpoints]
    if missing:
        raise InventoryError(
            f"Vagrant has no running machine for {', '.join(missing)}: run `vagrant up`"
        )
    return {
        h.name: dataclasses.replace(
            endpoints[h.name],
            known_hosts=str(machine_known_hosts(root, h.name)),
            record_new_key=True,
        )
        for h in topology
    }


KNOWN_HOSTS_DIR = STATE_DIR / "known_hosts"


def machine_known_hosts(root: Path, name: str) -> Path:
    """Where the SSH host key of Vagrant's machine `name` is recorded: one file per machine
    id, so a machine created again (a new id, new keys) starts a new record, and the key of
    the one that runs can never change unnoticed."""
    ids = sorted((root / ".vagrant" / "machines" / name).glob("*/id"))
    machine_id = ids[0].read_text().strip()[:16] if ids else "unknown"
    return KNOWN_HOSTS_DIR / f"{name}-{machine_id}"


def from_file(path: Path, topology: Topology) -> dict[str, Endpoint]:
    data = _read(path)
    hosts = data.get("hosts")
    if not isinstance(hosts, Mapping):
        raise InventoryError(f"{path}: expected a top-level 'hosts' mapping")
    unknown_top = sorted(set(data) - {"hosts", "site", "known_hosts"})
    if unknown_top:
        raise InventoryError(
            f"{path}: {unknown_top[0]}: unknown key (expected hosts, site, known_hosts)"
        )
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
        endpoints[host.name] = _endpoint(path, host.name, spec, data.get("known_hosts"))
    return endpoints


def _endpoint(
    path: Path, name: str, spec: Mapping[str, Any], default_known_hosts: object = None
) -> Endpoint:
    known = {"host", "user", "port", "key", "power", "known_hosts"}
    extra = sorted(set(spec) - known)
    if extra:
        raise InventoryError(
            f"{path}: hosts.{name}.{extra[0]}: unknown key (expected one of: "
            f"{', '.join(sorted(known))})"
        )
    key = spec.get("key")
    port = spec.get("port", 22)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InventoryError(f"{path}: hosts.{name}.port: expected 1-65535, got {port!r}")
    power = spec.get("power") or {}
    if not isinstance(power, Mapping) or not set(power) <= {"stop", "start"}:
        raise InventoryError(
            f"{path}: hosts.{name}.power: expected a mapping with 'stop' and 'start' commands"
        )
    for action, command in power.items():
        if not isinstance(command, str) or not command.strip():
            raise InventoryError(f"{path}: hosts.{name}.power.{action}: expected a command")
    known_hosts = spec.get("known_hosts", default_known_hosts)
    if known_hosts is not None and (not isinstance(known_hosts, str) or not known_hosts.strip()):
        raise InventoryError(f"{path}: hosts.{name}.known_hosts: expected a file name")
    return Endpoint(
        name=name,
        hostname=str(spec["host"]),
        port=port,
        user=str(spec.get("user", "root")),
        key_file=os.path.expanduser(str(key)) if key else None,
        power=tuple(sorted((str(a), str(c)) for a, c in power.items())),
        # Relative to the inventory file; the servers' keys must be in it already.
        known_hosts=str(path.parent / os.path.expanduser(known_hosts)) if known_hosts else None,
    )


@dataclass(frozen=True)
class SiteEntry:
    """Where this machine reaches the site: an address and the HTTPS and HTTP ports."""

    address: str
    https: int
    http: int

    def url(self, scheme: str = "https") -> str:
        port = self.https if scheme == "https" else self.http
        return f"{scheme}://{self.address}:{port}"


def site_entry(topology: Topology, inventory_file: str | None = None) -> SiteEntry:
    """With Vagrant: the load balancer's ports forwarded to 127.0.0.1, or its floating
    address (a `vips:` entry open to the operator's machine). With an inventory:
    its `site.address` (default: the first load balancer's `host`) on the topology's ports."""
    lbs = topology.with_role("lb")
    if not lbs:
        raise InventoryError(f"topology {topology.name!r} has no load balancer")
    inventory_file = selected(inventory_file)
    if not inventory_file:
        return vagrant_site_entry(topology)
    path = Path(inventory_file)
    data = _read(path)
    site = data.get("site") or {}
    if not isinstance(site, Mapping) or not set(site) <= {"address", "https", "http"}:
        raise InventoryError(f"{path}: site: expected a mapping with address, https, http")
    hosts = data.get("hosts") or {}
    default = hosts.get(lbs[0].name, {}).get("host") if isinstance(hosts, Mapping) else None
    address = site.get("address", default)
    if not address:
        raise InventoryError(f"{path}: site.address: missing (and no hosts.{lbs[0].name})")
    ports = []
    for key, service in (("https", "site-https"), ("http", "site-http")):
        port = site.get(key, topology.port(service))
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise InventoryError(f"{path}: site.{key}: expected 1-65535, got {port!r}")
        ports.append(port)
    return SiteEntry(str(address), ports[0], ports[1])


def vagrant_site_entry(topology: Topology) -> SiteEntry:
    """Where this machine reaches the site of Vagrant's machines: the first load balancer's
    ports forwarded to 127.0.0.1, or the balancers' floating address (a `vips:` entry
    open to the operator's machine) on the topology's ports."""
    lb = topology.with_role("lb")[0]
    https = topology.forwarded(lb, "site-https")
    http = topology.forwarded(lb, "site-http")
    if https is not None and http is not None:
        return SiteEntry("127.0.0.1", https, http)
    for vip in topology.vips.values():
        if vip.role == "lb" and {"site-https", "site-http"} <= set(vip.host_ports):
            return SiteEntry(
                str(vip.address), topology.port("site-https"), topology.port("site-http")
            )
    raise InventoryError(
        f"topology {topology.name!r}: {lb.name} forwards no site-https and site-http port to "
        "this machine, and no floating address of the balancers is open to it"
    )


def service_entry(
    topology: Topology, host: str, service: str, inventory_file: str | None = None
) -> tuple[str, int]:
    """Where this machine reaches `service` (a name under the topology's ports:) on `host`:
    Vagrant's forward on 127.0.0.1, or the inventory's address of the host on the port."""
    inventory_file = selected(inventory_file)
    if not inventory_file:
        local = topology.forwarded(topology.hosts[host], service)
        if local is None:
            raise InventoryError(f"{host} forwards no {service} port to this machine")
        return "127.0.0.1", local
    return from_file(Path(inventory_file), topology)[host].hostname, topology.port(service)


def _read(path: Path) -> Mapping[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InventoryError(f"{path}: cannot read inventory: {exc}") from None
    if not isinstance(data, Mapping):
        raise InventoryError(f"{path}: expected a top-level 'hosts' mapping")
    return data


def load(topology: Topology, inventory_file: str | None = None) -> dict[str, Endpoint]:
    """Endpoints from the inventory file in force (see :func:`selected`), else Vagrant."""
    inventory_file = selected(inventory_file)
    if inventory_file:
        return from_file(Path(inventory_file), topology)
    return from_vagrant(topology)
