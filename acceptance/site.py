"""The site as the tests reach it: Vagrant's forwarded ports on 127.0.0.1, or the
inventory's `site` entry (provision/testkit.py does the talking; this module binds it to
the topology under test)."""

from __future__ import annotations

from acceptance.conftest import TOPOLOGY
from provision.testkit import JSON, Reply, Site, Writer, tls_context

SITE_CLIENT = Site.of(TOPOLOGY)
SITE = TOPOLOGY.site.name
LB = TOPOLOGY.with_role("lb")[0]

context = tls_context
tls_socket = SITE_CLIENT.tls_socket
request = SITE_CLIENT.request
plain_request = SITE_CLIENT.plain_request
raw_exchange = SITE_CLIENT.raw_exchange


def writer() -> Writer:
    """A writer loop through this site (call .start())."""
    return Writer(SITE_CLIENT)


__all__ = [
    "JSON",
    "LB",
    "SITE",
    "SITE_CLIENT",
    "Reply",
    "context",
    "plain_request",
    "raw_exchange",
    "request",
    "tls_socket",
    "writer",
]
