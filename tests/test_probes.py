"""provision.monitoring.probes: the synthetic checks the monitor runs (blackbox exporter),
and the mtail programs' compile check. Pure logic; no machine involved."""

from __future__ import annotations

import ipaddress

import pytest
import yaml

from provision import monitoring
from provision.engine import File, HostContext
from provision.roles import monitor
from provision.topology import Topology, load


def test_seed_checks_the_site_at_the_balancer_s_private_and_public_addresses() -> None:
    # Written by hand from the seed design: the monitor shares the private network with
    # lb1 (192.168.57.10), where it may reach HAProxy's stats port and the site's ports,
    # and the users' network (lb1 at 192.168.56.10, where the client goes), where it may
    # reach the site's ports only.
    found = {
        (p.module, p.target, p.host, p.service, p.network) for p in monitoring.probes(load("seed"))
    }
    assert found == {
        ("site_https", "https://192.168.57.10:443/", "lb1", "site-https", "private"),
        ("site_redirect", "http://192.168.57.10:80/", "lb1", "site-http", "private"),
        ("tcp_connect", "192.168.57.10:443", "lb1", "site-https", "private"),
        ("tcp_connect", "192.168.57.10:80", "lb1", "site-http", "private"),
        ("tcp_connect", "192.168.57.10:8404", "lb1", "haproxy-stats", "private"),
        ("site_https", "https://192.168.56.10:443/", "lb1", "site-https", "public"),
        ("site_redirect", "http://192.168.56.10:80/", "lb1", "site-http", "public"),
        ("tcp_connect", "192.168.56.10:443", "lb1", "site-https", "public"),
        ("tcp_connect", "192.168.56.10:80", "lb1", "site-http", "public"),
    }


def test_hardened_checks_each_balancer_and_the_floating_address_once() -> None:
    topo = load("hardened")
    probes = monitoring.probes(topo)
    # Each balancer on its private address, and the site where users reach it: the
    # floating address 192.168.56.10 (written by hand from hardened.yml), once, under its
    # name, never a balancer's own public address.
    site = {(p.host, p.target, p.network) for p in probes if p.module == "site_https"}
    assert site == {
        ("lb1", "https://192.168.57.11:443/", "private"),
        ("lb2", "https://192.168.57.12:443/", "private"),
        ("site", "https://192.168.56.10:443/", "public"),
    }
    assert not [p for p in probes if "192.168.56.11" in p.target or "192.168.56.12" in p.target]
    assert not [p for p in probes if p.service == "mysql"]
    # The database nodes' agents are checked instead (the controller's flow).
    db = {p.host for p in probes if p.service == "dbcheck"}
    assert db == {h.name for h in topo.in_tier("db")}
    # Every check goes where a flow lets the monitor go, at that address.
    mon = monitoring.monitor_host(topo)
    assert mon is not None
    for p in probes:
        address, port = p.target.split("//")[-1].rstrip("/").rsplit(":", 1)
        at = ipaddress.IPv4Address(address)
        dests = [p.host] if p.host in topo.hosts else [h.name for h in topo.with_role("lb")]
        assert any(topo.is_allowed(mon.name, d, p.network, int(port), address=at) for d in dests), p


def monitor_files(name: str) -> tuple[Topology, dict[str, File]]:
    """The files the monitor role writes on the monitor of topology `name`."""
    topo = load(name)
    mon = monitoring.monitor_host(topo)
    assert mon is not None
    steps = monitor.steps(HostContext(topo, mon, {}))
    return topo, {s.path: s for s in steps if isinstance(s, File)}


@pytest.mark.usefixtures("offline_roles")
def test_every_check_is_a_scrape_job_of_the_central_prometheus() -> None:
    for name in ("seed", "hardened"):
        topo, files = monitor_files(name)
        config = yaml.safe_load(files["/etc/prometheus/prometheus.yml"].data)
        jobs = {j["job_name"]: j for j in config["scrape_configs"]}
        for probe in monitoring.probes(topo):
            job = jobs[f"probe-{probe.module}"]
            assert job["params"] == {"module": [probe.module]}
            targets = [(t["targets"], t["labels"]["host"]) for t in job["static_configs"]]
            assert ([probe.target], probe.host) in targets
            # Sent to the blackbox exporter on loopback, never to the target itself.
            assert job["relabel_configs"][-1]["replacement"] == "127.0.0.1:9115"


def test_the_hand_built_remote_write_request_has_the_documented_bytes() -> None:
    # Worked by hand from protobuf's encoding rules and prometheus/prompb/types.proto:
    # Label{name="a", value="b"} = 0a 01 61 12 01 62; Sample{value=1.0, timestamp=5} =
    # 09 <1.0 as little-endian double> 10 05; TimeSeries = 0a 06 <label> 12 0b <sample>;
    # WriteRequest = 0a 15 <series>.
    from provision.remote_write import snappy_block, write_request

    label = bytes.fromhex("0a01611201 62".replace(" ", ""))
    sample = bytes.fromhex("09000000000000f03f1005")
    series = b"\x0a\x06" + label + b"\x12\x0b" + sample
    assert write_request({"a": "b"}, 1.0, 5) == b"\x0a\x15" + series
    # Snappy: the length as a varint, then one literal element (tag (n-1) << 2).
    assert snappy_block(b"abc") == b"\x03\x08abc"
    assert snappy_block(b"x" * 100)[:3] == b"\x64\xf0\x63"


@pytest.mark.usefixtures("offline_roles")
def test_the_site_checks_trust_the_site_s_ca_which_signs_the_served_certificate() -> None:
    from cryptography import x509

    from provision import site

    for name in ("seed", "hardened"):
        topo, files = monitor_files(name)
        ca = x509.load_pem_x509_certificate(files[monitor.BLACKBOX_CA].data)
        served = x509.load_pem_x509_certificate(site.site_certificate(topo).cert_pem)
        assert served.issuer == ca.subject
        served.verify_directly_issued_by(ca)
