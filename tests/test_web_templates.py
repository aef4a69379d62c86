"""Rendering of the web tier's configs from the seed topology (no machine needed)."""

from __future__ import annotations

import configparser

import pytest

from provision import secrets, site, tls, topology
from provision.engine import File, HostContext
from provision.roles import app, lb, web

SEED = topology.load("seed")
FACTS = {"ssh_client": "172.17.0.1", "cpus": "2", "arch": "x86_64", "python": "3.11"}


pytestmark = pytest.mark.usefixtures("offline_roles")


def _file(role_steps: list[object], path: str) -> str:
    step = next(s for s in role_steps if isinstance(s, File) and s.path == path)
    return step.data.decode()


def _haproxy(options: dict[str, object] | None = None) -> str:
    topo = topology.load("seed", options)
    return _file(lb.steps(HostContext(topo, topo.hosts["lb1"], FACTS)), lb.CONFIG)


def test_haproxy_config_names_its_template_on_the_first_line() -> None:
    assert _haproxy().splitlines()[0].startswith("# Managed by webinfra-testbed from ")


def test_haproxy_uses_the_mozilla_intermediate_ciphers_and_tls_1_2_minimum() -> None:
    cfg = _haproxy()
    assert f"ssl-default-bind-ciphers {tls.INTERMEDIATE.cipher_string}" in cfg
    assert "ssl-min-ver TLSv1.2" in cfg
    # The profile's groups, written out by hand: not derived from the policy object.
    assert "ssl-default-bind-curves X25519:prime256v1:secp384r1" in cfg
    # On HAProxy's own answers too (http-response would skip its 400/421/503).
    assert 'http-after-response set-header Strict-Transport-Security "max-age=63072000"' in cfg


def test_every_redirect_is_a_301() -> None:
    redirects = [
        line for line in _haproxy().splitlines() if "redirect" in line and "http-request" in line
    ]
    assert redirects
    assert all("code 301" in line for line in redirects)


def test_haproxy_balances_every_web_server_on_the_backend_flow_port() -> None:
    cfg = _haproxy()
    assert "server web1 192.168.57.21:80 check" in cfg
    assert "server web2 192.168.57.22:80 check" in cfg


def test_reencryption_makes_haproxy_verify_backends_on_443() -> None:
    cfg = _haproxy({"reencrypt": True})
    assert "server web1 192.168.57.21:443 check sni str(web1) verifyhost web1" in cfg
    assert f"ssl verify required ca-file {lb.CA}" in cfg


def test_stats_listen_on_the_private_address_only() -> None:
    assert "bind 192.168.57.10:8404" in _haproxy()


@pytest.mark.parametrize(
    "reencrypt,listen",
    [(False, "192.168.57.21:80 default_server"), (True, "192.168.57.21:443 ssl default_server")],
)
def test_nginx_listens_on_the_private_address_and_the_flow_port(
    reencrypt: bool, listen: str
) -> None:
    topo = topology.load("seed", {"reencrypt": reencrypt})
    site = _file(web.steps(HostContext(topo, topo.hosts["web1"], FACTS)), web.SITE)
    assert f"listen {listen};" in site
    assert "client_max_body_size 16k;" in site


def test_the_app_reaches_the_database_through_its_local_writer_endpoint() -> None:
    for name in ("web1", "web2"):
        steps = app.steps(HostContext(SEED, SEED.hosts[name], FACTS))
        config = next(s for s in steps if isinstance(s, File) and s.path == app.CONFIG)
        assert "host = 127.0.0.1\nport = 3307\n" in config.data.decode()
        writer = next(s for s in steps if isinstance(s, File) and s.path == app.WRITER_CONFIG)
        assert "server web1 192.168.57.21:3306 check" in writer.data.decode()
        assert "server web2 192.168.57.22:3306 check" in writer.data.decode()
        assert config.mode == "0600"


def test_every_web_server_gets_the_site_names_and_the_same_csrf_secret() -> None:
    secret = secrets.password("app-csrf")
    for name in ("web1", "web2"):
        steps = app.steps(HostContext(SEED, SEED.hosts[name], FACTS))
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(_file(steps, app.CONFIG))
        assert parser["site"]["names"].split() == ["www.foobar.com", "foobar.com"]
        assert parser["site"]["csrf_secret"] == secret


def test_the_app_ships_with_its_page_template() -> None:
    steps = app.steps(HostContext(SEED, SEED.hosts["web1"], FACTS))
    paths = {s.path for s in steps if isinstance(s, File)}
    assert f"{app.HOME}/testbed_app/__init__.py" in paths
    assert f"{app.HOME}/testbed_app/templates/index.html" in paths


@pytest.mark.parametrize("cpus,workers", [("1", 3), ("2", 5), ("16", 8), ("", 3)])
def test_gunicorn_workers_follow_the_cpus_with_a_cap(cpus: str, workers: int) -> None:
    assert app.workers(cpus) == workers


def test_reencryption_shows_the_backends_the_balancers_client_certificate() -> None:
    cfg = _haproxy({"reencrypt": True})
    assert f"ssl verify required ca-file {lb.CA} crt {lb.CLIENT_CERT}" in cfg


def test_reencryption_makes_nginx_require_the_balancers_client_certificate() -> None:
    topo = topology.load("seed", {"reencrypt": True})
    conf = _file(web.steps(HostContext(topo, topo.hosts["web1"], FACTS)), web.SITE)
    assert "ssl_verify_client on;" in conf
    assert f'"CN={site.BALANCER_CLIENT}(,|$)"' in conf
    plain = _file(web.steps(HostContext(SEED, SEED.hosts["web1"], FACTS)), web.SITE)
    assert "ssl_verify_client" not in plain


def test_the_balancers_client_certificate_can_authenticate_clients_only() -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    cert = site.balancer_client_certificate().cert
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_the_edge_limits_come_from_the_topology_options() -> None:
    cfg = _haproxy({"edge_conns_per_client": 7, "edge_requests_per_10s": 30, "edge_maxconn": 99})
    assert "    maxconn 99\n" in cfg
    assert "tcp-request connection reject if { sc0_conn_cur gt 7 }" in cfg
    assert "tcp-request connection reject if { sc0_conn_cur(https) gt 7 }" in cfg
    assert "http-request deny deny_status 429 if { sc0_http_req_rate gt 30 }" in cfg


@pytest.mark.parametrize("bad", [0, -1, "many", True, 2.5])
def test_an_edge_limit_that_is_not_a_positive_number_is_refused_by_name(bad: object) -> None:
    with pytest.raises(ValueError, match="edge_requests_per_10s: expected a positive whole"):
        _haproxy({"edge_requests_per_10s": bad})
