"""docs/topology-<name>.md is the diagram its topology file gives (provision/diagram.py)."""

from __future__ import annotations

import pytest

from provision import PROJECT_ROOT, diagram, topology

NAMES = sorted(p.stem for p in topology.TOPOLOGY_DIR.glob("*.yml"))


@pytest.mark.parametrize("name", NAMES)
def test_the_committed_diagram_matches_the_topology_file(name: str) -> None:
    topo = topology.load(name)
    doc = (PROJECT_ROOT / diagram.doc_path(name)).read_text()
    assert doc == diagram.document(topo), "run: python -m provision.diagram --write-docs"


def test_every_host_and_every_allowed_flow_is_drawn() -> None:
    topo = topology.load("hardened")
    chart = diagram.mermaid(topo)
    for host in topo:
        assert f"{host.name}<br/>" in chart
    assert "vip site<br/>192.168.56.10" in chart
    assert "-->|vrrp| lb1_private" in chart
    assert (
        f"client_public -->|{topo.port('site-https')} {topo.port('site-http')}| vip_site" in chart
    )
