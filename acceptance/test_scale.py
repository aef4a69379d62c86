"""Scaling the web tier under Locust load (issue 11): out by one host, then back in, with
no failed request; while scaled out the new host serves pages through the balancers, the
database's firewall lets it in, and Prometheus has its metrics.

`fab scale` is run as a user would, under a fixed-rate Locust run of the drill personas
(every request recorded with its outcome and the server that answered). Disruptive: it
creates and removes a machine. It needs new machines, so it runs through Vagrant; an
inventory's servers are fixed (the suite's Vagrant pass runs it).
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from pathlib import Path

import pytest

from acceptance.conftest import TOPOLOGY
from provision import dbcluster, inventory, secrets, topology
from provision.drills.workload import Workload
from provision.engine import Remote
from provision.ops.scale import counted_members
from provision.testkit import fab, prometheus_get

pytestmark = pytest.mark.disruptive
TIER = "web"


def scalable() -> str:
    """Why the web tier cannot be scaled here, or "" when it can."""
    try:
        topology.load(TOPOLOGY.name, {f"{topology.COUNT_PREFIX}{TIER}": 2})
    except topology.TopologyError:
        return f"{TOPOLOGY.name}'s web servers are named one by one (no `count:`)"
    if os.environ.get(inventory.INVENTORY_ENV):
        return "an inventory's servers are fixed: scaling creates machines (Vagrant pass)"
    return ""


def prometheus_has(host: str) -> bool:
    params = urllib.parse.urlencode({"query": f'up{{host="{host}"}} == 1'})
    body = json.loads(prometheus_get(TOPOLOGY, f"/api/v1/query?{params}"))
    return bool(body["data"]["result"])


def eventually(check: object, limit: float = 60) -> bool:
    deadline = time.monotonic() + limit
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


@pytest.mark.skipif(bool(scalable()), reason=scalable() or "scalable")
def test_scaling_the_web_tier_out_and_in_under_load_fails_no_request(tmp_path: Path) -> None:
    members = counted_members(TOPOLOGY, TIER)
    n = len(members)
    new = f"{TIER}{n + 1}"
    site = inventory.site_entry(TOPOLOGY, None).url()
    load = Workload(tmp_path, site, 10, 2.0, 900, secrets.site_ca_cert_path())
    marks: dict[str, float] = {}
    load.start()
    try:
        time.sleep(5)  # the load runs steadily
        marks["out"] = time.time()
        fab("scale", f"{TIER}={n + 1}")
        marks["out_done"] = time.time()
        scaled = topology.load(TOPOLOGY.name)
        assert new in scaled.hosts
        eps = inventory.load(scaled)
        db = scaled.with_role("db-primary")[0]
        mysql = scaled.port("mysql")
        with Remote(scaled.hosts[new], eps[new]) as r:
            # Its firewall and the database's let it in; its agent reports to Prometheus.
            to = scaled.address_for(scaled.hosts[new], db)
            probe = f"timeout 3 bash -c 'exec 3<>/dev/tcp/{to}/{mysql}'"
            assert r.run(probe, check=False).ok, f"{new} cannot reach {db.name}:{mysql}"
        assert eventually(lambda: prometheus_has(new)), f"Prometheus has no up{{host={new}}}"
        time.sleep(5)  # it serves its share (about 30 requests) before it is drained
        marks["in"] = time.time()
        fab("scale", f"{TIER}={n}")
        marks["in_done"] = time.time()
        time.sleep(5)
    finally:
        load.stop()
        if new in topology.load(TOPOLOGY.name).hosts:
            fab("scale", f"{TIER}={n}")
    records = [json.loads(line) for line in load.history.read_text().splitlines() if line]
    failed = [r for r in records if r["outcome"] != "ok"]
    served = [r for r in records if r["server"] == new]
    took = {k: round(marks[f"{k}_done"] - marks[k], 1) for k in ("out", "in")}
    print(f"\n{len(records)} requests, {len(failed)} failed; {new} served {len(served)}; {took}")
    assert len(records) > 200, "the load ran"
    assert not failed, f"{len(failed)} requests failed, e.g. {failed[:3]}"
    # The new server took its share between joining and being drained.
    assert any(marks["out_done"] < r["start"] < marks["in"] for r in served)
    assert new not in topology.load(TOPOLOGY.name).hosts
    # Forgotten by the database nodes too (each keeps its own accounts): none is left for
    # the removed server's address.
    back = topology.load(TOPOLOGY.name)
    back_eps = inventory.load(back)
    for node in dbcluster.db_hosts(back):
        gone = scaled.address_for(node, scaled.hosts[new])
        with Remote(node, back_eps[node.name]) as r:
            rows = dbcluster.mysql(r, f"SELECT User FROM mysql.user WHERE Host = '{gone}';")
        assert not rows, f"{node.name} still has accounts for {new} ({gone}): {rows}"
