"""Edge limits at HAProxy (issue 12): one client address that holds too many connections,
or sends too many requests, is cut short while another client is served.

The flooding client is this machine (through the site's address as the suite reaches it);
the other client is the topology's client machine, a different source address.
"""

from __future__ import annotations

import contextlib
import select
import shlex
import socket
import time
from collections.abc import Iterator

import pytest
import testinfra

from acceptance.conftest import TOPOLOGY, deploy_option, restore_option
from acceptance.site import SITE, SITE_CLIENT, request
from provision import secrets

CLIENT = TOPOLOGY.with_role("client")[0]


def _client_is_served(machines: dict[str, testinfra.host.Host]) -> str:
    """The status the client machine gets for /health (curl, the testbed CA trusted)."""
    client = machines[CLIENT.name]
    pem = secrets.site_ca_cert_path().read_text()
    client.check_output(f"printf %s {shlex.quote(pem)} > /tmp/testbed-ca.crt")
    return client.check_output(
        "curl -s -o /dev/null -w '%{http_code}' --max-time 10 --cacert /tmp/testbed-ca.crt "
        f"https://{SITE}/health"
    )


def _closed(socks: list[socket.socket]) -> list[int]:
    """The indexes of the sockets the server has closed (end of stream or a reset), all
    read at once: a TLS server says nothing before the client's hello, so an open one is
    not readable, and HAProxy closes an idle one after `timeout http-request` (5 s)."""
    readable, _, _ = select.select(socks, [], [], 0)
    return sorted(socks.index(s) for s in readable)


@contextlib.contextmanager
def _held(count: int) -> Iterator[list[socket.socket]]:
    """`count` TCP connections to the site's HTTPS port, opened one by one and held."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(
                socket.create_connection((SITE_CLIENT.entry.address, SITE_CLIENT.entry.https), 5)
            )
        time.sleep(1)  # every refusal has arrived
        yield socks
    finally:
        for s in socks:
            s.close()


def test_a_client_holding_too_many_connections_gets_no_more_while_another_is_served(
    machines: dict[str, testinfra.host.Host],
) -> None:
    limit = int(TOPOLOGY.option("edge_conns_per_client"))
    with _held(limit + 20) as socks:
        closed = _closed(socks)
        # The ones past the limit were closed as they arrived (which ones: the order they
        # reach HAProxy, which docker's port forward shuffles); the others are held. A
        # connection this machine still held from an earlier test counts too: at most a
        # few, closed by HAProxy's 10 s keep-alive time-out.
        assert 20 <= len(closed) <= 30, closed
        assert _client_is_served(machines) == "200"
    # Let go, this machine is served again.
    assert request("GET", "/health").status == 200


@pytest.fixture
def low_request_rate() -> Iterator[int]:
    rate = 40
    deploy_option("edge_requests_per_10s", rate)
    try:
        yield rate
    finally:
        restore_option("edge_requests_per_10s")


def test_a_client_sending_too_many_requests_gets_429_while_another_is_served(
    machines: dict[str, testinfra.host.Host], low_request_rate: int
) -> None:
    time.sleep(10)  # the earlier tests' requests from this machine leave the 10 s window
    statuses = [request("GET", "/health").status for _ in range(low_request_rate + 30)]
    assert set(statuses) == {200, 429}, statuses
    ok = statuses.count(200)
    assert low_request_rate - 5 <= ok <= low_request_rate, statuses
    assert statuses[-10:] == [429] * 10
    assert _client_is_served(machines) == "200"
