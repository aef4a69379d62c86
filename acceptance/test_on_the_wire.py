"""The seed design's named weakness, shown on the wire: TLS ends at the load balancer, so
backend traffic is clear text; with re-encryption on, it is not.

Disruptive: on seed it redeploys with `--option reencrypt=true` and back, so it runs last.
The same capture shows the database's links (the app's queries, replication): clear text
on seed, TLS with `db_tls` (hardened).
"""

from __future__ import annotations

import shlex
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import testinfra

from acceptance.conftest import FILE_OPTIONS, TOPOLOGY, restore_option
from acceptance.site import request
from provision import dbcluster, monitoring, secrets
from provision.inventory import Endpoint
from provision.ops.scale import admin_command, server_rows
from provision.roles.web import CERT_DIR
from provision.testkit import fab

# A web host: the load balancer's backend traffic to it is what the capture reads.
WEB = TOPOLOGY.with_role("web")[0].name
CAPTURE = "/tmp/testbed-capture.txt"


def capture(
    machine: testinfra.host.Host, port: int, traffic: Callable[[], None], seconds: int = 6
) -> str:
    """tcpdump's text (-A) of every TCP packet on `port` at `machine` while `traffic` runs."""
    if not machine.package("tcpdump").is_installed:
        machine.check_output(
            "DEBIAN_FRONTEND=noninteractive "
            "apt-get install -y -q --no-install-recommends tcpdump >/dev/null"
        )
    machine.run(f"systemctl stop testbed-capture 2>/dev/null; rm -f {CAPTURE}")
    machine.check_output(
        "systemd-run --unit=testbed-capture --collect sh -c "
        f"'timeout {seconds} tcpdump -i any -nn -l -A -s 0 tcp port {port} "
        f"> {CAPTURE} 2>/dev/null'"
    )
    time.sleep(1.5)
    traffic()
    for _ in range(4 * seconds):
        if not machine.service("testbed-capture").is_running:
            break
        time.sleep(0.5)
    content = machine.file(CAPTURE)
    assert content.exists, f"tcpdump wrote no {CAPTURE}"
    return str(content.content_string)


def post_notes(marker: str, times: int = 6) -> list[str]:
    """POST notes whose text and a header carry `marker`; the servers that took them."""
    served = []
    for _ in range(times):  # round-robin: they reach every web server
        reply = request(
            "POST",
            "/api/notes",
            f'{{"text": "{marker}"}}',
            {"Content-Type": "application/json", "X-Marker": marker},
        )
        assert reply.status == 201
        served.append(reply.header("x-served-by"))
    return served


def _capture(machine: testinfra.host.Host, port: int, marker: str) -> str:
    """Capture the web server's backend port while requests carrying `marker` pass."""
    served: list[str] = []
    text = capture(machine, port, lambda: served.extend(post_notes(marker)))
    assert WEB in served
    return text


@pytest.fixture(scope="module")
def reencrypted() -> Iterator[None]:
    """Re-encryption on for the rest of this module (one deploy there and one back, not two
    per test): the tests after the first that needs it only capture other links."""
    if FILE_OPTIONS.get("reencrypt"):
        yield  # the topology re-encrypts already
        return
    fab("deploy", "--option", "reencrypt=true")
    try:
        yield
    finally:
        restore_option("reencrypt")  # options persist: set it back


@pytest.mark.disruptive
@pytest.mark.skipif(
    bool(FILE_OPTIONS.get("reencrypt")),
    reason=f"{TOPOLOGY.name} re-encrypts: the clear-text weakness is shown on seed",
)
def test_backend_traffic_is_clear_text_without_reencryption(
    machines: dict[str, testinfra.host.Host],
) -> None:
    assert not TOPOLOGY.option("reencrypt")
    marker = f"marker-{uuid.uuid4().hex}"
    captured = _capture(machines[WEB], TOPOLOGY.port("backend-http"), marker)
    assert marker in captured


@pytest.mark.disruptive
@pytest.mark.usefixtures("reencrypted")
def test_backend_traffic_is_encrypted_with_reencryption_on(
    machines: dict[str, testinfra.host.Host],
) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    captured = _capture(machines[WEB], TOPOLOGY.port("backend-https"), marker)
    lb = TOPOLOGY.with_role("lb")[0]
    assert f"{lb.addresses['private']}." in captured, "no backend traffic was captured"
    assert marker not in captured


@pytest.mark.disruptive
@pytest.mark.usefixtures("reencrypted")
def test_with_reencryption_a_web_server_answers_the_balancers_certificate_only(
    machines: dict[str, testinfra.host.Host],
) -> None:
    """mTLS: from the load balancer (the only host the firewall lets reach the web port),
    TLS without the balancers' client certificate gets no page; with it, the page."""
    lb = machines[TOPOLOGY.with_role("lb")[0].name]
    web = TOPOLOGY.hosts[WEB]
    address = TOPOLOGY.address_for(TOPOLOGY.with_role("lb")[0], web)
    port = TOPOLOGY.port("backend-https")
    url = f"https://{WEB}:{port}/health"
    base = (
        f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 --resolve {WEB}:{port}:{address} "
        f"--cacert /etc/haproxy/testbed-ca.pem"
    )
    without = lb.run(f"{base} {url}").stdout.strip()
    assert without in ("400", "000"), f"no client certificate: {without}"
    bundle = "/etc/haproxy/certs/backend-client.pem"
    with_cert = lb.run(f"{base} --cert {bundle} {url}").stdout.strip()
    assert with_cert == "200"
    # The site's own certificate (a server certificate of the same CA) is no client.
    site = "/etc/haproxy/certs/site.pem"
    assert lb.run(f"{base} --cert {site} {url}").stdout.strip() in ("400", "000")


@pytest.mark.disruptive
def test_database_links_carry_no_clear_text_with_db_tls_and_do_without_it(
    machines: dict[str, testinfra.host.Host], endpoints: dict[str, Endpoint]
) -> None:
    """A capture on the primary's MariaDB port while notes are written: the app's INSERTs
    arrive there and replication carries them on to the replicas. With `db_tls` neither
    shows the note's text; without it (seed's weakness) both do."""
    states = dbcluster.states(TOPOLOGY, endpoints)
    primary = dbcluster.discover_primary(TOPOLOGY, states)
    marker = f"marker-{uuid.uuid4().hex}"
    text = capture(machines[primary], TOPOLOGY.port("mysql"), lambda: post_notes(marker))
    p = TOPOLOGY.hosts[primary]
    apps = {str(TOPOLOGY.address_for(p, h)) for h in TOPOLOGY.with_role("app") if h is not p}
    follows = dbcluster.node_address(TOPOLOGY, p)
    replicas = {
        str(TOPOLOGY.address_for(p, TOPOLOGY.hosts[n]))
        for n, st in states.items()
        if n != primary and st.replicating_from == follows and st.io_running == "Yes"
    }
    assert replicas, "no replica follows the primary: nothing to capture on that link"
    for peer in apps | replicas:
        assert f"{peer}." in text, f"no traffic with {peer} was captured"
    if TOPOLOGY.option("db_tls"):
        assert marker not in text, "a note's text crossed a database link in clear"
    else:
        assert marker in text, "without db_tls the note's text is clear on the wire"


@pytest.mark.disruptive
def test_the_agents_pushes_carry_no_clear_text_with_monitor_tls_and_do_without_it(
    machines: dict[str, testinfra.host.Host],
) -> None:
    """A capture on the monitor's Prometheus port: every agent pushes there each second.
    With monitor_tls the HTTP request line and the metric names are nowhere in it."""
    mon = monitoring.monitor_host(TOPOLOGY)
    assert mon is not None
    text = capture(machines[mon.name], TOPOLOGY.port("prometheus"), lambda: time.sleep(4))
    for agent in monitoring.reporting_hosts(TOPOLOGY):
        if agent is not mon:
            assert f"{TOPOLOGY.address_for(mon, agent)}." in text, f"no push from {agent.name}"
    if TOPOLOGY.option("monitor_tls"):
        assert "POST /api/v1/write" not in text and "node_" not in text
    else:
        assert "POST /api/v1/write" in text, "without monitor_tls the pushes are clear text"


def _server_status(lb: testinfra.host.Host, server: str) -> set[str]:
    """The status of `server` in both web backends, from HAProxy's admin socket."""
    return {r["status"] for r in server_rows(lb.check_output(admin_command("show stat")), [server])}


@pytest.mark.disruptive
@pytest.mark.usefixtures("reencrypted")
def test_a_backend_with_a_certificate_from_another_ca_is_taken_out_of_the_pool(
    machines: dict[str, testinfra.host.Host], tmp_path: Path
) -> None:
    """The balancers verify the backend: the same names, signed by a CA they do not trust,
    take the server out of the pool (its checks fail) and no request reaches it."""
    web = TOPOLOGY.hosts[WEB]
    impostor = secrets.leaf(
        f"backend-{WEB}", [WEB], [str(a) for a in web.addresses.values()], base=tmp_path
    )
    assert impostor.cert.issuer == secrets.ca().cert.subject  # the same CA name, another key
    machine = machines[WEB]
    lbs = [machines[h.name] for h in TOPOLOGY.with_role("lb")]
    crt, key = f"{CERT_DIR}/backend.crt", f"{CERT_DIR}/backend.key"
    machine.check_output(f"cp -p {crt} {crt}.saved && cp -p {key} {key}.saved")
    try:
        machine.check_output(
            f"printf %s {shlex.quote(impostor.cert_pem.decode())} > {crt} && "
            f"printf %s {shlex.quote(impostor.key_pem.decode())} > {key} && "
            "systemctl reload nginx"
        )
        deadline = time.monotonic() + 15
        while any(_server_status(lb, WEB) != {"DOWN"} for lb in lbs):
            assert time.monotonic() < deadline, [_server_status(lb, WEB) for lb in lbs]
            time.sleep(0.5)
        served = {request("GET", "/health").header("x-served-by") for _ in range(10)}
        assert WEB not in served and served, served
    finally:
        machine.check_output(
            f"mv {crt}.saved {crt} && mv {key}.saved {key} && systemctl reload nginx"
        )
    deadline = time.monotonic() + 15
    while any(_server_status(lb, WEB) != {"UP"} for lb in lbs):
        assert time.monotonic() < deadline, "the server did not come back with its certificate"
        time.sleep(0.5)
