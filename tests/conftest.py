"""Fast unit tests of the pure logic: no machine, no network, no docker."""

from __future__ import annotations

import pytest

from provision import topology
from provision.topology import Topology


@pytest.fixture(scope="session")
def seed() -> Topology:
    """The shipped seed topology (named explicitly: $TESTBED_TOPOLOGY must not matter)."""
    return topology.load("seed")
