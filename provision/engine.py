"""The idempotent deploy engine.

Every step reads the current state over SSH, compares it with the wanted state,
and either acts or reports "already so". A file is pushed only when its content
or mode differs; a step may notify a handler (reload a service), which runs once
at the end of the role, only if something it watches changed. Hosts of one tier
run in parallel; tiers run in :data:`provision.topology.TIER_ORDER`.
"""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import jinja2

from provision import PROJECT_ROOT, STATE_DIR
from provision.inventory import Endpoint
from provision.topology import TIER_ORDER, Host, Topology

ROLES_DIR = PROJECT_ROOT / "provision" / "roles"
PROJECT = "webinfra-testbed"


class StepError(RuntimeError):
    """A step could not reach its wanted state; the message says what the host answered."""


@dataclass(frozen=True)
class Outcome:
    changed: bool
    detail: str = ""


OK = Outcome(False)


# --------------------------------------------------------------------------- remote access


@dataclass(frozen=True)
class CommandResult:
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


class Remote:
    """A machine reached over SSH, with root rights through passwordless sudo."""

    def __init__(self, host: Host, endpoint: Endpoint) -> None:
        from fabric import Config, Connection

        self.host = host
        self.endpoint = endpoint
        self.conn = Connection(
            endpoint.hostname,
            user=endpoint.user,
            port=endpoint.port,
            connect_kwargs=endpoint.connect_kwargs(),
            connect_timeout=10,
            # Remote output is UTF-8 whatever this machine's locale says; otherwise a
            # database dump passing through here loses every non-ASCII character.
            config=Config(overrides={"run": {"encoding": "utf-8"}}),
        )
        self._root = endpoint.user == "root"
        self.progress: Callable[[str], None] = lambda message: None

    def connect(self) -> None:
        self.conn.open()

    def close(self) -> None:
        self.conn.close()

    def run(self, command: str, *, check: bool = True, stdin: str | None = None) -> CommandResult:
        """Run a shell command as root. With check, a non-zero exit raises StepError.

        `stdin` travels as a private temporary file (mode 0600), never in the command line,
        so secrets in it do not show in `ps`; it is removed after the command.
        """
        script = command
        if stdin is not None:
            tmp = shlex.quote(self.put_bytes(stdin.encode()))
            script = f"( {command} ) < {tmp}; rc=$?; rm -f {tmp}; exit $rc"
        wrapped = script if self._root else f"sudo -n -- sh -c {shlex.quote(script)}"
        res = self.conn.run(wrapped, hide=True, warn=True, in_stream=False)
        result = CommandResult(res.exited, res.stdout, res.stderr)
        if check and not result.ok:
            raise StepError(_failure_text(command, result))
        return result

    def facts(self) -> dict[str, str]:
        """What roles need to know about the machine before they plan their steps."""
        # Not through sudo, which drops SSH_CLIENT: the address our session comes from is
        # the management path the firewall must keep open.
        res = self.conn.run(
            "echo $SSH_CLIENT; nproc; uname -m; "
            "python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'",
            hide=True,
            in_stream=False,
            warn=True,
        )
        lines = res.stdout.splitlines() + ["", "", "", ""]
        client = lines[0].split()
        return {
            "ssh_client": client[0] if client else "127.0.0.1",
            "cpus": lines[1].strip() or "1",
            "arch": lines[2].strip(),
            "python": lines[3].strip(),
        }

    def output_bytes(self, command: str) -> bytes:
        """Run a command as root and return its standard output exactly, as bytes.

        For large or non-ASCII output (a database dump): the output goes to a private file
        fetched over SFTP, since streamed output is decoded chunk by chunk and a character
        split across two chunks would be mangled.
        """
        tmp = self.conn.run("mktemp", hide=True, in_stream=False).stdout.strip()
        try:
            self.run(f"( {command} ) > {shlex.quote(tmp)}")
            buf = io.BytesIO()
            self.conn.get(tmp, local=buf)
            return buf.getvalue()
        finally:
            self.conn.run(f"rm -f {shlex.quote(tmp)}", hide=True, in_stream=False, warn=True)

    def put_bytes(self, content: bytes) -> str:
        """Upload to a private temporary file (mode 0600, owned by the login user)."""
        tmp = self.conn.run("mktemp", hide=True, in_stream=False).stdout.strip()
        self.conn.put(io.BytesIO(content), remote=tmp)
        return tmp


def _failure_text(command: str, result: CommandResult) -> str:
    out = (result.stderr.strip() or result.stdout.strip()).splitlines()[-6:]
    shown = command if len(command) < 160 else command[:157] + "..."
    return f"`{shown}` exited {result.rc}" + (": " + " | ".join(out) if out else "")


# --------------------------------------------------------------------------- steps


class Step:
    """One idempotent unit of work with a sentence name ("Ensure ... is ...")."""

    name: str
    notify: Sequence[str]

    def apply(self, remote: Remote) -> Outcome:
        raise NotImplementedError


@dataclass
class Packages(Step):
    packages: Sequence[str]
    name: str = ""
    notify: Sequence[str] = ()

    def __post_init__(self) -> None:
        self.name = self.name or f"Ensure {', '.join(self.packages)} are installed."

    def apply(self, remote: Remote) -> Outcome:
        query = "dpkg-query -W -f='${Package} ${db:Status-Status}\\n' " + " ".join(self.packages)
        res = remote.run(query + " 2>/dev/null", check=False)
        installed = {
            line.split()[0].split(":")[0]
            for line in res.stdout.splitlines()
            if line.endswith(" installed")
        }
        missing = [p for p in self.packages if p not in installed]
        if not missing:
            return OK
        remote.progress(f"installing {', '.join(missing)}...")
        # Refresh the package lists when they are missing or older than a day.
        remote.run(
            "if [ -z \"$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440)\" ]; "
            "then apt-get update -q; fi"
        )
        remote.run(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
            "-o Dpkg::Options::=--force-confold " + " ".join(missing)
        )
        return Outcome(True, "installed " + ", ".join(missing))


@dataclass
class File(Step):
    """A file with exact content, mode and owner; validated before it goes live."""

    path: str
    content: str | bytes
    mode: str = "0644"
    owner: str = "root"
    group: str = "root"
    validate: str | None = None
    """Command run on the new file before it replaces the old one; `{path}` is the new file."""
    validate_in_place: str | None = None
    """For configs only checkable where they live (`nginx -t`): run after the swap; on
    failure the previous content is put back."""
    notify: Sequence[str] = ()
    secret: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"Ensure {self.path} is up to date."

    @property
    def data(self) -> bytes:
        return self.content.encode() if isinstance(self.content, str) else self.content

    def apply(self, remote: Remote) -> Outcome:
        want_sum = hashlib.sha256(self.data).hexdigest()
        want_meta = f"{int(self.mode, 8):o} {self.owner} {self.group}"
        p = shlex.quote(self.path)
        res = remote.run(
            f"if [ -f {p} ]; then sha256sum {p} | cut -d' ' -f1; stat -c '%a %U %G' {p}; "
            "else echo absent; fi"
        )
        lines = res.stdout.split("\n")
        have_sum, have_meta = (
            (lines[0], lines[1]) if len(lines) > 1 and lines[0] != "absent" else ("", "")
        )
        if have_sum == want_sum and have_meta == want_meta:
            return OK
        if have_sum == want_sum:
            remote.run(f"chmod {self.mode} {p} && chown {self.owner}:{self.group} {p}")
            return Outcome(True, f"mode/owner {have_meta} -> {want_meta}")
        tmp = remote.put_bytes(self.data)
        new = shlex.quote(self.path + ".testbed-new")
        script = [
            "set -e",
            f"install -D -m {self.mode} -o {self.owner} -g {self.group} {shlex.quote(tmp)} {new}",
            f"rm -f {shlex.quote(tmp)}",
        ]
        if self.validate:
            check = self.validate.format(path=new)
            script.append(
                f'if ! out=$({check} 2>&1); then rm -f {new}; echo "$out" >&2; exit 3; fi'
            )
        # Docker bind-mounts /etc/hosts and /etc/hostname: rename fails there, so copy.
        script.append(
            f"if ! mv -f {new} {p} 2>/dev/null; then cat {new} > {p}; rm -f {new}; "
            f"chmod {self.mode} {p}; chown {self.owner}:{self.group} {p}; fi"
        )
        if self.validate_in_place:
            old = shlex.quote(self.path + ".testbed-old")
            script[-1:] = [
                f"if [ -f {p} ]; then cp -p {p} {old}; fi",
                f"mv -f {new} {p}",
                f"if ! out=$({self.validate_in_place} 2>&1); then "
                f"if [ -f {old} ]; then mv -f {old} {p}; else rm -f {p}; fi; "
                'echo "$out" >&2; exit 3; fi',
                f"rm -f {old}",
            ]
        try:
            remote.run("\n".join(script))
        except StepError as exc:
            if self.validate or self.validate_in_place:
                check = self.validate or self.validate_in_place or ""
                raise StepError(
                    f"the new {self.path} failed validation ({check.split()[0]}), "
                    f"the old one stays: {exc}"
                ) from None
            raise
        return Outcome(True, "created" if not have_sum else "content updated")


@dataclass
class Command(Step):
    """A state reached by a command; `check` exits 0 when the state already holds."""

    name: str
    check: str
    run: str
    notify: Sequence[str] = ()
    check_stdin: str | None = None
    run_stdin: str | None = None
    """Input for the commands: how secrets (SQL with passwords) travel, never in argv."""

    def apply(self, remote: Remote) -> Outcome:
        if remote.run(self.check, check=False, stdin=self.check_stdin).ok:
            return OK
        remote.run(self.run, stdin=self.run_stdin)
        if not remote.run(self.check, check=False, stdin=self.check_stdin).ok:
            raise StepError(f"applied, but the check still fails: `{self.check}`")
        return Outcome(True)


@dataclass
class Service(Step):
    unit: str
    enabled: bool = True
    running: bool = True
    name: str = ""
    notify: Sequence[str] = ()

    def __post_init__(self) -> None:
        self.name = self.name or f"Ensure {self.unit} is enabled and running."

    def apply(self, remote: Remote) -> Outcome:
        u = shlex.quote(self.unit)
        enabled = remote.run(f"systemctl is-enabled {u}", check=False).stdout.strip() in (
            "enabled",
            "static",
        )
        active = remote.run(f"systemctl is-active {u}", check=False).stdout.strip() == "active"
        done = []
        if self.enabled and not enabled:
            remote.run(f"systemctl enable {u}")
            done.append("enabled")
        if self.running and not active:
            remote.run(f"systemctl start {u}")
            done.append("started")
        return Outcome(bool(done), ", ".join(done))


class FlushHandlers(Step):
    """Run the handlers notified so far now, not at the end of the role (for example:
    restart a database with its new config before later steps use it)."""

    name = "Run the pending handlers."
    notify = ()

    def apply(self, remote: Remote) -> Outcome:  # handled by the engine
        return OK


def system_user(name: str, home: str | None = None) -> Command:
    """A system account with no login shell, for a service to run as."""
    where = f"--home-dir {home}" if home else "--no-create-home"
    return Command(
        f"Ensure the {name} system user exists.",
        check=f"id -u {name} >/dev/null 2>&1",
        run=f"useradd --system {where} --shell /usr/sbin/nologin {name}",
    )


def role_script(role: str, filename: str, dest: str, service: str, name: str) -> File:
    """A script shipped from provision/roles/<role>/files/, restarting `service` on change."""
    return File(
        dest,
        (ROLES_DIR / role / "files" / filename).read_text(),
        mode="0755",
        notify=[f"restart {service}"],
        name=name,
    )


@dataclass
class Handler:
    """What a notified name does: run once per role, after its steps, if notified."""

    key: str
    name: str
    command: str


def restart_handler(unit: str) -> Handler:
    return Handler(
        f"restart {unit}",
        f"Restart {unit} (its configuration changed).",
        f"systemctl daemon-reload && systemctl restart {unit}",
    )


def reload_handler(unit: str) -> Handler:
    return Handler(
        f"reload {unit}",
        f"Reload {unit} (its configuration changed).",
        f"systemctl reload-or-restart {unit}",
    )


# --------------------------------------------------------------------------- templates


def render(role: str, template: str, comment: str = "#", **context: Any) -> str:
    """Render provision/roles/<role>/templates/<template> with a managed-by header."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(ROLES_DIR / role / "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    header = (
        f"{comment} Managed by {PROJECT} from provision/roles/{role}/templates/{template}; "
        "local edits are overwritten.\n"
    )
    return header + env.get_template(template).render(**context)


# --------------------------------------------------------------------------- roles and the run


@dataclass(frozen=True)
class HostContext:
    topology: Topology
    host: Host
    facts: Mapping[str, str] = field(default_factory=dict)
    """Read from the machine at connect time (see Remote.facts), plus cluster facts
    (`db_primary`) the deploy discovered before it started."""
    peer: Callable[[str], Remote] | None = None
    """Opens a connection to another host, for steps that move data between hosts."""


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
        for step in role.steps(ctx):
            if isinstance(step, FlushHandlers):
                if not _run_handlers(remote, role, notified, host, report, printer):
                    return
                continue
            started = time.monotonic()
            try:
                outcome = step.apply(remote)
            except Exception as exc:  # any error is reported against the host and step
                printer.step(host, "FAILED", step.name, str(exc))
                report.failures.append(Failure(host, role.name, step.name, str(exc)))
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
                        )
                    )
                for f in futures:
                    f.result()
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
) -> None:
    remote = remotes.get(host.name)
    if remote is None:
        endpoint = endpoints[host.name]
        step = f"Connect over SSH to {endpoint.user}@{endpoint.hostname}:{endpoint.port}."
        try:
            remote = Remote(host, endpoint)
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
        facts = remote.facts()
    except Exception as exc:
        printer.step(host.name, "FAILED", "Read the machine's facts.", str(exc))
        report.failures.append(Failure(host.name, "facts", "Read the machine's facts.", str(exc)))
        return

    def peer(name: str) -> Remote:
        other = Remote(topology.hosts[name], endpoints[name])
        other.connect()
        return other

    ctx = HostContext(topology, host, {**facts, **shared_facts}, peer)
    _run_host(remote, roles, ctx, report, printer)


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
