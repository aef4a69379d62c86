"""The seed design's named weakness, shown on the wire: TLS ends at the load balancer, so
backend traffic is clear text; with re-encryption on, it is not.

Disruptive: it redeploys with `--option reencrypt=true` and back, so it runs last.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import testinfra

from acceptance.conftest import TOPOLOGY
from acceptance.site import request
from provision.testkit import fab

# A web host: the load balancer's backend traffic to it is what the capture reads.
WEB = TOPOLOGY.with_role("web")[0].name
CAPTURE = "/tmp/testbed-capture.txt"


def _capture(machine: testinfra.host.Host, port: int, marker: str) -> str:
    """Capture the web server's backend port while requests carrying `marker` pass."""
    if not machine.package("tcpdump").is_installed:
        machine.check_output(
            "DEBIAN_FRONTEND=noninteractive "
            "apt-get install -y -q --no-install-recommends tcpdump >/dev/null"
        )
    machine.run(f"systemctl stop testbed-capture 2>/dev/null; rm -f {CAPTURE}")
    machine.check_output(
        "systemd-run --unit=testbed-capture --collect sh -c "
        f"'timeout 6 tcpdump -i any -nn -l -A -s 0 tcp port {port} "
        f"> {CAPTURE} 2>/dev/null'"
    )
    time.sleep(1.5)
    served = []
    for _ in range(6):  # round-robin: half of them reach WEB
        reply = request(
            "POST",
            "/api/notes",
            f'{{"text": "{marker}"}}',
            {"Content-Type": "application/json", "X-Marker": marker},
        )
        assert reply.status == 201
        served.append(reply.header("x-served-by"))
    assert WEB in served
    for _ in range(20):
        if not machine.service("testbed-capture").is_running:
            break
        time.sleep(0.5)
    capture = machine.file(CAPTURE)
    assert capture.exists, f"tcpdump wrote no {CAPTURE} on {WEB}"
    return str(capture.content_string)


@pytest.fixture
def reencrypted() -> Iterator[None]:
    fab("deploy", "--option", "reencrypt=true")
    try:
        yield
    finally:
        fab("deploy", "--option", "reencrypt=false")  # options persist: set it back


@pytest.mark.disruptive
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
