"""Fast unit tests of the pure logic: no machine, no network, no docker."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from provision import topology
from provision.topology import Topology

# Unit tests read the topology files as shipped, never the options a deploy on this
# machine saved (.testbed/options/): set before any test module loads a topology.
_OPTIONS = Path(tempfile.mkdtemp(prefix="testbed-unit-options-"))
topology.options_file = lambda name: _OPTIONS / f"{name}.json"


@pytest.fixture(scope="session")
def seed() -> Topology:
    """The shipped seed topology (named explicitly: $TESTBED_TOPOLOGY must not matter)."""
    return topology.load("seed")
