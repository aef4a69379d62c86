"""Fast unit tests of the pure logic: no machine, no network, no docker."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

# Unit tests never read or write the real .testbed/ (saved options, secrets, the last
# deploy's report): provision and every `fab` a test starts use a private folder, set
# before provision is imported.
_STATE = tempfile.mkdtemp(prefix="testbed-unit-state-")
os.environ["TESTBED_STATE_DIR"] = _STATE
# Nor do they depend on which topology the shell has chosen: the default one is seed, and
# a test about another topology names it.
os.environ.pop("TESTBED_TOPOLOGY", None)
os.environ.pop("TESTBED_INVENTORY", None)

from pathlib import Path  # noqa: E402

from provision import secrets, topology  # noqa: E402
from provision.roles import app  # noqa: E402
from provision.topology import Topology  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def private_state() -> Iterator[None]:
    yield
    shutil.rmtree(_STATE, ignore_errors=True)


@pytest.fixture(scope="session")
def seed() -> Topology:
    """The shipped seed topology (named explicitly: $TESTBED_TOPOLOGY must not matter)."""
    return topology.load("seed")


@pytest.fixture
def offline_roles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Roles render with no machine and no download: a test's own CA and passwords, and a
    stand-in for the connector wheel the app role would fetch once."""
    monkeypatch.setattr(secrets, "SECRETS_DIR", tmp_path / "secrets")
    wheel = tmp_path / "mysql_connector_python-0-cp311-cp311-manylinux_2_28_x86_64.whl"
    wheel.write_bytes(b"not really a wheel")
    monkeypatch.setattr(app, "connector_wheel", lambda arch, python: wheel)
