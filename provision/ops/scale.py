"""`fab scale web=N`: grow or shrink a counted tier without a failed request.

A tier written with `count:` in the topology (hardened's `web`) is scaled by recording the
new count next to the deploy's options (`.testbed/options/<topology>.json`, `count.web`),
so every later command, the Vagrantfile included, sees the same machines; the file keeps
its default, and `fab scale web=<the file's count>` goes back to it.

Out (N above the current count): the new machines are created (`vagrant up NAME`; with an
inventory they must already be in it), then `fab deploy` runs on every host: the new web
servers are set up first in the deploy's order, and the balancers, firewalls and
Prometheus learn them in the same run. A balancer reloads HAProxy without dropping a
connection, and does not send a page to a new server before its health check passes.

In (N below it): the servers that go are drained first on every balancer (`set server
BACKEND/NAME state drain` through HAProxy's admin socket: no new request, the running ones
finish), the task waits until none holds a session, then deploys without them (the
balancers, firewalls and Prometheus forget them) and removes their machines (`vagrant
destroy -f NAME`; with an inventory, the operator retires the servers).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Sequence

from provision import PROJECT_ROOT, inventory, topology
from provision.engine import Remote, StepError
from provision.ops import deploy as deploy_op
from provision.ops.common import TaskError, endpoints, load

ADMIN_SOCKET = "/run/haproxy/admin.sock"
BACKENDS = ("web", "api")
DRAIN_TIMEOUT = 60.0


def parse_spec(spec: str) -> tuple[str, int]:
    """`web=3` -> ("web", 3)."""
    name, sep, value = spec.partition("=")
    name = name.strip()
    if not sep or not name or not value.strip().isdigit():
        raise TaskError(f"expected TIER=COUNT, such as web=3; got {spec!r}")
    return name, int(value)


def counted_members(topo: topology.Topology, tier: str) -> list[str]:
    """The hosts of counted group `tier` (web -> web1, web2, ...), in order."""
    return [
        h.name
        for h in topo.hosts.values()
        if h.name.startswith(tier) and h.name[len(tier) :].isdigit()
    ]


def admin_command(command: str) -> str:
    """Shell that sends one command to HAProxy's admin socket and prints the answer."""
    return f"echo '{command}' | socat stdio {ADMIN_SOCKET}"


def server_rows(show_stat: str, servers: Sequence[str]) -> list[dict[str, str]]:
    """The rows of `servers` in the web backends, from `show stat` CSV, by column name."""
    lines = show_stat.splitlines()
    if not lines or not lines[0].startswith("# "):
        raise StepError(f"unexpected `show stat` output: {show_stat[:200]!r}")
    header = lines[0][2:].split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    return [r for r in rows if r.get("pxname") in BACKENDS and r.get("svname") in servers]


def sessions(show_stat: str, servers: Sequence[str]) -> int:
    """Current sessions (scur) of `servers` in the web backends, from `show stat` CSV."""
    return sum(int(r.get("scur") or 0) for r in server_rows(show_stat, servers))


def scale(
    spec: str, topology_name: str | None, inventory_file: str | None, say: Callable[[str], None]
) -> None:
    tier, count = parse_spec(spec)
    before = load(topology_name)
    try:
        after = topology.load(before.name, {f"{topology.COUNT_PREFIX}{tier}": count})
    except topology.TopologyError as exc:
        raise TaskError(f"{spec}: {exc}") from None
    members = counted_members(before, tier)
    wanted = counted_members(after, tier)
    added = [n for n in wanted if n not in members]
    removed = [n for n in members if n not in wanted]
    if not added and not removed:
        say(f"scale: {tier} has {len(members)} hosts already ({', '.join(members)}); nothing to do")
        return
    with_inventory = inventory.selected(inventory_file)
    if added:
        say(f"scale out: {tier} {len(members)} -> {count}: adding {', '.join(added)}")
        remember(after)
        if not with_inventory:
            vagrant("up", added, after.name, say)
        run_deploy(after, inventory_file, say)
        say(f"scale out done: {', '.join(added)} serve, and every firewall and Prometheus know.")
        return
    say(f"scale in: {tier} {len(members)} -> {count}: draining {', '.join(removed)}")
    drain(before, endpoints(before, inventory_file), removed, say)
    if not with_inventory:
        # Drained, they take no request: remove them while the Vagrantfile still has them.
        vagrant("destroy", removed, before.name, say)
    remember(after)
    run_deploy(after, inventory_file, say)
    if with_inventory:
        say(f"scale in done: retire {', '.join(removed)} (the deploy no longer reaches them).")
        return
    say(f"scale in done: {', '.join(removed)} drained, removed and forgotten.")


def remember(topo: topology.Topology) -> None:
    defaults = topology.parse(topo.path.read_text(), topo.path).options
    saved = topology.saved_options(topo.name)
    topology.save_options(topo.name, {**saved, **topo.scaled}, defaults)


def run_deploy(
    topo: topology.Topology, inventory_file: str | None, say: Callable[[str], None]
) -> None:
    say("scale: fab deploy (every host)...")
    report = deploy_op.deploy(topo.name, inventory_file, "")
    if report.failures:
        raise TaskError("the deploy failed (above); fix it and run `fab deploy` again")


def drain(
    topo: topology.Topology,
    eps: dict[str, inventory.Endpoint],
    servers: Sequence[str],
    say: Callable[[str], None],
) -> None:
    """Drain `servers` on every balancer, then wait until none holds a session."""
    balancers = topo.with_role("lb")
    with contextlib.ExitStack() as stack:
        remotes = [stack.enter_context(Remote(b, eps[b.name])) for b in balancers]
        for b, r in zip(balancers, remotes, strict=True):
            for backend in BACKENDS:
                for server in servers:
                    out = r.run(admin_command(f"set server {backend}/{server} state drain")).stdout
                    if out.strip():
                        raise TaskError(f"{b.name}: drain {backend}/{server}: {out.strip()}")
        say(f"scale: {', '.join(servers)} drained on {', '.join(b.name for b in balancers)}")
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while True:
            left = {
                b.name: sessions(r.run(admin_command("show stat")).stdout, servers)
                for b, r in zip(balancers, remotes, strict=True)
            }
            if not any(left.values()):
                say("scale: no session left on the drained servers")
                return
            if time.monotonic() > deadline:
                raise TaskError(
                    f"scale: sessions still open after {DRAIN_TIMEOUT:.0f} s: {left}; "
                    "nothing was removed (run it again, or `fab deploy` to undo the drain)"
                )
            time.sleep(0.5)


def vagrant(
    action: str, names: Sequence[str], topology_name: str, say: Callable[[str], None]
) -> None:
    cmd = ["vagrant", action, *(["-f"] if action == "destroy" else []), *names]
    say(f"scale: {' '.join(cmd)}")
    res = subprocess.run(
        cmd,
        cwd=PROJECT_ROOT,
        env=dict(os.environ, TESTBED_TOPOLOGY=topology_name),
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-8:])
        raise TaskError(f"`{' '.join(cmd)}` exited {res.returncode}:\n{tail}")
