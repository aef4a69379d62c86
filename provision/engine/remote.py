"""A machine reached over SSH, with root rights through passwordless sudo.

`with Remote(host, endpoint) as r:` opens the connection and always closes it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shlex
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from provision.inventory import Endpoint
from provision.topology import Host


class StepError(RuntimeError):
    """A step could not reach its wanted state; the message says what the host answered."""


@dataclass(frozen=True)
class CommandResult:
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


class UnknownHostKey(RuntimeError):
    """A server whose SSH host key is not known (an inventory's servers must be)."""


_RECORD_LOCK = threading.Lock()


def fingerprint(key: Any) -> str:
    """OpenSSH's form: SHA256:<base64 of the key's SHA-256, unpadded>."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


def host_key_policy(endpoint: Endpoint, known_hosts: Path) -> Any:
    """What to do with a host key not in `known_hosts`: record it (a testbed machine, at
    its first contact: trust on first use, then verified on every later connection), or
    refuse it (an inventory's server: its key must be known beforehand)."""
    import paramiko

    class RecordFirstKey(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            client.get_host_keys().add(hostname, key.get_name(), key)
            with _RECORD_LOCK:
                known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(known_hosts, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                with os.fdopen(fd, "a") as out:
                    out.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")

    class RequireKnownKey(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            raise UnknownHostKey(
                f"its SSH host key ({fingerprint(key)}) is not in {known_hosts}: add it "
                f"there once you have checked it (ssh-keyscan -p {endpoint.port} "
                f"{endpoint.hostname}, and compare with the server's own "
                "`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`)"
            )

    return RecordFirstKey() if endpoint.record_new_key else RequireKnownKey()


NICE = "nice -n 10"
"""The deploy's commands run below the services they configure (Remote(..., background=True),
the deploy engine only): on a 2-core host a deploy of nine or ten machines keeps both cores
busy, and the database nodes' agents, the app hosts' database endpoints and the balancers'
health checks must still answer in time (a check that misses its half second cuts
sessions; docs/scaling.md). Services the deploy starts or restarts run at their own
priority: systemd starts them, not this shell. Drills, probes and benches run at the
normal priority: their timings are what they measure."""


class Remote:
    """A machine reached over SSH, with root rights through passwordless sudo."""

    def __init__(self, host: Host, endpoint: Endpoint, *, background: bool = False) -> None:
        from fabric import Config, Connection

        self.host = host
        self.endpoint = endpoint
        self._nice = f"{NICE} " if background else ""
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
        self.known: dict[tuple[str, ...], Any] = {}
        """What one batched read found on the machine (File, Packages, Service and Command
        steps' first checks, see :func:`provision.engine.steps.prefetch`); the engine
        clears it as soon as a step changes anything."""
        self.progress: Callable[[str], None] = lambda message: None
        # Fabric's default accepts any host key (paramiko's AutoAddPolicy, never saved):
        # verify it instead (host_key_policy).
        self.known_hosts = Path(endpoint.known_hosts or Path.home() / ".ssh" / "known_hosts")
        self.conn.client.set_missing_host_key_policy(host_key_policy(endpoint, self.known_hosts))

    def connect(self) -> None:
        """Open the connection; on failure nothing is left open. For connections kept in a
        pool (drills); one-off work uses ``with Remote(...) as remote:``."""
        import paramiko

        where = f"{self.endpoint.hostname}:{self.endpoint.port}"
        try:
            if self.known_hosts.exists():
                self.conn.client.load_host_keys(str(self.known_hosts))
            self.conn.open()
        except paramiko.BadHostKeyException as exc:
            self.conn.close()
            raise StepError(
                f"{self.host.name} ({where}) presented the SSH host key {fingerprint(exc.key)}, "
                f"not the one recorded in {self.known_hosts}: a machine in the middle, or the "
                "server was reinstalled. Check the server's key; if it is right, remove the "
                f"old line (ssh-keygen -f {self.known_hosts} -R {exc.hostname!r})."
            ) from None
        except UnknownHostKey as exc:
            self.conn.close()
            raise StepError(f"{self.host.name} ({where}): {exc}") from None
        except BaseException:
            self.conn.close()
            raise

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Remote:
        if not self.conn.is_connected:
            self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def run(self, command: str, *, check: bool = True, stdin: str | None = None) -> CommandResult:
        """Run a shell command as root. With check, a non-zero exit raises StepError.

        `stdin` travels as a private temporary file (mode 0600), never in the command line,
        so secrets in it do not show in `ps`; it is removed after the command.
        """
        # A fixed umask: what the deploy creates never depends on the login's (a hardened
        # server's login.defs may say 027, which would hide configs from service users).
        script = f"umask 022; {command}"
        if stdin is not None:
            tmp = shlex.quote(self.put_bytes(stdin.encode()))
            script = f"( {script} ) < {tmp}; rc=$?; rm -f {tmp}; exit $rc"
        sudo = "" if self._root else "sudo -n -- "
        wrapped = f"{self._nice}{sudo}sh -c {shlex.quote(script)}"
        res = self.conn.run(wrapped, hide=True, warn=True, in_stream=False)
        result = CommandResult(res.exited, res.stdout, res.stderr)
        if check and not result.ok:
            raise StepError(_failure_text(command, result))
        return result

    def run_script(self, script: str) -> CommandResult:
        """Run a shell script as root in one round trip, sent on the session's standard
        input: many checks at the cost of one command, and what they read on their own
        input (SQL with passwords) never shows in `ps`. Its standard error is discarded."""
        shell = f"{self._nice}sh -s" if self._root else f"{self._nice}sudo -n -- sh -s"
        if not self.conn.is_connected:
            self.connect()
        chan = self.conn.client.get_transport().open_session()
        try:
            chan.exec_command(shell)
            chan.sendall(f"exec 2>/dev/null\numask 022\n{script}\n".encode())
            chan.shutdown_write()
            out = chan.makefile("rb").read().decode("utf-8", "replace")
            rc = chan.recv_exit_status()
        finally:
            chan.close()
        return CommandResult(rc, out, "")

    def facts(self) -> dict[str, str]:
        """What roles need to know about the machine before they plan their steps."""
        # Not through sudo, which drops SSH_CLIENT: the address our session comes from is
        # the management path the firewall must keep open.
        res = self.conn.run(
            "echo $SSH_CLIENT; nproc; uname -m; "
            "python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'; "
            "ip -o -4 addr show 2>/dev/null | awk '{print $2 \"=\" $4}' | tr '\\n' ' '; "
            "echo; id -un; "
            # The interface the management source is reached through (empty if unknown).
            'echo "$(ip route get "${SSH_CLIENT%% *}" 2>/dev/null '
            "| sed -n 's/.* dev \\([^ ]*\\).*/\\1/p' | head -n 1)\"",
            hide=True,
            in_stream=False,
            warn=True,
        )
        lines = res.stdout.splitlines() + [""] * 8
        client = lines[0].split()
        return {
            "ssh_client": client[0] if client else "127.0.0.1",
            "cpus": lines[1].strip() or "1",
            "arch": lines[2].strip(),
            "python": lines[3].strip(),
            # "eth1=192.168.56.11/24 eth2=..."; read with interface_of().
            "interfaces": lines[4].strip(),
            # Who the deploy logs in as: the one account sshd lets in (AllowUsers).
            "ssh_user": lines[5].strip(),
            "ssh_iface": lines[6].strip(),
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


def interface_of(facts: Mapping[str, str], address: str) -> str | None:
    """The interface that holds `address`, from the `interfaces` fact."""
    for item in facts.get("interfaces", "").split():
        name, _, cidr = item.partition("=")
        if cidr.split("/")[0] == address:
            return name
    return None
