"""A machine reached over SSH, with root rights through passwordless sudo.

`with Remote(host, endpoint) as r:` opens the connection and always closes it.
"""

from __future__ import annotations

import io
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType

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
        """Open the connection; on failure nothing is left open. For connections kept in a
        pool (drills); one-off work uses ``with Remote(...) as remote:``."""
        try:
            self.conn.open()
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
            "python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'; "
            "ip -o -4 addr show 2>/dev/null | awk '{print $2 \"=\" $4}' | tr '\\n' ' '; "
            "echo; id -un",
            hide=True,
            in_stream=False,
            warn=True,
        )
        lines = res.stdout.splitlines() + ["", "", "", "", "", ""]
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
