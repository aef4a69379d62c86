"""The topology model: one YAML file describes hosts, roles, networks and allowed flows.

Everything else (Vagrantfile, Fabric inventory, firewall rules, tests) reads a
topology through :func:`load`, so nothing about a host is written twice. A
malformed file is rejected with a :class:`TopologyError` naming the file, the key
and what is wrong.

Run ``python -m provision.vagrant --help`` for the command-line view of a topology.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from provision import PROJECT_ROOT

TOPOLOGY_DIR = PROJECT_ROOT / "topologies"
DEFAULT_TOPOLOGY = "seed"

ROLES: dict[str, str] = {
    "lb": "lb",
    "web": "web",
    "app": "app",
    "db-primary": "db",
    "db-replica": "db",
    "monitor": "monitor",
    "client": "client",
}
"""Every role a host may carry, mapped to the tier it is deployed in."""

TIER_ORDER: tuple[str, ...] = (
    "common",
    "db",
    "replication",
    "app",
    "web",
    "lb",
    "monitor",
    "agent",
)
"""Deploy order: every host gets `common` first, then each tier in turn. `replication`
runs on the db hosts once every one of them is configured (a replica is seeded from a
primary that is already set up). `agent` (monitoring) runs on every host last, when the
exporters it reads and the monitor it pushes to exist."""

TIER_HOSTS = {"replication": "db", "agent": "common"}
"""Tiers that run on the hosts of another tier."""

PROTOCOLS = ("tcp", "udp", "vrrp")
PORTLESS = ("vrrp",)
"""Protocols without ports (VRRP, IP protocol 112: keepalived between load balancers)."""
ANY = "any"
SSH_PORT_BASE = 2200
"""Docker provider: host port 127.0.0.1:(SSH_PORT_BASE + number) reaches a machine's sshd,
where number is the last byte of its first address (Host.number): stable when a tier is
scaled, unlike the host's position in the file."""
SSH_PORTS = range(SSH_PORT_BASE, SSH_PORT_BASE + 256)


class TopologyError(ValueError):
    """A topology file is malformed; the message names the file, the key and the problem."""

    def __init__(self, path: Path | str, key: str, problem: str) -> None:
        self.path = str(path)
        self.key = key
        self.problem = problem
        super().__init__(f"{path}: {key}: {problem}" if key else f"{path}: {problem}")


@dataclass(frozen=True)
class Network:
    name: str
    cidr: ipaddress.IPv4Network
    description: str = ""
    users: bool = False
    """Users come from this network (`users: true`): hosts that share another network with
    each other talk over that one, and reach each other here only where a flow says
    `network:` this one (the monitor checking the site as a user would)."""

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The first address, kept for the host side (docker bridge or vboxnet)."""
        return self.cidr.network_address + 1


@dataclass(frozen=True)
class Host:
    name: str
    roles: tuple[str, ...]
    addresses: Mapping[str, ipaddress.IPv4Address]
    forward: Mapping[int, int] = field(default_factory=dict)
    """Guest port -> host port on 127.0.0.1."""
    index: int = 0
    """Position in the file; gives each machine a stable management port."""

    @property
    def tiers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(ROLES[r] for r in self.roles))

    def has_role(self, role: str) -> bool:
        return role == ANY or role in self.roles

    @property
    def primary_address(self) -> ipaddress.IPv4Address:
        return next(iter(self.addresses.values()))

    @property
    def number(self) -> int:
        """The last byte of the host's first address: unique in a topology (the parser
        checks), and unchanged when hosts are added or removed, so what is derived from it
        (the SSH port, MariaDB's server_id) never moves under a running machine."""
        return int(self.primary_address) & 0xFF

    @property
    def ssh_port(self) -> int:
        return SSH_PORT_BASE + self.number


@dataclass(frozen=True)
class Flow:
    source: str
    dest: str
    port: int
    proto: str
    why: str = ""
    service: str = ""
    """The name under `ports:` the flow's port comes from."""
    network: str = ""
    """The network the flow opens (`network:`); without it, the network the two hosts talk
    over (Topology.network_between)."""


@dataclass(frozen=True)
class Egress:
    """A connection hosts of a role may open to an address outside the testbed (`egress:`):
    the firewall's OUTPUT refuses every other one."""

    role: str
    to: ipaddress.IPv4Network | ipaddress.IPv6Network
    port: int
    proto: str
    why: str = ""


@dataclass(frozen=True)
class Path_:
    """One concrete allowed connection: source host to an address of the destination."""

    source: Host
    dest: Host
    network: str
    address: ipaddress.IPv4Address
    port: int
    proto: str
    why: str
    service: str = ""
    """The name under `ports:` of the flow's port."""


@dataclass(frozen=True)
class Vip:
    """A floating address on one network, held by one host of `role` at a time
    (keepalived moves it), e.g. the site's address shared by the load balancers."""

    name: str
    network: str
    address: ipaddress.IPv4Address
    role: str
    host_ports: tuple[str, ...] = ()
    """Port names the operator's machine (the network's .1) may reach on the address."""


@dataclass(frozen=True)
class Site:
    name: str
    aliases: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@dataclass(frozen=True)
class Topology:
    name: str
    path: Path
    description: str
    site: Site
    networks: Mapping[str, Network]
    hosts: Mapping[str, Host]
    flows: tuple[Flow, ...]
    options: Mapping[str, Any]
    ports: Mapping[str, int] = field(default_factory=dict)
    """Every port a flow names, by service (`ports:` in the file): the one owner that
    roles, templates, firewall rules, scrape targets and tests read."""
    vips: Mapping[str, Vip] = field(default_factory=dict)
    """Floating addresses (`vips:`), by name."""
    scaled: Mapping[str, int] = field(default_factory=dict)
    """Counts changed from the file's (`count.web: 3`, from `fab scale`), kept like options."""
    egress: tuple[Egress, ...] = ()
    """Connections to addresses outside the testbed that a role may open (`egress:`)."""

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts.values())

    def with_role(self, role: str) -> list[Host]:
        return [h for h in self if h.has_role(role)]

    def in_tier(self, tier: str) -> list[Host]:
        tier = TIER_HOSTS.get(tier, tier)
        if tier == "common":
            return list(self)
        return [h for h in self if tier in h.tiers]

    def shared_networks(self, a: Host, b: Host) -> list[str]:
        return [n for n in a.addresses if n in b.addresses]

    def network_between(self, a: Host, b: Host) -> str | None:
        """The network `a` and `b` talk over: the first they share (in `a`'s order) that is
        not the users' network (`users: true`), else the first they share; None if none."""
        shared = self.shared_networks(a, b)
        inside = [n for n in shared if not self.networks[n].users]
        return (inside or shared)[0] if shared else None

    def address_for(self, viewer: Host, target: Host) -> ipaddress.IPv4Address:
        """The address `viewer` should use for `target`: on the network they talk over
        (network_between) if they share one."""
        net = self.network_between(viewer, target)
        return target.addresses[net] if net else target.primary_address

    def allowed_paths(self) -> list[Path_]:
        """Every (source host, destination address, port) the flows allow.

        A flow applies on the network the source and destination talk over
        (network_between), or on the one it names (`network:`) if they share it; a host
        never needs a flow to reach itself.
        """
        paths: dict[tuple[str, str, str, int, str], Path_] = {}
        for flow in self.flows:
            for src in self.with_role(flow.source):
                for dst in self.with_role(flow.dest):
                    if src.name == dst.name:
                        continue
                    wanted = flow.network or self.network_between(src, dst)
                    for net in self.shared_networks(src, dst):
                        if net != wanted:
                            continue
                        # A role that holds a floating address on this network is reached
                        # there only, never at one machine's own address (VRRP excepted).
                        floating = [
                            v.address
                            for v in self.vips.values()
                            if v.network == net and dst.has_role(v.role) and flow.port
                        ]
                        targets = floating or [dst.addresses[net]]
                        for address in targets:
                            key = (src.name, dst.name, str(address), flow.port, flow.proto)
                            paths.setdefault(
                                key,
                                Path_(
                                    src,
                                    dst,
                                    net,
                                    address,
                                    flow.port,
                                    flow.proto,
                                    flow.why,
                                    flow.service,
                                ),
                            )
        return list(paths.values())

    def is_allowed(
        self,
        source: str,
        dest: str,
        network: str,
        port: int,
        proto: str = "tcp",
        address: ipaddress.IPv4Address | None = None,
    ) -> bool:
        """Whether a flow lets `source` reach `dest` on `network`; with `address`, at that
        address (a role with a floating address is reached there only)."""
        return any(
            p.source.name == source
            and p.dest.name == dest
            and p.network == network
            and p.port == port
            and p.proto == proto
            and (address is None or p.address == address)
            for p in self.allowed_paths()
        )

    def option(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)

    def port(self, service: str) -> int:
        """The port of a service named under `ports:`; a KeyError names what is missing."""
        try:
            return self.ports[service]
        except KeyError:
            raise KeyError(
                f"topology {self.name!r} names no port {service!r} under ports: "
                f"(known: {', '.join(self.ports)})"
            ) from None

    def forwarded(self, host: Host, service: str) -> int | None:
        """The port on the operator's loopback forwarded to `service` on `host`, if any."""
        return host.forward.get(self.port(service)) if service in self.ports else None


# --------------------------------------------------------------------------- loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML silently keeps the last of two equal keys; a topology must not."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, str | int | float | bool | type(None)):
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain value", key_node.start_mark
            )
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen[key] = key_node
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def path_for(name_or_path: str | os.PathLike[str]) -> Path:
    """`seed` -> topologies/seed.yml; a path is taken as it is."""
    text = os.fspath(name_or_path)
    if os.sep in text or text.endswith((".yml", ".yaml")):
        return Path(text)
    return TOPOLOGY_DIR / f"{text}.yml"


def selected_name() -> str:
    """The topology named by $TESTBED_TOPOLOGY, or the default."""
    return os.environ.get("TESTBED_TOPOLOGY") or DEFAULT_TOPOLOGY


def load(
    name_or_path: str | os.PathLike[str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Topology:
    """Load and validate a topology; `overrides` replace values of its `options`.

    Options an earlier `fab deploy --option` made live persist (saved_options): every later
    command, and the tests, see what the machines run, not the file's defaults."""
    path = path_for(name_or_path if name_or_path is not None else selected_name())
    overrides = {**saved_options(path.stem), **(overrides or {})}
    try:
        text = path.read_text()
    except FileNotFoundError:
        known = ", ".join(sorted(p.stem for p in TOPOLOGY_DIR.glob("*.yml")))
        raise TopologyError(path, "", f"no such topology file (known: {known})") from None
    except OSError as exc:
        raise TopologyError(path, "", f"cannot read: {exc.strerror}") from None
    return parse(text, path, overrides)


def file_options(name: str) -> dict[str, Any]:
    """The options as the topology file writes them, without any saved override."""
    path = path_for(name)
    return dict(parse(path.read_text(), path, {}).options)


def options_file(name: str) -> Path:
    from provision import STATE_DIR

    return STATE_DIR / "options" / f"{name}.json"


def saved_options(name: str) -> dict[str, Any]:
    """Options overridden by an earlier deploy of this topology ({} when none)."""
    try:
        data = json.loads(options_file(name).read_text())
    except (OSError, ValueError):
        return {}
    return dict(data) if isinstance(data, dict) else {}


def save_options(name: str, overrides: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    """Remember overrides that differ from the file's values; forget those set back."""
    keep = {k: v for k, v in overrides.items() if defaults.get(k) != v}
    path = options_file(name)
    if not keep:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    path.write_text(json.dumps(keep, indent=2, sort_keys=True) + "\n")


COUNT_PREFIX = "count."
"""An override `count.NAME` replaces the count of the counted hosts NAME (`fab scale`)."""


def parse_option_overrides(items: str) -> dict[str, Any]:
    """`reencrypt=true,x=1` -> {"reencrypt": True, "x": 1} (values read as YAML scalars)."""
    result: dict[str, Any] = {}
    for item in filter(None, (i.strip() for i in items.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TopologyError("--option", item, "expected NAME=VALUE")
        result[key] = yaml.safe_load(value)
    return result


def parse(
    text: str, path: Path | str = "<string>", overrides: Mapping[str, Any] | None = None
) -> Topology:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "YAML"
        problem = getattr(exc, "problem", None) or str(exc)
        raise TopologyError(path, where, f"not valid YAML: {problem}") from None
    return _Parser(Path(path), dict(overrides or {})).topology(data)


class _Parser:
    def __init__(self, path: Path, overrides: dict[str, Any]) -> None:
        self.path = path
        self.overrides = overrides
        self.ports: dict[str, int] = {}
        self.forwarded_names: set[str] = set()
        self.flow_services: set[str] = set()
        self.counted: set[str] = set()

    def fail(self, key: str, problem: str) -> TopologyError:
        return TopologyError(self.path, key, problem)

    def mapping(
        self, value: Any, key: str, allowed: set[str], required: set[str]
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key or "top level", f"expected a mapping, got {type(value).__name__}")
        for k in value:
            if k not in allowed:
                raise self.fail(
                    f"{key}.{k}" if key else str(k),
                    f"unknown key (expected one of: {', '.join(sorted(allowed))})",
                )
        for k in sorted(required):
            if k not in value:
                raise self.fail(f"{key}.{k}" if key else k, "missing required key")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"expected a non-empty string, got {value!r}")
        return value

    def port(self, value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise self.fail(key, f"expected a port number 1-65535, got {value!r}")
        return value

    def named_port(self, value: Any, key: str) -> tuple[str, int]:
        """A service name from `ports:` -> (name, port)."""
        if not isinstance(value, str) or value not in self.ports:
            raise self.fail(
                key,
                f"expected a port name from ports: ({', '.join(self.ports)}), got {value!r}",
            )
        return value, self.ports[value]

    def port_names(self, value: Any) -> dict[str, int]:
        if not isinstance(value, dict) or not value:
            raise self.fail("ports", "expected a non-empty mapping of service name to port")
        ports: dict[str, int] = {}
        for name, number in value.items():
            key = f"ports.{name}"
            if not isinstance(name, str) or not name.replace("-", "").isalnum():
                raise self.fail(key, "a port name holds only letters, digits and '-'")
            ports[name] = self.port(number, key)
        return ports

    def topology(self, data: Any) -> Topology:
        top = self.mapping(
            data,
            "",
            {
                "name",
                "description",
                "site",
                "options",
                "ports",
                "networks",
                "vips",
                "hosts",
                "flows",
                "egress",
            },
            {"name", "site", "ports", "networks", "hosts", "flows"},
        )
        name = self.string(top["name"], "name")
        site = self.site(top["site"])
        options = top.get("options") or {}
        if not isinstance(options, dict):
            raise self.fail("options", "expected a mapping")
        for key in self.overrides:
            if key not in options and not key.startswith(COUNT_PREFIX):
                raise self.fail(f"options.{key}", "cannot override an option the file does not set")
        options = {
            **options,
            **{k: v for k, v in self.overrides.items() if not k.startswith(COUNT_PREFIX)},
        }
        self.ports = self.port_names(top["ports"])
        networks = self.networks(top["networks"])
        hosts = self.hosts(top["hosts"], networks)
        for key in self.overrides:
            group = key[len(COUNT_PREFIX) :]
            if key.startswith(COUNT_PREFIX) and group not in self.counted:
                raise self.fail(
                    f"hosts.{group}", "no host group with a `count:` by that name to scale"
                )
        vips = self.vips(top.get("vips") or {}, networks, hosts)
        flows = self.flows(top["flows"], hosts, options, networks)
        unused = sorted(set(self.ports) - self.flow_services - self.forwarded_names)
        if unused:  # a named port no flow uses: a listener nothing may reach
            raise self.fail(f"ports.{unused[0]}", "no flow or forward uses this port")
        return Topology(
            name=name,
            path=self.path,
            description=str(top.get("description") or "").strip(),
            site=site,
            networks=networks,
            hosts=hosts,
            flows=flows,
            options=options,
            ports=self.ports,
            vips=vips,
            scaled={k: v for k, v in self.overrides.items() if k.startswith(COUNT_PREFIX)},
            egress=self.egress(top.get("egress") or [], hosts),
        )

    def egress(self, value: Any, hosts: Mapping[str, Host]) -> tuple[Egress, ...]:
        """`egress:` the connections a role may open to addresses outside the testbed."""
        if not isinstance(value, list):
            raise self.fail("egress", "expected a list of {from, to, port, proto, why}")
        used_roles = {r for h in hosts.values() for r in h.roles}
        found = []
        for i, item in enumerate(value):
            key = f"egress[{i}]"
            spec = self.mapping(
                item, key, {"from", "to", "port", "proto", "why"}, {"from", "to", "port"}
            )
            role = spec["from"]
            if not isinstance(role, str) or role not in used_roles:
                raise self.fail(f"{key}.from", f"no host carries role {role!r}")
            try:
                to = ipaddress.ip_network(str(spec["to"]), strict=False)
            except ValueError:
                raise self.fail(
                    f"{key}.to", f"expected an address or CIDR, got {spec['to']!r}"
                ) from None
            if to.version != 4:
                raise self.fail(f"{key}.to", "IPv4 only (the testbed has no IPv6 flows)")
            port = spec["port"]
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise self.fail(f"{key}.port", f"expected 1-65535, got {port!r}")
            proto = spec.get("proto", "tcp")
            if proto not in ("tcp", "udp"):
                raise self.fail(f"{key}.proto", f"expected tcp or udp, got {proto!r}")
            found.append(Egress(role, to, port, proto, str(spec.get("why") or "")))
        return tuple(found)

    def site(self, value: Any) -> Site:
        site = self.mapping(value, "site", {"name", "aliases"}, {"name"})
        aliases = site.get("aliases") or []
        if not isinstance(aliases, list):
            raise self.fail("site.aliases", "expected a list of names")
        return Site(
            self.string(site["name"], "site.name"),
            tuple(self.string(a, f"site.aliases[{i}]") for i, a in enumerate(aliases)),
        )

    def networks(self, value: Any) -> dict[str, Network]:
        if not isinstance(value, dict) or not value:
            raise self.fail("networks", "expected a non-empty mapping of network name to settings")
        networks: dict[str, Network] = {}
        for name, spec in value.items():
            key = f"networks.{name}"
            spec = self.mapping(spec, key, {"cidr", "description", "users"}, {"cidr"})
            try:
                cidr = ipaddress.IPv4Network(str(spec["cidr"]), strict=True)
            except ValueError as exc:
                raise self.fail(f"{key}.cidr", f"not an IPv4 network: {exc}") from None
            for other in networks.values():
                if cidr.overlaps(other.cidr):
                    raise self.fail(
                        f"{key}.cidr", f"{cidr} overlaps network {other.name} ({other.cidr})"
                    )
            users = spec.get("users", False)
            if not isinstance(users, bool):
                raise self.fail(f"{key}.users", f"expected true or false, got {users!r}")
            networks[str(name)] = Network(
                str(name), cidr, str(spec.get("description") or ""), users
            )
        return networks

    def hosts(self, value: Any, networks: Mapping[str, Network]) -> dict[str, Host]:
        if not isinstance(value, dict) or not value:
            raise self.fail("hosts", "expected a non-empty mapping of host name to settings")
        expanded = self.expand(value)
        hosts: dict[str, Host] = {}
        owner: dict[ipaddress.IPv4Address, str] = {}
        host_ports: dict[int, str] = {}
        for index, (name, key, spec, offset) in enumerate(expanded):
            roles = self.roles(spec["roles"], f"{key}.roles")
            addresses = self.addresses(spec["addresses"], f"{key}.addresses", networks, offset)
            self.claim(
                owner,
                addresses,
                f"{key}.addresses",
                name,
                "duplicate address {}, already used by {}",
            )
            forward = self.forward(spec.get("forward") or {}, f"{key}.forward")
            self.claim(
                host_ports,
                forward,
                f"{key}.forward",
                name,
                "host port {} is already forwarded to {}",
            )
            forward_ports = {self.ports[service]: hport for service, hport in forward.items()}
            hosts[name] = Host(name, roles, addresses, forward_ports, index)
            numbered = next((h for h in hosts.values() if h.number == hosts[name].number), None)
            if numbered is not None and numbered.name != name:
                raise self.fail(
                    f"{key}.addresses",
                    f"{name}'s first address ends in .{hosts[name].number} like {numbered.name}'s: "
                    "each host's first address must end differently (its SSH port and "
                    "database server id come from that number)",
                )
        self.one_primary(hosts)
        return hosts

    def vips(
        self, value: Any, networks: Mapping[str, Network], hosts: Mapping[str, Host]
    ) -> dict[str, Vip]:
        if not isinstance(value, dict):
            raise self.fail("vips", "expected a mapping of name to settings")
        taken = {a: h.name for h in hosts.values() for a in h.addresses.values()}
        found: dict[str, Vip] = {}
        for name, spec in value.items():
            key = f"vips.{name}"
            spec = self.mapping(
                spec,
                key,
                {"network", "address", "role", "host_ports"},
                {"network", "address", "role"},
            )
            net = spec["network"]
            if net not in networks:
                raise self.fail(f"{key}.network", f"unknown network (known: {', '.join(networks)})")
            try:
                addr = ipaddress.IPv4Address(str(spec["address"]))
            except ValueError:
                raise self.fail(
                    f"{key}.address", f"{spec['address']!r} is not an IPv4 address"
                ) from None
            cidr = networks[net].cidr
            if addr not in cidr or addr in (
                cidr.network_address,
                cidr.broadcast_address,
                networks[net].gateway,
            ):
                raise self.fail(
                    f"{key}.address", f"{addr} is not a usable address of {net} ({cidr})"
                )
            if addr in taken:
                raise self.fail(f"{key}.address", f"{addr} is already used by {taken[addr]}")
            holders = [
                h.name
                for h in hosts.values()
                if h.has_role(str(spec["role"])) and net in h.addresses
            ]
            if not holders:
                raise self.fail(
                    f"{key}.role", f"no host with role {spec['role']!r} is on network {net}"
                )
            ports = spec.get("host_ports") or []
            if not isinstance(ports, list):
                raise self.fail(f"{key}.host_ports", "expected a list of port names")
            names = tuple(
                self.named_port(p, f"{key}.host_ports[{i}]")[0] for i, p in enumerate(ports)
            )
            self.forwarded_names.update(names)
            taken[addr] = f"vip {name}"
            found[str(name)] = Vip(str(name), net, addr, str(spec["role"]), names)
        return found

    def claim(
        self, owner: dict[Any, str], items: Mapping[str, Any], key: str, name: str, what: str
    ) -> None:
        """Record `name` as the owner of each value of `items`; a value owned already is an
        error naming the item's key (`what` formats the value and its first owner)."""
        for item, value in items.items():
            if value in owner:
                raise self.fail(f"{key}.{item}", what.format(value, owner[value]))
            owner[value] = name

    def expand(self, value: Mapping[Any, Any]) -> list[tuple[str, str, dict[str, Any], int]]:
        """(host name, key for errors, settings, address offset) of every host. A spec
        with `count: N` under name NAME stands for NAME1..NAMEN (or from NAME<first>), the
        i-th at its addresses plus i-1 (each tier scales by changing one number)."""
        found: list[tuple[str, str, dict[str, Any], int]] = []
        names: set[str] = set()
        for name, spec in value.items():
            key = f"hosts.{name}"
            self.host_name(name, key)
            spec = self.mapping(
                spec,
                key,
                {"roles", "addresses", "forward", "count", "first"},
                {"roles", "addresses"},
            )
            count = spec.get("count")
            scaled = self.overrides.get(f"{COUNT_PREFIX}{name}")
            self.counted.add(name)
            if scaled is not None:
                if count is None:
                    raise self.fail(f"{key}.count", f"{name} has no count: it cannot be scaled")
                count = scaled
            if count is None:
                members = [(name, 0)]
            else:
                if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 50:
                    raise self.fail(f"{key}.count", f"expected a number 1-50, got {count!r}")
                if spec.get("forward"):
                    raise self.fail(
                        f"{key}.forward",
                        "a host with a count cannot forward ports (they would collide)",
                    )
                first = spec.get("first", 1)
                if isinstance(first, bool) or not isinstance(first, int) or first < 0:
                    raise self.fail(f"{key}.first", f"expected a number from 0, got {first!r}")
                members = [(f"{name}{first + i}", i) for i in range(count)]
            for member, offset in members:
                if member in names:
                    raise self.fail(key, f"host {member} is defined twice")
                names.add(member)
                found.append((member, key, spec, offset))
        return found

    def host_name(self, name: Any, key: str) -> None:
        if (
            not isinstance(name, str)
            or not name.replace("-", "").isalnum()
            or not name[0].isalpha()
        ):
            raise self.fail(
                key, "a host name must start with a letter and hold only letters, digits, '-'"
            )

    def roles(self, roles: Any, key: str) -> tuple[str, ...]:
        if not isinstance(roles, list) or not roles:
            raise self.fail(key, "expected a non-empty list of roles")
        for role in roles:
            if not isinstance(role, str) or role not in ROLES:
                raise self.fail(key, f"unknown role {role!r} (known: {', '.join(ROLES)})")
        if len(set(roles)) != len(roles):
            raise self.fail(key, "a role is listed twice")
        return tuple(roles)

    def addresses(
        self, addrs: Any, key: str, networks: Mapping[str, Network], offset: int = 0
    ) -> dict[str, ipaddress.IPv4Address]:
        if not isinstance(addrs, dict) or not addrs:
            raise self.fail(key, "expected a mapping of network name to address")
        addresses: dict[str, ipaddress.IPv4Address] = {}
        for net_name, raw in addrs.items():
            akey = f"{key}.{net_name}"
            if net_name not in networks:
                raise self.fail(akey, f"unknown network (known: {', '.join(networks)})")
            try:
                addr = ipaddress.IPv4Address(str(raw)) + offset
            except (ValueError, ipaddress.AddressValueError):
                raise self.fail(akey, f"{raw!r} is not an IPv4 address") from None
            net = networks[net_name]
            if addr not in net.cidr:
                raise self.fail(akey, f"{addr} is outside network {net_name} ({net.cidr})")
            if addr in (net.cidr.network_address, net.cidr.broadcast_address, net.gateway):
                raise self.fail(
                    akey,
                    f"{addr} is reserved in {net.cidr} (network, broadcast or the host's own .1)",
                )
            addresses[net_name] = addr
        return addresses

    def forward(self, fwd: Any, key: str) -> dict[str, int]:
        """`{service-name: host port}`: the guest port is a name from `ports:`."""
        if not isinstance(fwd, dict):
            raise self.fail(key, "expected a mapping of port name to host port")
        forward: dict[str, int] = {}
        for service, hport in fwd.items():
            fkey = f"{key}.{service}"
            name, _ = self.named_port(service, fkey)
            h = self.port(hport, fkey)
            if h in SSH_PORTS:
                raise self.fail(fkey, f"host port {h} is kept for the machines' SSH")
            self.forwarded_names.add(name)
            forward[name] = h
        return forward

    def one_primary(self, hosts: Mapping[str, Host]) -> None:
        primaries = [h.name for h in hosts.values() if "db-primary" in h.roles]
        replicas = [h.name for h in hosts.values() if "db-replica" in h.roles]
        if replicas and len(primaries) != 1:
            raise self.fail(
                "hosts",
                f"db-replica hosts {replicas} need exactly one db-primary, found {primaries}",
            )

    def flows(
        self,
        value: Any,
        hosts: Mapping[str, Host],
        options: Mapping[str, Any],
        networks: Mapping[str, Network],
    ) -> tuple[Flow, ...]:
        if not isinstance(value, list):
            raise self.fail("flows", "expected a list of flows")
        flows: list[Flow] = []
        seen: set[tuple[str, str, int, str, str]] = set()
        used_roles = {r for h in hosts.values() for r in h.roles}
        for i, spec in enumerate(value):
            key = f"flows[{i}]"
            spec = self.mapping(
                spec,
                key,
                {"from", "to", "port", "proto", "why", "when", "unless", "network"},
                {"from", "to"},
            )
            active = True
            for cond in ("when", "unless"):
                if cond in spec:
                    opt = spec[cond]
                    if not isinstance(opt, str) or opt not in options:
                        raise self.fail(
                            f"{key}.{cond}", f"{opt!r} is not an option of this topology"
                        )
                    active = active and (bool(options[opt]) == (cond == "when"))
            ends = []
            for end in ("from", "to"):
                role = spec[end]
                if not isinstance(role, str):
                    raise self.fail(f"{key}.{end}", f"expected a role name, got {role!r}")
                if role != ANY and role not in ROLES:
                    raise self.fail(
                        f"{key}.{end}", f"unknown role {role!r} (known: any, {', '.join(ROLES)})"
                    )
                if role != ANY and role not in used_roles:
                    raise self.fail(f"{key}.{end}", f"no host carries role {role!r}")
                ends.append(role)
            if ends[1] == ANY:
                raise self.fail(f"{key}.to", "a flow must name the destination role, not 'any'")
            proto = spec.get("proto", "tcp")
            if proto not in PROTOCOLS:
                raise self.fail(
                    f"{key}.proto", f"expected one of {', '.join(PROTOCOLS)}, got {proto!r}"
                )
            if proto in PORTLESS:
                if "port" in spec:
                    raise self.fail(f"{key}.port", f"{proto} has no ports")
                service, port = "", 0
            else:
                if "port" not in spec:
                    raise self.fail(f"{key}.port", "missing required key")
                service, port = self.named_port(spec["port"], f"{key}.port")
                self.flow_services.add(service)
            network = spec.get("network", "")
            if network and network not in networks:
                raise self.fail(
                    f"{key}.network", f"unknown network {network!r} (known: {', '.join(networks)})"
                )
            ident = (ends[0], ends[1], port, proto, str(network))
            if ident in seen:
                raise self.fail(key, f"duplicate flow {ends[0]} -> {ends[1]} {port}/{proto}")
            seen.add(ident)
            if active:
                why = str(spec.get("why") or "")
                flows.append(Flow(ends[0], ends[1], port, proto, why, service, str(network)))
        return tuple(flows)
