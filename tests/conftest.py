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

from provision import topology  # noqa: E402
from provision.topology import Topology  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def private_state() -> Iterator[None]:
    yield
    shutil.rmtree(_STATE, ignore_errors=True)


@pytest.fixture(scope="session")
def seed() -> Topology:
    """The shipped seed topology (named explicitly: $TESTBED_TOPOLOGY must not matter)."""
    return topology.load("seed")
