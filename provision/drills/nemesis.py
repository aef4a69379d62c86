"""The faults of a drill (Jepsen's "nemesis"), each an object with inject() and heal().

Every fault runs from the operator's machine: over SSH inside the machines (signals,
systemctl, iptables in the machine's own network namespace, tc), or through Vagrant for a
machine stop. Nothing here touches the docker host's own iptables (Docker's rules live
there). heal() is safe to call more than once, and after an inject() that failed halfway:
the runner calls it in a `finally`.

The pure parts (target resolution, peers, the iptables rules of a partition, argument
checks, which tier a fault hits) take the topology and return values, so the unit tests
run them without a machine.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from provision import PROJECT_ROOT
from provision.engine import Remote, StepError
from provision.inventory import Endpoint
from provision.power import Power, PowerError
from provision.topology import Host, Topology

DB_ROLES = ("db-primary", "db-replica")
WEB_ROLES = ("web", "app", "lb")

FAULTS: dict[str, str] = {
    "kill": "SIGKILL the target's services (db: mariadbd; web/app: nginx and the app's "
    "gunicorn, unit testbed-app; lb: haproxy); heal: systemctl start them (systemd may "
    "already have restarted some).",
    "stop": "Stop the whole machine (`vagrant halt HOST`, or the inventory's power.stop), "
    "then start it (`vagrant up HOST`, or power.start); "
    "both are timed.",
    "pause": "SIGSTOP the target's processes (db: mariadbd only, dbcheck keeps answering; "
    "web/app: nginx and gunicorn; lb: haproxy); heal: SIGCONT.",
    "partition": "Cut the target from its peers in both directions with iptables rules in a "
    "DRILL chain on the target (SSH stays up); verified by probes from inside the machines; "
    "heal: remove the chain.",
    "loss": "Drop a random share (--loss) of the packets between the target and its peers "
    "(iptables statistic match, same DRILL chain); heal: remove the chain.",
    "delay": "Delay the target's traffic with tc netem; this kernel has no sch_netem, so the "
    "drill says so and exits 2.",
    "deploy": "Operator fault: stop the target's MariaDB, run `fab deploy` as a user would, "
    "record its exit code; heal: start MariaDB again and run `fab deploy` once more, as a "
    "refusing deploy tells the operator to.",
}
"""Every fault, with one sentence on exactly what it does (`fab --help drill` shows them)."""

NETWORK_FAULTS = ("partition", "loss", "delay")
CHAIN = "DRILL"
DELAY_MS = 200
DEFAULT_LOSS = 0.3
PROBE_SECONDS = 3

# What a process fault hits, by the role the target is hit as.
UNITS: dict[str, tuple[str, ...]] = {
    "db-primary": ("mariadb",),
    "db-replica": ("mariadb",),
    "web": ("nginx",),
    "app": ("testbed-app",),
    "lb": ("haproxy",),
}


class DrillError(RuntimeError):
    """The drill could not run (or heal); the message names the host and the step."""


# --------------------------------------------------------------------------- pure: arguments


def validate(
    fault: str,
    *,
    duration: float,
    users: int,
    rate: float,
    loss: float,
    warmup: float,
    settle: float,
    peers: str,
    side: str = "",
) -> None:
    """Refuse a drill whose arguments make no sense, before anything is touched."""
    if fault not in FAULTS:
        raise DrillError(f"unknown fault {fault!r}: choose one of {', '.join(FAULTS)}")
    checks = [
        (0 < duration <= 600, f"--duration {duration:g}: give 0 < seconds <= 600"),
        (1 <= users <= 200, f"--users {users}: give 1 to 200"),
        (0 < rate <= 50, f"--rate {rate:g}: give 0 < requests/s per user <= 50"),
        (0 < loss < 1, f"--loss {loss:g}: give a probability 0 < P < 1"),
        (2 <= warmup <= 300, f"--warmup {warmup:g}: give 2 to 300 seconds"),
        (0 <= settle <= 600, f"--settle {settle:g}: give 0 to 600 seconds"),
        (
            not peers or fault in NETWORK_FAULTS,
            f"--peers applies only to {', '.join(NETWORK_FAULTS)}, not {fault}",
        ),
        (
            not side or fault in ("partition", "loss"),
            f"--side applies only to partition and loss, not {fault}",
        ),
    ]
    for ok, problem in checks:
        if not ok:
            raise DrillError(problem)


# --------------------------------------------------------------------------- pure: targets


@dataclass(frozen=True)
class Target:
    host: str
    role: str
    """The role the fault hits it as: db-primary, db-replica, web, app, lb, ..."""
    asked: str
    """What the user typed (a role or a host name)."""


def _db_role(name: str, primary: str | None) -> str:
    return "db-primary" if name == primary else "db-replica"


def resolve_target(
    topo: Topology, spec: str, fault: str, primary: str | None, replicas: Sequence[str]
) -> Target:
    """A host name, or a role resolved now: db-primary/db-replica from the live cluster
    (`primary`, `replicas`), any other role as the first host that has it.

    A host name that runs both web and database roles (seed's web1, web2) is hit as a web
    host, except by `deploy`, which is about its database: aim at a database with
    db-primary or db-replica.
    """
    if spec == "db-primary":
        if not primary:
            raise DrillError("target db-primary: no node is the primary right now (fab db.status)")
        return Target(primary, "db-primary", spec)
    if spec == "db-replica":
        if not replicas:
            raise DrillError("target db-replica: no node replicates right now (fab db.status)")
        return Target(replicas[0], "db-replica", spec)
    if spec in topo.hosts:
        host = topo.hosts[spec]
        has_db = any(host.has_role(r) for r in DB_ROLES)
        web_roles = [r for r in WEB_ROLES if host.has_role(r)]
        if fault == "deploy" or (has_db and not web_roles):
            if not has_db:
                raise DrillError(f"target {spec}: {fault} needs a database host, {spec} runs none")
            return Target(spec, _db_role(spec, primary), spec)
        return Target(spec, web_roles[0] if web_roles else host.roles[0], spec)
    hosts = topo.with_role(spec)
    if hosts:
        return Target(hosts[0].name, spec, spec)
    roles = sorted({r for h in topo for r in h.roles})
    raise DrillError(
        f"unknown target {spec!r}: give a host ({', '.join(topo.hosts)}) or a role "
        f"({', '.join(roles)})"
    )


def units_for(topo: Topology, target: Target) -> tuple[str, ...]:
    """The systemd units a kill or pause hits. A web host also runs the app: both go."""
    host = topo.hosts[target.host]
    if target.role in ("web", "app"):
        return tuple(u for r in ("web", "app") if host.has_role(r) for u in UNITS[r])
    units = UNITS.get(target.role, ())
    if not units:
        raise DrillError(f"{target.host} ({target.role}): no service to kill or pause there")
    return units


def default_peers(topo: Topology, target: Target) -> list[str]:
    """Who a network fault cuts the target from when --peers is not given.

    A database node: every other db node and the monitor(s) (the failover controller's
    witnesses). A web/app host: the load balancer(s). A load balancer: the web hosts.
    """
    if target.role in DB_ROLES:
        names = [h.name for h in topo.in_tier("db") + topo.with_role("monitor")]
    elif target.role in ("web", "app"):
        names = [h.name for h in topo.with_role("lb")]
    elif target.role == "lb":
        names = [h.name for h in topo.with_role("web")]
    else:
        raise DrillError(f"{target.host} ({target.role}): no default peers; give --peers")
    peers = list(dict.fromkeys(n for n in names if n != target.host))
    if not peers:
        raise DrillError(f"{target.host}: no peer to cut it from in topology {topo.name!r}")
    return peers


def parse_peers(
    topo: Topology, spec: str, target: Target, primary: str | None, replicas: Sequence[str]
) -> list[str]:
    """--peers: comma-separated hosts or roles (db-primary/db-replica as they are now)."""
    names: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item in topo.hosts:
            names.append(item)
        elif item == "db-primary" and primary:
            names.append(primary)
        elif item == "db-replica":
            names += list(replicas)
        elif topo.with_role(item):
            names += [h.name for h in topo.with_role(item)]
        else:
            raise DrillError(f"--peers: {item!r} is neither a host nor a role of {topo.name!r}")
    peers = list(dict.fromkeys(n for n in names if n != target.host))
    if not peers:
        raise DrillError(f"--peers {spec!r}: no host other than the target {target.host}")
    return peers


def expectations(
    topo: Topology, fault: str, target: Target, peers: Sequence[str], side: Sequence[str] = ()
) -> dict[str, bool]:
    """Which tier the fault hits (drill.json `expect`): it decides what the checker holds.

    A process fault hits the tier of the role it was aimed at; a machine stop hits every
    tier the machine runs; a network fault hits the tiers whose traffic crosses a cut link
    (database: db<->db, db<->app, db<->monitor; web: load balancer<->web/app).
    """
    host = topo.hosts[target.host]

    def has(h: Host, roles: Sequence[str]) -> bool:
        return any(h.has_role(r) for r in roles)

    if fault == "stop":
        return {
            "db_fault": has(host, DB_ROLES),
            "web_fault": has(host, WEB_ROLES),
            "lb_fault": host.has_role("lb"),
        }
    if fault == "deploy":
        return {"db_fault": True, "web_fault": False, "lb_fault": False}
    if fault in NETWORK_FAULTS:
        db_side = (*DB_ROLES, "app", "monitor")
        db = web = False
        for member in [host, *(topo.hosts[h] for h in side)]:
            for peer in (topo.hosts[p] for p in peers):
                for a, b in ((member, peer), (peer, member)):
                    db |= has(a, DB_ROLES) and has(b, db_side)
                    web |= a.has_role("lb") and has(b, ("web", "app"))
        return {"db_fault": db, "web_fault": web, "lb_fault": target.role == "lb"}
    return {
        "db_fault": target.role in DB_ROLES,
        "web_fault": target.role in WEB_ROLES,
        "lb_fault": target.role == "lb",
    }


# --------------------------------------------------------------------------- pure: iptables


@dataclass(frozen=True)
class Link:
    peer: str
    network: str
    peer_address: str
    own_address: str


def links(topo: Topology, target: str, peers: Sequence[str]) -> list[Link]:
    """Every (peer, network) pair the target shares, with both ends' addresses."""
    host = topo.hosts[target]
    found = []
    for name in peers:
        peer = topo.hosts[name]
        shared = topo.shared_networks(host, peer)
        if not shared:
            raise DrillError(f"{target} and {name} share no network: there is no link to cut")
        found += [Link(name, n, str(peer.addresses[n]), str(host.addresses[n])) for n in shared]
    return found


def chain_rules(fault_links: Sequence[Link], loss: float | None = None) -> list[str]:
    """The DRILL chain's rules (iptables arguments): both directions of every link.

    The chain is jumped to from the top of INPUT (traffic from the peer) and OUTPUT (traffic
    to it), so one rule per direction serves both; matching the exact pair of addresses
    leaves every other path, the management (SSH) one included, untouched.
    """
    what = "partition" if loss is None else f"loss {loss:g}"
    match = "" if loss is None else f" -m statistic --mode random --probability {loss:g}"
    rules = []
    for link in fault_links:
        for src, dst in (
            (link.peer_address, link.own_address),
            (link.own_address, link.peer_address),
        ):
            comment = shlex.quote(f"drill {what}: {link.peer} ({link.network})")
            rules.append(
                f"-A {CHAIN} -s {src}/32 -d {dst}/32{match} -m comment --comment {comment} -j DROP"
            )
    return rules


def remove_script() -> str:
    """Shell that removes the DRILL chain and its jumps; succeeds when none is there."""
    return (
        f"while iptables -w -D INPUT -j {CHAIN} 2>/dev/null; do :; done; "
        f"while iptables -w -D OUTPUT -j {CHAIN} 2>/dev/null; do :; done; "
        f"iptables -w -F {CHAIN} 2>/dev/null; iptables -w -X {CHAIN} 2>/dev/null; "
        f"! iptables -w -S {CHAIN} >/dev/null 2>&1"
    )


def install_script(rules: Sequence[str]) -> str:
    """Shell that (re)creates the DRILL chain with `rules` and jumps to it first thing."""
    lines = [remove_script(), "set -e", f"iptables -w -N {CHAIN}"]
    lines += [f"iptables -w {rule}" for rule in rules]
    lines += [f"iptables -w -I INPUT 1 -j {CHAIN}", f"iptables -w -I OUTPUT 1 -j {CHAIN}"]
    return "\n".join(lines)


def cuts_management(fault_links: Sequence[Link], ssh_client: str) -> bool:
    """Would the rules drop the SSH session that the drill (and its heal) runs through?"""
    return any(ssh_client in (link.peer_address, link.own_address) for link in fault_links)


def dropped_packets(listing: str) -> int:
    """Sum of the packet counters in `iptables -nvxL DRILL` output."""
    total = 0
    for line in listing.splitlines():
        words = line.split()
        if len(words) > 2 and words[0].isdigit() and words[2] == "DROP":
            total += int(words[0])
    return total


@dataclass(frozen=True)
class Probe:
    source: str
    dest: str
    address: str
    port: int


def probes(topo: Topology, target: str, peers: Sequence[str]) -> list[Probe]:
    """One TCP probe per peer on a port the firewall allows: from the peer to the target
    when a flow allows it (that proves the target no longer hears the peer), else from the
    target to the peer. A peer with no allowed flow either way gets no probe."""
    paths = [p for p in topo.allowed_paths() if p.proto == "tcp"]
    found = []
    for peer in peers:
        for src, dst in ((peer, target), (target, peer)):
            path = next((p for p in paths if p.source.name == src and p.dest.name == dst), None)
            if path is not None:
                found.append(Probe(src, dst, str(path.address), path.port))
                break
    return found


def probe_command(probe: Probe) -> str:
    inner = f"exec 3<>/dev/tcp/{probe.address}/{probe.port}"
    return f"timeout {PROBE_SECONDS} bash -c {shlex.quote(inner)}"


def probe_result(rc: int, output: str) -> str:
    """open | refused (both: the network carries packets) | cut | error: ..."""
    if rc == 0:
        return "open"
    if "Connection refused" in output:
        return "refused"
    # A drop on the far side shows as a timeout; a drop in this machine's own OUTPUT chain
    # is reported at once as EPERM.
    if rc == 124 or "Operation not permitted" in output:
        return "cut"
    return f"error: rc {rc}: {output.strip()[:120]}"


def interface_for(ip_addr_output: str, address: str) -> str | None:
    """The interface carrying `address`, from `ip -o -4 addr show` output."""
    for line in ip_addr_output.splitlines():
        words = line.split()
        if len(words) >= 4 and words[2] == "inet" and words[3].split("/")[0] == address:
            return words[1].split("@")[0]
    return None


# --------------------------------------------------------------------------- the machines


@dataclass
class Machines:
    """Connected Remotes by host name, opened on first use; what faults act through."""

    topo: Topology
    eps: Mapping[str, Endpoint]
    say: Callable[[str], None] = print
    remotes: dict[str, Remote] = field(default_factory=dict)

    def get(self, name: str) -> Remote:
        if name not in self.remotes:
            ep = self.eps[name]
            remote = Remote(self.topo.hosts[name], ep)
            try:
                remote.connect()
            except Exception as exc:
                raise DrillError(
                    f"SSH to {name} ({ep.hostname}:{ep.port}): {type(exc).__name__}: {exc}"
                ) from None
            self.remotes[name] = remote
        return self.remotes[name]

    def run(self, name: str, step: str, command: str, check: bool = True) -> tuple[int, str]:
        """Run on `name`; errors become DrillError naming the host and the step."""
        try:
            res = self.get(name).run(command, check=check)
        except (StepError, DrillError) as exc:
            raise DrillError(f"{step} on {name}: {exc}") from None
        except Exception as exc:  # a dropped SSH connection: reconnect next time
            self.forget(name)
            raise DrillError(f"{step} on {name}: {type(exc).__name__}: {exc}") from None
        return res.rc, (res.stdout + res.stderr).strip()

    def forget(self, name: str) -> None:
        remote = self.remotes.pop(name, None)
        if remote is not None:
            # Closing a dead connection may raise; there is nothing to report about it.
            with contextlib.suppress(Exception):
                remote.close()

    def close(self) -> None:
        for name in list(self.remotes):
            self.forget(name)


# --------------------------------------------------------------------------- the faults


@dataclass
class Fault:
    """inject()/heal() return one line saying what was done (the events' detail)."""

    machines: Machines
    target: Target
    peers: list[str] = field(default_factory=list)
    emit: Callable[[str, str], None] = lambda event, detail: None
    name: str = ""
    applied_at: float | None = None
    """time.monotonic() when the fault took effect: --duration is held from there, so that
    checking it (a partition's probes) or a slow inject (vagrant halt) does not eat it."""

    @property
    def host(self) -> str:
        return self.target.host

    def applied(self) -> None:
        self.applied_at = time.monotonic()

    def preflight(self) -> None:
        """Check, before any load starts, that the fault can run here."""

    def inject(self) -> str:
        raise NotImplementedError

    def heal(self) -> str:
        raise NotImplementedError

    def heal_hint(self) -> str:
        """What an operator runs by hand if heal() failed."""
        return f"fab status; vagrant ssh {self.host}"


@dataclass
class Kill(Fault):
    name: str = "kill"

    @property
    def units(self) -> tuple[str, ...]:
        return units_for(self.machines.topo, self.target)

    def preflight(self) -> None:
        _check_active(self.machines, self.host, self.units)

    def inject(self) -> str:
        units = " ".join(self.units)
        _, pids = self.machines.run(
            self.host,
            "inject (kill)",
            f'for u in {units}; do echo "$u=$(systemctl show -p MainPID --value $u)"; done; '
            f"systemctl kill --signal=SIGKILL {units}",
        )
        self.applied()
        return f"SIGKILL to every process of {units} on {self.host} (main PIDs {_oneline(pids)})"

    def heal(self) -> str:
        units = " ".join(self.units)
        _, before = self.machines.run(
            self.host,
            "heal (state before start)",
            f'for u in {units}; do echo "$u=$(systemctl is-active $u)"; done',
            check=False,
        )
        self.machines.run(self.host, "heal (systemctl start)", f"systemctl start {units}")
        _wait_active(self.machines, self.host, self.units)
        return f"systemctl start {units} on {self.host} (before: {_oneline(before)}); all active"

    def heal_hint(self) -> str:
        return f"vagrant ssh {self.host} -c 'sudo systemctl start {' '.join(self.units)}'"


@dataclass
class Pause(Fault):
    name: str = "pause"

    def _signal(self, sig: str) -> str:
        if self.target.role in DB_ROLES:
            # mariadbd only: dbcheck and the other neighbours in the machine keep running.
            return f"pids=$(pidof mariadbd) && kill -{sig} $pids && echo mariadbd $pids"
        units = " ".join(units_for(self.machines.topo, self.target))
        return f"systemctl kill --signal=SIG{sig} {units} && echo {units}"

    def preflight(self) -> None:
        _check_active(self.machines, self.host, units_for(self.machines.topo, self.target))

    def inject(self) -> str:
        _, out = self.machines.run(self.host, "inject (SIGSTOP)", self._signal("STOP"))
        self.applied()
        return f"SIGSTOP {_oneline(out)} on {self.host}"

    def heal(self) -> str:
        _, out = self.machines.run(self.host, "heal (SIGCONT)", self._signal("CONT"))
        return f"SIGCONT {_oneline(out)} on {self.host}"

    def heal_hint(self) -> str:
        if self.target.role in DB_ROLES:
            return f"vagrant ssh {self.host} -c 'sudo kill -CONT $(pidof mariadbd)'"
        units = " ".join(units_for(self.machines.topo, self.target))
        return f"vagrant ssh {self.host} -c 'sudo systemctl kill --signal=SIGCONT {units}'"


@dataclass
class Partition(Fault):
    """`loss` is None for a partition (drop everything), else the drop probability.

    `side`: more hosts cut off together with the target (`--side`), for a split of the
    cluster in two groups rather than one host alone: every member of the target's side
    gets the DRILL chain against every peer, and they still talk to each other."""

    loss: float | None = None
    name: str = "partition"
    baseline: dict[str, str] = field(default_factory=dict)
    side: list[str] = field(default_factory=list)

    @property
    def members(self) -> list[str]:
        return [self.host, *self.side]

    def links_of(self, member: str) -> list[Link]:
        return links(self.machines.topo, member, self.peers)

    @property
    def links(self) -> list[Link]:
        return [lk for m in self.members for lk in self.links_of(m)]

    def _probe_all(self, step: str) -> dict[str, str]:
        results = {}
        for member in self.members:
            for probe in probes(self.machines.topo, member, self.peers):
                rc, out = self.machines.run(probe.source, step, probe_command(probe), check=False)
                key = f"{probe.source}->{probe.dest} {probe.address}:{probe.port}"
                results[key] = probe_result(rc, out)
        return results

    def preflight(self) -> None:
        for member in self.members:
            facts = self.machines.get(member).facts()
            if cuts_management(self.links_of(member), facts["ssh_client"]):
                raise DrillError(
                    f"preflight on {member}: SSH arrives from {facts['ssh_client']}, one of "
                    "the addresses the fault would cut; refusing (the heal could not reach it)"
                )
            rc, out = self.machines.run(
                member, "preflight (iptables)", "iptables -w -S INPUT 1", check=False
            )
            if rc != 0:
                raise DrillError(f"preflight on {member}: iptables does not work: {out}")
            self.machines.run(member, "preflight (no leftover DRILL chain)", remove_script())
        if self.loss is None:
            self.baseline = self._probe_all("preflight (probe before the cut)")
            blocked = {k: v for k, v in self.baseline.items() if v not in ("open", "refused")}
            if blocked:
                raise DrillError(
                    f"preflight: the links to cut do not work before the fault: {blocked}"
                )

    def inject(self) -> str:
        count = 0
        for member in self.members:
            rules = chain_rules(self.links_of(member), self.loss)
            self.machines.run(member, f"inject ({self.name}: iptables)", install_script(rules))
            count += len(rules)
        self.applied()
        where = " and ".join(self.members)
        peers = ", ".join(dict.fromkeys(f"{lk.peer} {lk.peer_address}" for lk in self.links))
        if self.loss is not None:
            return (
                f"iptables chain {CHAIN} on {where}: drop {self.loss:g} of packets "
                f"to/from {peers} ({count} rules)"
            )
        seen = self._probe_all("inject (probe during the cut)")
        not_cut = {k: v for k, v in seen.items() if v != "cut"}
        if not_cut:
            raise DrillError(
                f"inject (partition) on {where}: the cut is not real, "
                f"probes still get through: {not_cut}"
            )
        shown = "; ".join(f"{k} {v}" for k, v in seen.items()) or "no probe possible"
        return (
            f"iptables chain {CHAIN} on {where}: drop all to/from {peers} "
            f"({count} rules); probes: {shown}"
        )

    def heal(self) -> str:
        dropped = 0
        failed: list[str] = []
        for member in self.members:  # every member, even when one fails: then say which
            try:
                _, listing = self.machines.run(
                    member, "heal (read counters)", f"iptables -w -nvxL {CHAIN}", check=False
                )
                self.machines.run(member, f"heal ({self.name}: remove {CHAIN})", remove_script())
                dropped += dropped_packets(listing)
            except DrillError as exc:
                failed.append(str(exc))
        if failed:
            raise DrillError("; ".join(failed))
        where = " and ".join(self.members)
        if self.loss is not None:
            return f"removed {CHAIN} on {where} ({dropped} packets dropped)"
        seen = self._probe_all("heal (probe after the heal)")
        still = {k: v for k, v in seen.items() if v not in ("open", "refused")}
        if still:
            raise DrillError(
                f"heal (partition) on {where}: chain removed but probes still fail: {still}"
            )
        shown = "; ".join(f"{k} {v}" for k, v in seen.items()) or "no probe possible"
        return f"removed {CHAIN} on {where} ({dropped} packets dropped); probes: {shown}"

    def heal_hint(self) -> str:
        script = "sudo sh -c " + shlex.quote(remove_script())
        return "; ".join(f"vagrant ssh {m} -c {shlex.quote(script)}" for m in self.members)


@dataclass
class Delay(Fault):
    name: str = "delay"
    interfaces: list[str] = field(default_factory=list)

    def preflight(self) -> None:
        _, addrs = self.machines.run(self.host, "preflight (interfaces)", "ip -o -4 addr show")
        own = sorted({lk.own_address for lk in links(self.machines.topo, self.host, self.peers)})
        self.interfaces = sorted({i for a in own if (i := interface_for(addrs, a))})
        if not self.interfaces:
            raise DrillError(f"preflight on {self.host}: no interface carries {', '.join(own)}")
        dev = self.interfaces[0]
        test = f"tc qdisc add dev {dev} root netem delay 1ms"
        rc, out = self.machines.run(self.host, "preflight (tc netem)", test, check=False)
        if rc != 0:
            raise DrillError(
                f"delay cannot run here: on {self.host}, `{test}` failed: "
                f"{_oneline(out).rstrip('.')}. "
                "This kernel has no sch_netem (tc netem), so there is no delay fault on this "
                "machine; packet loss works: fab drill loss --target ..."
            )
        self.machines.run(self.host, "preflight (tc netem, undo)", f"tc qdisc del dev {dev} root")

    def inject(self) -> str:
        for dev in self.interfaces:
            self.machines.run(
                self.host,
                "inject (tc netem)",
                f"tc qdisc replace dev {dev} root netem delay {DELAY_MS}ms",
            )
        self.applied()
        return f"netem delay {DELAY_MS} ms on {', '.join(self.interfaces)} of {self.host}"

    def heal(self) -> str:
        for dev in self.interfaces:
            self.machines.run(
                self.host, "heal (tc netem)", f"tc qdisc del dev {dev} root 2>/dev/null || true"
            )
        return f"removed netem from {', '.join(self.interfaces)} of {self.host}"


@dataclass
class Stop(Fault):
    name: str = "stop"
    inventory: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def power(self) -> Power:
        return Power(self.machines.topo, self.machines.eps, self.inventory or None)

    def preflight(self) -> None:
        try:
            self.power.command("stop", self.host)
            self.power.command("start", self.host)
        except PowerError as exc:
            raise DrillError(f"stop: {exc}") from None

    def _power(self, action: str, step: str, timeout: float) -> float:
        try:
            return self.power.run(action, self.host, timeout)
        except PowerError as exc:
            raise DrillError(f"{step} for {self.host}: {exc}") from None

    def _shown(self, action: str) -> str:
        return " ".join(self.power.command(action, self.host))

    def inject(self) -> str:
        self.machines.forget(self.host)
        self.timings["halt_s"] = self._power("stop", "inject (stop the machine)", 300)
        self.applied()
        return f"{self._shown('stop')}: {self.timings['halt_s']:.1f} s"

    def heal(self) -> str:
        self.timings["up_s"] = self._power("start", "heal (start the machine)", 900)
        started = time.monotonic()
        deadline = started + 90
        while True:
            try:
                self.machines.forget(self.host)
                self.machines.run(self.host, "heal (wait for SSH)", "true")
                break
            except DrillError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        self.timings["ssh_s"] = time.monotonic() - started
        return (
            f"{self._shown('start')}: {self.timings['up_s']:.1f} s, SSH after "
            f"{self.timings['ssh_s']:.1f} s more"
        )

    def heal_hint(self) -> str:
        return self._shown("start")


@dataclass
class Deploy(Fault):
    name: str = "deploy"
    folder: Path = PROJECT_ROOT
    topology_arg: str = ""
    inventory: str = ""
    exit_code: int | None = None
    recovery_exit: int | None = None

    def preflight(self) -> None:
        if self.target.role not in DB_ROLES:
            raise DrillError(
                f"deploy: target {self.host} runs no database (aim at db-primary or db-replica)"
            )

    def inject(self) -> str:
        self.machines.run(self.host, "inject (systemctl stop mariadb)", "systemctl stop mariadb")
        self.applied()
        self.exit_code, detail = self._deploy("deploy.log", "deploy-exit")
        return f"systemctl stop mariadb on {self.host}; {detail}"

    def heal(self) -> str:
        """Do what a refusing deploy tells the operator: bring the node back, deploy again."""
        self.machines.run(self.host, "heal (systemctl start mariadb)", "systemctl start mariadb")
        _wait_active(self.machines, self.host, ("mariadb",))
        self.recovery_exit, detail = self._deploy("recovery-deploy.log", "recovery-deploy-exit")
        return f"systemctl start mariadb on {self.host}, then {detail}"

    def _deploy(self, logname: str, event: str) -> tuple[int, str]:
        fab = Path(sys.executable).parent / "fab"
        cmd = [str(fab) if fab.exists() else "fab", "deploy"]
        cmd += ["--topology", self.topology_arg or self.machines.topo.name]
        if self.inventory:
            cmd += ["--inventory", self.inventory]
        log = self.folder / logname
        self.machines.say(f"running `{' '.join(cmd[1:])}` as a user would (output: {log.name})")
        started = time.monotonic()
        with log.open("wb") as out:
            try:
                code = subprocess.run(
                    cmd,
                    cwd=PROJECT_ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    timeout=1800,
                    check=False,
                ).returncode
            except subprocess.TimeoutExpired:
                code = -1
        took = time.monotonic() - started
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        detail = f"fab deploy exited {code} after {took:.1f} s: " + " | ".join(tail)
        self.emit(event, detail)
        return code, detail

    def heal_hint(self) -> str:
        return f"vagrant ssh {self.host} -c 'sudo systemctl start mariadb'"


def make(
    fault: str,
    machines: Machines,
    target: Target,
    peers: Sequence[str],
    *,
    loss: float = DEFAULT_LOSS,
    emit: Callable[[str, str], None] = lambda event, detail: None,
    folder: Path = PROJECT_ROOT,
    topology_arg: str = "",
    inventory: str = "",
    side: Sequence[str] = (),
) -> Fault:
    """The fault object for `fault`, aimed at `target` (and `peers`, for network faults;
    `side`: hosts a partition or loss cuts off together with the target)."""
    m, t, p = machines, target, list(peers)
    if fault == "kill":
        return Kill(m, t, p, emit)
    if fault == "pause":
        return Pause(m, t, p, emit)
    if fault == "partition":
        return Partition(m, t, p, emit, side=list(side))
    if fault == "loss":
        return Partition(m, t, p, emit, name="loss", loss=loss, side=list(side))
    if fault == "delay":
        return Delay(m, t, p, emit)
    if fault == "stop":
        return Stop(m, t, p, emit, inventory=inventory)
    if fault == "deploy":
        return Deploy(m, t, p, emit, folder=folder, topology_arg=topology_arg, inventory=inventory)
    raise DrillError(f"unknown fault {fault!r}")


# --------------------------------------------------------------------------- helpers


def _oneline(text: str) -> str:
    return re.sub(r"\s*\n\s*", "; ", text.strip())[:300]


def _wait_active(machines: Machines, host: str, units: Sequence[str], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    joined = " ".join(units)
    while True:
        rc, out = machines.run(
            host, "heal (wait for units)", f"systemctl is-active {joined}", check=False
        )
        if rc == 0:
            return
        if time.monotonic() > deadline:
            raise DrillError(
                f"heal on {host}: {joined} not active after {seconds:.0f} s: {_oneline(out)}"
            )
        time.sleep(0.5)


def _check_active(machines: Machines, host: str, units: Sequence[str]) -> None:
    """A process fault on a service that is already down would prove nothing."""
    joined = " ".join(units)
    rc, out = machines.run(
        host, "preflight (units active)", f"systemctl is-active {joined}", check=False
    )
    if rc != 0:
        raise DrillError(
            f"preflight on {host}: not every one of {joined} is active "
            f"({_oneline(out)}); fix that first (fab status)"
        )
