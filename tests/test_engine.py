"""The deploy engine's reporting when a host cannot be reached (no machine needed)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import yaml

from provision import PROJECT_ROOT, engine, topology
from provision.engine.run import StepRecord
from provision.inventory import Endpoint
from provision.roles import ALL_ROLES


def _closed_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fabric", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


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
    res = _fab("deploy", "--inventory", str(inventory), "--only", "lb1")
    assert res.returncode == 1
    assert "FAILED on lb1, role connect" in res.stdout
    assert "web1" not in res.stdout.split("Summary")[1]


def test_fab_deploy_refuses_to_pick_a_primary_while_database_hosts_are_unreachable(
    tmp_path: Path,
) -> None:
    """No node is made writable while another could hold acknowledged writes."""
    inventory = _unreachable_inventory(tmp_path)
    res = _fab("deploy", "--inventory", str(inventory), "--only", "web2")
    assert res.returncode == 2
    assert "web1, web2 cannot be read" in res.stderr
    assert "changing nothing" in res.stderr


def test_fab_deploy_rejects_an_unknown_host_in_only_with_a_clear_error() -> None:
    res = _fab("deploy", "--inventory", "/dev/null", "--only", "web9")
    assert res.returncode == 2
    assert "web9" in res.stderr


def test_summary_of_an_empty_run_says_no_changes() -> None:
    report = engine.Report("seed")
    report.records.append(StepRecord("web1", "common", "Ensure x.", False, "", 0.1))
    assert "No changes" in engine.summary(report)
