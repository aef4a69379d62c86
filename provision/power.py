"""Stopping and starting whole machines, for the machine-level faults (`fab drill stop`,
the reboot and halt tests).

Vagrant machines: ``vagrant halt`` / ``vagrant up``. Servers from an inventory file: the
``power.stop`` / ``power.start`` commands of each host (run on this machine), or, without
them, an error that says what to add. Every action is timed.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass

from provision import PROJECT_ROOT
from provision.inventory import Endpoint, selected
from provision.topology import Topology


class PowerError(RuntimeError):
    """A machine could not be stopped or started; the message names it and the command."""


@dataclass(frozen=True)
class Power:
    topology: Topology
    endpoints: Mapping[str, Endpoint]
    inventory_file: str | None = None

    def command(self, action: str, host: str) -> list[str]:
        """The command that does `action` ("stop" or "start") to `host`."""
        if not selected(self.inventory_file):
            verb = {"stop": "halt", "start": "up"}[action]
            return ["vagrant", verb, host]
        cmd = self.endpoints[host].power_command(action)
        if not cmd:
            raise PowerError(
                f"{host}: the inventory gives no power.{action} command, so this machine "
                f"cannot be {'stopped' if action == 'stop' else 'started'} from here "
                "(docs/inventory.md)"
            )
        try:
            return shlex.split(cmd)
        except ValueError as exc:
            raise PowerError(f"{host}: power.{action}: cannot read {cmd!r}: {exc}") from None

    def available(self, host: str) -> bool:
        try:
            self.command("stop", host)
            self.command("start", host)
        except PowerError:
            return False
        return True

    def run(self, action: str, host: str, timeout: float = 900) -> float:
        """Stop or start `host`; returns the seconds it took."""
        cmd = self.command(action, host)
        shown = " ".join(cmd)
        started = time.monotonic()
        try:
            res = subprocess.run(
                cmd,
                cwd=PROJECT_ROOT,
                env=dict(os.environ, TESTBED_TOPOLOGY=self.topology.name),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PowerError(f"{action} {host}: `{shown}`: {exc}") from None
        if res.returncode != 0:
            tail = " | ".join((res.stderr or res.stdout).strip().splitlines()[-4:])
            raise PowerError(f"{action} {host}: `{shown}` exited {res.returncode}: {tail}")
        if action == "start":
            self.wait_for_ssh(host, started + timeout)
        return time.monotonic() - started

    def wait_for_ssh(self, host: str, deadline: float) -> None:
        """Until the host's sshd sends its banner: the machine has booted far enough to be
        reached (a started container or VM returns before that)."""
        ep = self.endpoints[host]
        while True:
            try:
                with socket.create_connection((ep.hostname, ep.port), timeout=3) as sock:
                    sock.settimeout(3)
                    if sock.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise PowerError(f"start {host}: no SSH at {ep.hostname}:{ep.port} after the start")
            time.sleep(1)

    def restart(self, host: str) -> float:
        return self.run("stop", host) + self.run("start", host)
