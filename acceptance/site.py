"""Requests to the site through the load balancer, from the host over loopback only."""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass

from acceptance.conftest import TOPOLOGY
from provision import secrets

LB = TOPOLOGY.with_role("lb")[0]
HTTPS_PORT = LB.forward[443]
HTTP_PORT = LB.forward[80]
SITE = TOPOLOGY.site.name
LOOPBACK = "127.0.0.1"


def context(**kwargs: object) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(secrets.ca_cert_path()))
    for key, value in kwargs.items():
        setattr(ctx, key, value)
    return ctx


def tls_socket(ctx: ssl.SSLContext | None = None, name: str = SITE) -> ssl.SSLSocket:
    """A TLS connection to the load balancer's forwarded 443, with SNI `name`."""
    raw = socket.create_connection((LOOPBACK, HTTPS_PORT), timeout=10)
    try:
        return (ctx or context()).wrap_socket(raw, server_hostname=name)
    except Exception:
        raw.close()
        raise


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


class _Conn(http.client.HTTPSConnection):
    def connect(self) -> None:
        self.sock = tls_socket()


def request(
    method: str,
    path: str,
    body: bytes | str | None = None,
    headers: dict[str, str] | None = None,
    host: str = SITE,
) -> Reply:
    conn = _Conn(LOOPBACK, HTTPS_PORT, timeout=15)
    try:
        conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        res = conn.getresponse()
        return Reply(res.status, {k.lower(): v for k, v in res.getheaders()}, res.read())
    finally:
        conn.close()


def plain_request(path: str, host: str) -> Reply:
    conn = http.client.HTTPConnection(LOOPBACK, HTTP_PORT, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host})
        res = conn.getresponse()
        return Reply(res.status, {k.lower(): v for k, v in res.getheaders()}, res.read())
    finally:
        conn.close()


def raw_exchange(payload: bytes, read_timeout: float = 10) -> bytes:
    """Send raw bytes over TLS and return what the server answers before closing."""
    sock = tls_socket()
    try:
        sock.sendall(payload)
        sock.settimeout(read_timeout)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ssl.SSLError, ConnectionError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        sock.close()
