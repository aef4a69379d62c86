"""The deploy engine's reporting when a host cannot be reached (no machine needed)."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import pytest
import yaml

from provision import engine, topology
from provision.engine.run import StepRecord
from provision.inventory import Endpoint
from provision.roles import ALL_ROLES
from tests.fabcli import run_fab


def _closed_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_host_that_is_down_fails_the_deploy_naming_the_host_and_the_step(tmp_path: Path) -> None:
    topo = topology.load("seed")
    port = _closed_port()
    eps = {h.name: Endpoint(h.name, "127.0.0.1", port, "vagrant") for h in topo}
    printer = engine.Printer(out=open(tmp_path / "out.txt", "w"))  # noqa: SIM115
    report = engine.deploy(topo, eps, ALL_ROLES, printer=printer, record=tmp_path / "r.json")
    assert sorted(f.host for f in report.failures) == sorted(topo.hosts)
    assert all(f.step.startswith("Connect over SSH to vagrant@127.0.0.1:") for f in report.failures)
    text = engine.summary(report)
    assert "FAILED on web1" in text
    assert "run `fab deploy` again" in text


def _unreachable_inventory(tmp_path: Path) -> Path:
    """Every host of the seed topology at a closed port of this machine."""
    port = _closed_port()
    inventory = tmp_path / "inventory.yml"
    hosts = {h.name: {"host": "127.0.0.1", "port": port} for h in topology.load("seed")}
    inventory.write_text(yaml.safe_dump({"hosts": hosts}))
    return inventory


def test_fab_deploy_exits_non_zero_and_names_the_unreachable_host(tmp_path: Path) -> None:
    inventory = _unreachable_inventory(tmp_path)
    res = run_fab("deploy", "--inventory", str(inventory), "--only", "lb1")
    assert res.returncode == 1
    assert "FAILED on lb1, role connect" in res.stdout
    assert "web1" not in res.stdout.split("Summary")[1]


def test_fab_deploy_refuses_to_pick_a_primary_while_database_hosts_are_unreachable(
    tmp_path: Path,
) -> None:
    """No node is made writable while another could hold acknowledged writes."""
    inventory = _unreachable_inventory(tmp_path)
    res = run_fab("deploy", "--inventory", str(inventory), "--only", "web2")
    assert res.returncode == 2
    assert "web1, web2 cannot be read" in res.stderr
    assert "changing nothing" in res.stderr


def test_fab_deploy_rejects_an_unknown_host_in_only_with_a_clear_error() -> None:
    res = run_fab("deploy", "--inventory", "/dev/null", "--only", "web9")
    assert res.returncode == 2
    assert "web9" in res.stderr


def test_summary_of_an_empty_run_says_no_changes() -> None:
    report = engine.Report("seed")
    report.records.append(StepRecord("web1", "common", "Ensure x.", False, "", 0.1))
    assert "No changes" in engine.summary(report)


class _ScriptedRemote:
    """Answers a step's queries like a machine whose unit is stopped and disabled, and
    records every command; the engine's handler logic needs nothing more."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.known: dict[tuple[str, ...], object] = {}

    def run_script(self, script: str) -> object:
        from provision.engine.remote import CommandResult

        self.commands.append("script")
        return CommandResult(0, "", "")  # read nothing: every step reads for itself

    def run(self, command: str, *, check: bool = True, stdin: str | None = None) -> object:
        from provision.engine.remote import CommandResult

        self.commands.append(command)
        if command.startswith("systemctl is-"):
            return CommandResult(1, "inactive\n", "")
        # A check fails until the command that reaches its state has run.
        done = command.startswith("check") and f"reach {command[6:]}" in self.commands
        return CommandResult(0 if done or not command.startswith("check") else 1, "", "")


def _run_role(steps: list[object]) -> list[str]:
    from provision.engine.run import HostContext, Report, Role, _run_host
    from provision.engine.steps import restart_handler

    topo = topology.load("seed")
    remote = _ScriptedRemote()
    role = Role("r", "common", lambda ctx: steps, handlers=[restart_handler("svc")])  # type: ignore[arg-type,return-value]
    printer = engine.Printer(out=open("/dev/null", "w"))  # noqa: SIM115
    _run_host(remote, [role], HostContext(topo, topo.hosts["web1"]), Report("seed"), printer)  # type: ignore[arg-type]
    return remote.commands


def test_a_unit_started_after_its_config_changed_is_not_restarted_again() -> None:
    from provision.engine.steps import Command, Service

    config = Command("Write the config.", "check config", "reach config", notify=["restart svc"])
    commands = _run_role([config, Service("svc")])
    assert sum("systemctl start svc" in c for c in commands) == 1
    assert not any("systemctl restart svc" in c for c in commands)


def test_a_change_after_the_start_still_restarts_the_unit() -> None:
    from provision.engine.steps import Command, Service

    late = Command("Write a late config.", "check late", "reach late", notify=["restart svc"])
    commands = _run_role([Service("svc"), late])
    assert sum("systemctl restart svc" in c for c in commands) == 1


class _LocalRemote:
    """This machine as a deploy target for the read-ahead: the batched script runs in a
    local `sh`, and every per-step command is recorded (and fails) to show which steps
    still needed a round trip of their own."""

    def __init__(self) -> None:
        self.known: dict[tuple[str, ...], object] = {}
        self.commands: list[str] = []
        self.scripts: list[str] = []

    def run_script(self, script: str) -> object:
        import subprocess

        from provision.engine.remote import CommandResult

        self.scripts.append(script)
        res = subprocess.run(
            ["sh", "-s"], input=f"exec 2>/dev/null\numask 022\n{script}\n",
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return CommandResult(res.returncode, res.stdout, "")

    def run(self, command: str, *, check: bool = True, stdin: str | None = None) -> object:
        from provision.engine.remote import CommandResult

        self.commands.append(command)
        return CommandResult(1, "", "")


def test_one_read_ahead_answers_every_step_whose_state_holds_and_no_other(tmp_path: Path) -> None:
    import grp
    import os
    import pwd

    from provision.engine.steps import Command, File, prefetch

    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    good, stale = tmp_path / "good.conf", tmp_path / "stale.conf"
    good.write_text("wanted\n")
    good.chmod(0o640)
    stale.write_text("old\n")
    stale.chmod(0o640)
    steps = [
        File(str(good), "wanted\n", mode="0640", owner=user, group=group),
        File(str(stale), "wanted\n", mode="0640", owner=user, group=group),
        File(str(tmp_path / "absent.conf"), "wanted\n", owner=user, group=group),
        # The check reads its input from a here-document inside the script (secrets in
        # SQL never travel in a command line); the second check fails.
        Command("Holds.", check="grep -qx 's3cret'", run="true", check_stdin="s3cret\n"),
        Command("Does not hold.", check="test -e /nonexistent-testbed", run="true"),
    ]
    remote = _LocalRemote()
    assert prefetch(remote, steps) == 5  # type: ignore[arg-type]
    assert len(remote.scripts) == 1 and "s3cret" in remote.scripts[0]
    assert steps[0].apply(remote).changed is False  # type: ignore[arg-type]
    assert steps[3].apply(remote).changed is False  # type: ignore[arg-type]
    assert remote.commands == [], "a state the read-ahead saw holding needs no round trip"
    # A stale file, a missing one and a failing check each read for themselves.
    for step in (steps[1], steps[2], steps[4]):
        remote.commands.clear()
        with contextlib.suppress(Exception):  # the recording remote fails every command
            step.apply(remote)  # type: ignore[arg-type]
        assert remote.commands, f"{step.name}: answered from a read that did not hold"


def test_the_read_ahead_reads_every_file_and_unit_at_once_and_trusts_only_a_full_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import grp
    import os
    import pwd

    from provision.engine.steps import File, Service, prefetch

    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    spaced = tmp_path / "with space.conf"
    spaced.write_text("wanted\n")
    spaced.chmod(0o644)
    # systemctl as systemd prints `show` for two units: a block each, a blank line between
    # (properties in systemd's own order, not the order asked).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "systemctl"
    fake.write_text(
        "#!/bin/sh\n"
        'echo "$@" >> "$0.args"\n'
        "printf 'ActiveState=active\\nUnitFileState=enabled\\n\\n'\n"
        "printf 'ActiveState=inactive\\nUnitFileState=disabled\\n'\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    steps = [
        File(str(spaced), "wanted\n", mode="0644", owner=user, group=group),
        Service("up.service"),
        Service("down.service"),
    ]
    remote = _LocalRemote()
    assert prefetch(remote, steps) == 3  # type: ignore[arg-type]
    assert len(remote.scripts) == 1
    assert (tmp_path / "bin" / "systemctl.args").read_text().split() == [
        "show", "-p", "UnitFileState", "-p", "ActiveState", "up.service", "down.service"
    ]  # fmt: skip
    assert steps[0].apply(remote).changed is False  # type: ignore[arg-type]
    assert steps[1].apply(remote).changed is False  # type: ignore[arg-type]
    assert remote.commands == [], "a state the read-ahead saw holding needs no round trip"
    assert remote.known[("unit", "down.service")] == ("disabled", "inactive")
    # One block short (a unit systemctl did not answer for): no unit's state is trusted.
    fake.write_text("#!/bin/sh\nprintf 'ActiveState=active\\nUnitFileState=enabled\\n'\n")
    remote = _LocalRemote()
    prefetch(remote, steps)  # type: ignore[arg-type]
    assert not [k for k in remote.known if k[0] == "unit"]
    assert ("file", str(spaced)) in remote.known
