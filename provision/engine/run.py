"""The run: every role on its hosts, tier by tier, hosts of one tier in parallel.

A step may notify a handler (reload a service), which runs once at the end of the role,
only if something it watches changed. Tiers run in :data:`provision.topology.TIER_ORDER`;
the run stops after the first tier that fails and says which host and step.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from provision import STATE_DIR
from provision.engine.remote import Remote
from provision.engine.steps import (
    Command,
    File,
    FlushHandlers,
    Handler,
    Packages,
    Service,
    Step,
    prefetch,
)
from provision.inventory import Endpoint
from provision.topology import TIER_ORDER, Host, Topology

PREFETCHED = (File, Packages, Service, Command)
"""The steps whose first check :func:`provision.engine.steps.prefetch` reads ahead."""
READ_AHEAD_HOLD = 5
"""Steps to go without reading ahead after a read whose first step changed anything."""


@dataclass(frozen=True)
class HostContext:
    topology: Topology
    host: Host
    facts: Mapping[str, str] = field(default_factory=dict)
    """Read from the machine at connect time (see Remote.facts), plus cluster facts
    (`db_primary`) the deploy discovered before it started."""
    peer: Callable[[str], Remote] | None = None
    """Another host's Remote, for steps that move data between hosts:
    ``with ctx.peer(name) as other:`` connects and always closes."""


@dataclass(frozen=True)
class Role:
    name: str
    tier: str
    steps: Callable[[HostContext], list[Step]]
    handlers: Sequence[Handler] = ()


@dataclass
class StepRecord:
    host: str
    role: str
    step: str
    changed: bool
    detail: str
    seconds: float


@dataclass
class Failure:
    host: str
    role: str
    step: str
    error: str


@dataclass
class Report:
    topology: str
    records: list[StepRecord] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def changes(self) -> list[StepRecord]:
        return [r for r in self.records if r.changed]

    def to_json(self) -> dict[str, Any]:
        return {
            "topology": self.topology,
            "seconds": round(self.seconds, 1),
            "changes": [r.__dict__ for r in self.changes],
            "steps": len(self.records),
            "failures": [f.__dict__ for f in self.failures],
        }


class Printer:
    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.lock = threading.Lock()

    def line(self, text: str) -> None:
        with self.lock:
            print(text, file=self.out, flush=True)

    def step(
        self, host: str, status: str, name: str, detail: str = "", seconds: float = 0.0
    ) -> None:
        extra = f" ({detail})" if detail else ""
        took = f" [{seconds:.0f} s]" if seconds >= 2 else ""
        self.line(f"  {host:<10} {status:<8} {name}{extra}{took}")


def _run_handlers(
    remote: Remote, role: Role, notified: list[str], host: str, report: Report, printer: Printer
) -> bool:
    """Run the notified handlers of `role` once each; False if one failed."""
    for handler in role.handlers:
        if handler.key not in notified:
            continue
        remote.known.clear()  # what was read before may not hold after it
        started = time.monotonic()
        try:
            remote.run(handler.command)
        except Exception as exc:
            printer.step(host, "FAILED", handler.name, str(exc))
            report.failures.append(Failure(host, role.name, handler.name, str(exc)))
            return False
        took = time.monotonic() - started
        report.records.append(StepRecord(host, role.name, handler.name, True, "", took))
        printer.step(host, "changed", handler.name, "", took)
    notified.clear()
    return True


def _run_host(
    remote: Remote, roles: Sequence[Role], ctx: HostContext, report: Report, printer: Printer
) -> None:
    host = ctx.host.name
    for role in roles:
        notified: list[str] = []
        try:
            planned = role.steps(ctx)
        except Exception as exc:  # a role that cannot plan names the host and why
            what = f"Plan the {role.name} role's steps."
            printer.step(host, "FAILED", what, str(exc))
            report.failures.append(Failure(host, role.name, what, str(exc)))
            return
        # The steps' first checks are read in one round trip (prefetch) and trusted until
        # a step changes something; then again at the next step, unless changes come one
        # after another (a first deploy), where reading ahead would only add round trips.
        fresh, served, hold = False, 0, 0
        for i, step in enumerate(planned):
            if isinstance(step, FlushHandlers):
                if not _run_handlers(remote, role, notified, host, report, printer):
                    return
                fresh = fresh and bool(remote.known)  # a handler ran: read again
                continue
            if not fresh and hold == 0 and isinstance(step, PREFETCHED):
                prefetch(remote, planned[i:])
                fresh, served = True, 0
            hold = max(0, hold - 1)
            started = time.monotonic()
            try:
                outcome = step.apply(remote)
            except Exception as exc:  # any error is reported against the host and step
                remote.known.clear()
                printer.step(host, "FAILED", step.name, str(exc))
                report.failures.append(Failure(host, role.name, step.name, str(exc)))
                # What changed before the failure is on the machine already: its services
                # take it up now, not whenever a later deploy happens to notify them again.
                _run_handlers(remote, role, notified, host, report, printer)
                return
            took = time.monotonic() - started
            report.records.append(
                StepRecord(host, role.name, step.name, outcome.changed, outcome.detail, took)
            )
            printer.step(
                host, "changed" if outcome.changed else "ok", step.name, outcome.detail, took
            )
            if outcome.changed:
                notified += [n for n in step.notify if n not in notified]
                remote.known.clear()
                if fresh and served == 0:
                    hold = READ_AHEAD_HOLD
                fresh = False
            elif fresh:
                served += 1
            if isinstance(step, Service) and "started" in outcome.detail.split(", "):
                # It has just started with every change made so far: restarting it now
                # would only cost a second stop (gunicorn's took 30 s on a first deploy).
                for key in (f"restart {step.unit}", f"reload {step.unit}"):
                    if key in notified:
                        notified.remove(key)
        if not _run_handlers(remote, role, notified, host, report, printer):
            return


def deploy(
    topology: Topology,
    endpoints: dict[str, Endpoint],
    roles: Iterable[Role],
    *,
    only_hosts: Sequence[str] = (),
    shared_facts: Mapping[str, str] | None = None,
    printer: Printer | None = None,
    record: Path | None = STATE_DIR / "last-deploy.json",
) -> Report:
    """Run every role on its hosts, tier by tier; stop after the first tier that fails."""
    printer = printer or Printer()
    report = Report(topology.name)
    started = time.monotonic()
    by_tier: dict[str, list[Role]] = {}
    for role in roles:
        by_tier.setdefault(role.tier, []).append(role)
    selected = [h for h in topology if not only_hosts or h.name in only_hosts]
    remotes: dict[str, Remote] = {}
    contexts: dict[str, HostContext] = {}
    try:
        for tier in TIER_ORDER:
            tier_roles = by_tier.get(tier, [])
            hosts = [h for h in selected if h in topology.in_tier(tier)] if tier_roles else []
            if not hosts:
                continue
            printer.line(f"==> {tier}: {', '.join(h.name for h in hosts)}")
            with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
                futures = []
                for host in hosts:
                    futures.append(
                        pool.submit(
                            _host_worker,
                            host,
                            endpoints,
                            remotes,
                            tier_roles,
                            topology,
                            report,
                            printer,
                            dict(shared_facts or {}),
                            contexts,
                        )
                    )
                for f in futures:
                    f.result()
            if report.failures:
                break
            if tier == TIER_ORDER[0]:
                # Every host's firewall is up: install what its later roles need, every
                # host at once and in one apt run each, not role by role and tier by tier.
                _install_ahead(selected, by_tier, topology, contexts, remotes, report, printer)
                if report.failures:
                    break
    finally:
        for remote in remotes.values():
            remote.close()
    report.seconds = time.monotonic() - started
    if record is not None:
        record.parent.mkdir(mode=0o700, exist_ok=True)
        record.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return report


def _host_worker(
    host: Host,
    endpoints: dict[str, Endpoint],
    remotes: dict[str, Remote],
    roles: Sequence[Role],
    topology: Topology,
    report: Report,
    printer: Printer,
    shared_facts: dict[str, str],
    contexts: dict[str, HostContext],
) -> None:
    remote = remotes.get(host.name)
    if remote is None:
        endpoint = endpoints[host.name]
        step = f"Connect over SSH to {endpoint.user}@{endpoint.hostname}:{endpoint.port}."
        try:
            remote = Remote(host, endpoint, background=True)  # below the services
            remote.connect()
        except Exception as exc:
            printer.step(host.name, "FAILED", step, f"{type(exc).__name__}: {exc}")
            report.failures.append(
                Failure(host.name, "connect", step, f"{type(exc).__name__}: {exc}")
            )
            return
        remotes[host.name] = remote
    remote.progress = lambda message: printer.line(f"  {host.name:<10} ...      {message}")
    try:
        # Read once per deploy: what they say (addresses, CPUs, the management path) does
        # not change between tiers, and each read starts a Python on the machine.
        known = contexts.get(host.name)
        facts = known.facts if known is not None else remote.facts()
    except Exception as exc:
        printer.step(host.name, "FAILED", "Read the machine's facts.", str(exc))
        report.failures.append(Failure(host.name, "facts", "Read the machine's facts.", str(exc)))
        return

    def peer(name: str) -> Remote:
        return Remote(topology.hosts[name], endpoints[name], background=True)

    ctx = HostContext(topology, host, {**facts, **shared_facts}, peer)
    first = host.name not in contexts
    contexts[host.name] = ctx
    if first and not _install_packages(remote, ctx, roles, report, printer, INSTALL_FIRST):
        return
    _run_host(remote, roles, ctx, report, printer)


INSTALL_AHEAD = "Ensure the packages of this host's later roles are installed (one apt run)."
INSTALL_FIRST = "Ensure the packages of this host's first roles are installed (one apt run)."


def _install_packages(
    remote: Remote,
    ctx: HostContext,
    roles: Iterable[Role],
    report: Report,
    printer: Printer,
    name: str,
    start_services: bool = True,
) -> bool:
    """One Packages step for every package the Packages steps of `roles` install: one
    dpkg run and one set of triggers instead of one per step (a web host's packages took
    16 s at once, 34 s one step at a time, measured in a box container). Each step then
    finds its packages installed. False if it failed (reported against the host)."""
    wanted: list[str] = []
    for role in roles:
        try:
            planned = role.steps(ctx)
        except Exception:  # the role reports it itself, at its turn
            continue
        for step in planned:
            if isinstance(step, Packages):
                wanted += [p for p in step.packages if p not in wanted]
    if not wanted:
        return True
    step = Packages(tuple(wanted), name=name, start_services=start_services)
    host = ctx.host.name
    started = time.monotonic()
    try:
        outcome = step.apply(remote)
    except Exception as exc:
        printer.step(host, "FAILED", step.name, str(exc))
        report.failures.append(Failure(host, "packages", step.name, str(exc)))
        return False
    took = time.monotonic() - started
    report.records.append(StepRecord(host, "packages", name, outcome.changed, outcome.detail, took))
    printer.step(host, "changed" if outcome.changed else "ok", name, outcome.detail, took)
    return True


def _install_ahead(
    hosts: Sequence[Host],
    by_tier: Mapping[str, Sequence[Role]],
    topology: Topology,
    contexts: Mapping[str, HostContext],
    remotes: Mapping[str, Remote],
    report: Report,
    printer: Printer,
) -> None:
    """Once the first tier has put up every firewall: what each host's later roles
    install, in one apt run per host, every host at once (instead of role by role, and
    tier after tier)."""

    def one(host: Host) -> None:
        later = [
            role
            for tier in TIER_ORDER[1:]
            if host in topology.in_tier(tier)
            for role in by_tier.get(tier, [])
        ]
        _install_packages(
            remotes[host.name],
            contexts[host.name],
            later,
            report,
            printer,
            INSTALL_AHEAD,
            # Their services start once their role has configured them, not with the
            # packages' defaults (the first roles' start as they always did).
            start_services=False,
        )

    todo = [h for h in hosts if h.name in contexts and h.name in remotes]
    if not todo:
        return
    printer.line(f"==> packages: {', '.join(h.name for h in todo)}")
    with ThreadPoolExecutor(max_workers=len(todo)) as pool:
        for f in [pool.submit(one, h) for h in todo]:
            f.result()


def summary(report: Report) -> str:
    lines = []
    hosts = sorted({r.host for r in report.records} | {f.host for f in report.failures})
    lines.append(f"Summary ({report.topology}, {report.seconds:.0f} s):")
    for host in hosts:
        recs = [r for r in report.records if r.host == host]
        changed = [r for r in recs if r.changed]
        lines.append(f"  {host:<10} {len(changed)} changed, {len(recs) - len(changed)} ok")
        for r in changed:
            lines.append(f"      changed: {r.step}" + (f" ({r.detail})" if r.detail else ""))
    for f in report.failures:
        lines.append(f"  FAILED on {f.host}, role {f.role}, step {f.step!r}: {f.error}")
    if report.failures:
        lines.append(
            "Deploy failed. Fix the cause and run `fab deploy` again: "
            "every step re-checks its state."
        )
    elif not report.changes:
        lines.append("No changes: every host already matched the wanted state.")
    else:
        lines.append(f"{len(report.changes)} changes applied.")
    return "\n".join(lines)
