"""Acceptance tests run against the real machines of a running, deployed testbed.

Hosts come from `vagrant ssh-config` (written once per session to
.testbed/ssh-config) and from the same topology file the deploy used, so a
failure names the host and the case. Bring the testbed up with ./testbed up.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import testinfra

from provision import PROJECT_ROOT, STATE_DIR, topology
from provision.inventory import Endpoint, parse_ssh_config

TOPOLOGY = topology.load()
HOST_NAMES = [h.name for h in TOPOLOGY]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.acceptance)
    # Tests that restart a machine run last, so they cannot break the others' sessions.
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)


def fab(*args: str) -> str:
    """Run a Fabric task as a user would; fail the test with its output if it fails."""
    res = subprocess.run(
        [sys.executable, "-m", "fabric", *args],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    return res.stdout


@pytest.fixture(scope="session")
def ssh_config() -> Path:
    res = subprocess.run(
        ["vagrant", "ssh-config"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        pytest.fail(
            "`vagrant ssh-config` failed: is the testbed up? (./testbed up)\n" + res.stderr,
            pytrace=False,
        )
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    path = STATE_DIR / "ssh-config"
    path.write_text(res.stdout)
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def endpoints(ssh_config: Path) -> dict[str, Endpoint]:
    return parse_ssh_config(ssh_config.read_text())


@pytest.fixture(scope="session")
def machines(ssh_config: Path) -> Iterator[dict[str, testinfra.host.Host]]:
    yield {
        name: testinfra.get_host(f"paramiko://{name}", ssh_config=str(ssh_config), sudo=True)
        for name in HOST_NAMES
    }
