"""What every operator command shares: loading the topology and its endpoints, with
errors turned into :class:`TaskError` (fabfile.py turns that into exit code 2)."""

from __future__ import annotations

from provision import inventory, topology


class TaskError(RuntimeError):
    """The command could not run; the message names the host, the input or the step."""


def load(topology_name: str | None, options: str = "") -> topology.Topology:
    try:
        return topology.load(topology_name or None, topology.parse_option_overrides(options))
    except topology.TopologyError as exc:
        raise TaskError(str(exc)) from None


def endpoints(topo: topology.Topology, inventory_file: str | None) -> dict[str, inventory.Endpoint]:
    try:
        return inventory.load(topo, inventory_file)
    except inventory.InventoryError as exc:
        raise TaskError(str(exc)) from None
