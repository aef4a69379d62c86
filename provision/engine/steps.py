"""Steps: idempotent units of work that check, act and re-check; handlers; templates.

Every step reads the current state over SSH, compares it with the wanted state,
and either acts or reports "already so". A file is pushed only when its content
or mode differs, and is validated before it goes live.
"""

from __future__ import annotations

import hashlib
import secrets
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jinja2

from provision import PROJECT_ROOT
from provision.engine.remote import Remote, StepError

ROLES_DIR = PROJECT_ROOT / "provision" / "roles"
PROJECT = "webinfra-testbed"


@dataclass(frozen=True)
class Outcome:
    changed: bool
    detail: str = ""


OK = Outcome(False)


class Step:
    """One idempotent unit of work with a sentence name ("Ensure ... is ...")."""

    name: str
    notify: Sequence[str]

    def apply(self, remote: Remote) -> Outcome:
        raise NotImplementedError


POLICY_RC = "/usr/sbin/policy-rc.d"
"""Debian's hook asked before a package's maintainer script starts a service (101: no)."""


@dataclass
class Packages(Step):
    packages: Sequence[str]
    name: str = ""
    notify: Sequence[str] = ()
    start_services: bool = True
    """False: the packages' services are installed (and enabled) but not started, through
    Debian's policy-rc.d: they first run once their role has configured them (a
    Prometheus started with the package's own config would store series without the
    testbed's labels)."""

    def __post_init__(self) -> None:
        self.name = self.name or f"Ensure {', '.join(self.packages)} are installed."

    def apply(self, remote: Remote) -> Outcome:
        if all(remote.known.get(("package", p)) == "installed" for p in self.packages):
            return OK
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
        install = (
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
            "-o Dpkg::Options::=--force-confold " + " ".join(missing)
        )
        if not self.start_services:
            # Only where no policy of the machine's own is in place, and always removed.
            install = (
                f"if [ -e {POLICY_RC} ]; then {install}; else "
                f"trap 'rm -f {POLICY_RC}' EXIT; printf '#!/bin/sh\\nexit 101\\n' > {POLICY_RC}; "
                f"chmod 0755 {POLICY_RC}; {install}; fi"
            )
        remote.run(install)
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
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"Ensure {self.path} is up to date."

    @property
    def data(self) -> bytes:
        return self.content.encode() if isinstance(self.content, str) else self.content

    def apply(self, remote: Remote) -> Outcome:
        want_sum = hashlib.sha256(self.data).hexdigest()
        want_meta = f"{int(self.mode, 8):o} {self.owner} {self.group}"
        if remote.known.get(("file", self.path)) == (want_sum, want_meta):
            return OK
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
        if remote.known.get(("check", self.check, self.check_stdin or "")) == 0:
            return OK
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
        seen = remote.known.get(("unit", self.unit))
        if seen is not None:
            enabled, active = seen[0] in ("enabled", "static"), seen[1] == "active"
            if (enabled or not self.enabled) and (active or not self.running):
                return OK
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
            # A package may have started its service before its config was in place and
            # left it failed past systemd's start limit ("start request repeated too
            # quickly": hardened's mysqld exporters, first deploy): clear that first.
            # daemon-reload: a unit file changed earlier in this deploy takes effect.
            remote.run(
                f"systemctl daemon-reload; systemctl reset-failed {u} 2>/dev/null; "
                f"systemctl start {u}"
            )
            done.append("started")
        return Outcome(bool(done), ", ".join(done))


class FlushHandlers(Step):
    """Run the handlers notified so far now, not at the end of the role (for example:
    restart a database with its new config before later steps use it)."""

    name = "Run the pending handlers."
    notify = ()

    def apply(self, remote: Remote) -> Outcome:  # handled by the engine
        return OK


def prefetch(remote: Remote, steps: Sequence[Step]) -> int:
    """Read in one round trip what the File, Packages, Service and Command steps among
    `steps` check first, into `remote.known`; return how many steps that covers.

    A step trusts what was read only to find that its state already holds, and only
    until the engine clears `remote.known` (any change, any handler): a state read
    before a change may not hold after it. Anything else takes the step's own path (read
    again, act, check), so a deploy that changes nothing costs one round trip per role
    instead of one or more per step (issue 14: 12.9 s for a no-op seed deploy)."""
    token = "TESTBED_" + secrets.token_hex(8)
    lines: list[str] = []
    queries: dict[str, tuple[str, ...]] = {}
    packages: list[str] = []
    files: list[str] = []
    units: list[str] = []

    covered = 0
    for step in steps:
        if isinstance(step, File):
            files += [step.path] if step.path not in files else []
        elif isinstance(step, Packages):
            packages += [p for p in step.packages if p not in packages]
        elif isinstance(step, Service):
            units += [step.unit] if step.unit not in units else []
        elif isinstance(step, Command):
            stdin = step.check_stdin
            if stdin is None:
                feed = " </dev/null"
            elif stdin.endswith("\n") and token not in stdin:
                # A here-document: the input travels inside the script, on standard input.
                feed = f" <<'{token}'\n{stdin}{token}\n"
            else:
                continue
            tag = f"K{len(queries)}"
            queries[tag] = ("check", step.check, stdin or "")
            lines.append(f"(\n{step.check}\n) >/dev/null 2>&1{feed}")
            lines.append(f'echo "{tag} $?"')
        else:
            continue
        covered += 1
    # Every file in two processes and every unit in one, not five and two of each: on a
    # no-op deploy the machines' CPU, not the round trips, is what the read costs.
    if files:
        quoted = " ".join(shlex.quote(f) for f in files)
        lines.append(f"sha256sum -- {quoted} | sed 's/^/H /'")
        lines.append(f"stat -c 'M %a %U %G|%n' -- {quoted}")
    if units:
        quoted = " ".join(shlex.quote(u) for u in units)
        lines.append(f"systemctl show -p UnitFileState -p ActiveState {quoted} | sed 's/^/U /'")
    if packages:
        lines.append(
            "dpkg-query -W -f='P ${Package} ${db:Status-Status}\\n' "
            + " ".join(shlex.quote(p) for p in packages)
        )
    remote.known.clear()
    if not covered:
        return 0
    try:
        out = remote.run_script("\n".join(lines)).stdout
    except Exception:  # the steps read for themselves, and report any error as their own
        return 0
    sums: dict[str, str] = {}
    metas: dict[str, str] = {}
    blocks: list[dict[str, str]] = [{}]
    for line in out.splitlines():
        tag, _, value = line.partition(" ")
        if tag == "P":
            name, _, status = value.partition(" ")
            remote.known[("package", name.split(":")[0])] = status
        elif tag == "H":
            digest, _, path = value.partition("  ")  # an escaped name (a leading \) matches none
            sums[path] = digest
        elif tag == "M":
            meta, _, path = value.partition("|")
            metas[path] = meta
        elif tag == "U":
            if value:
                prop, _, state = value.partition("=")
                blocks[-1][prop] = state
            elif blocks[-1]:
                blocks.append({})  # a blank line ends a unit's block
        elif tag in queries and value.strip().isdigit():
            remote.known[queries[tag]] = int(value)
    for path in files:
        if path in sums and path in metas:
            remote.known[("file", path)] = (sums[path], metas[path])
    blocks = [b for b in blocks if b]
    if len(blocks) == len(units):  # one block per unit, in order; otherwise none is trusted
        for unit, block in zip(units, blocks, strict=True):
            if "UnitFileState" in block and "ActiveState" in block:
                remote.known[("unit", unit)] = (block["UnitFileState"], block["ActiveState"])
    return covered


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
        f"systemctl daemon-reload && {{ systemctl reset-failed {unit} 2>/dev/null; "
        f"systemctl restart {unit}; }}",
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
