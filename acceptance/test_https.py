"""The site is served only over strong TLS, from the testbed CA, through the load balancer."""

from __future__ import annotations

import shlex
import ssl
import subprocess
import threading
import time

import pytest
import testinfra

from acceptance.conftest import TOPOLOGY
from acceptance.site import (
    SITE,
    SITE_CLIENT,
    context,
    plain_request,
    request,
    tls_socket,
)
from provision import secrets, testkit
from provision.site import authority as site_authority
from provision.testkit import fab

CLIENT = TOPOLOGY.with_role("client")[0].name


@pytest.mark.parametrize("name", TOPOLOGY.site.names)
def test_the_chain_verifies_against_the_site_ca_for_each_site_name(name: str) -> None:
    with tls_socket(name=name) as sock:
        cert = sock.getpeercert()
    issuer = dict(x[0] for x in cert["issuer"])
    assert issuer["commonName"] == "webinfra-testbed site CA"


FORGED_PORT = 4433


@pytest.mark.parametrize(
    ("name", "address", "trusted"),
    [
        ("www.example.org", "127.0.0.1", False),  # another site's name
        (TOPOLOGY.site.name, "203.0.113.7", False),  # the site's name, another address
        (TOPOLOGY.site.name, "127.0.0.1", True),  # the control: the same setup, allowed names
    ],
)
def test_the_site_ca_users_trust_cannot_vouch_for_another_site(
    machines: dict[str, testinfra.host.Host], name: str, address: str, trusted: bool
) -> None:
    """README tells users to trust the site CA system-wide. Even signed with its key (a
    thief's), a certificate for another name fails in curl: OpenSSL enforces the CA's name
    constraints. The server is `openssl s_server` on the client machine's loopback."""
    client = machines[CLIENT]
    authority = site_authority(TOPOLOGY)  # the deployed one: the topology's constraints
    forged = testkit.forged_certificate(authority, name, address)
    files = {"/tmp/site-ca.crt": authority.cert_pem, "/tmp/forged.pem": forged.bundle}
    for path, data in files.items():
        client.check_output(f"umask 077 && printf %s {shlex.quote(data.decode())} > {path}")
    server = (
        f"timeout 20 openssl s_server -quiet -www -accept 127.0.0.1:{FORGED_PORT} "
        "-cert /tmp/forged.pem >/dev/null 2>&1 &"
    )
    client.check_output(server)
    try:
        got = client.run(
            "for i in $(seq 50); do "
            f"  out=$(curl -sS --max-time 5 --cacert /tmp/site-ca.crt "
            f"        --resolve {name}:{FORGED_PORT}:127.0.0.1 https://{name}:{FORGED_PORT}/ 2>&1)"
            "  && { echo OK; exit 0; };"
            # Not listening yet: curl says "Connection refused", or (7) "Couldn't connect".
            '  case "$out" in *"Connection refused"*|*"(7) Failed to connect"*) sleep 0.1;; '
            '  *) echo "$out"; exit 1;; esac; '
            "done; echo 'no server'; exit 2"
        )
    finally:
        # Gone before the next case starts its own on the same port: a server still alive
        # would answer that case with this certificate.
        client.run(
            f"pkill -f 'openssl s_server.*:{FORGED_PORT}'; rm -f /tmp/forged.pem; "
            f"for i in $(seq 50); do pgrep -f 'openssl s_server.*:{FORGED_PORT}' >/dev/null "
            "|| break; sleep 0.1; done"
        )
    if trusted:
        assert got.rc == 0, got.stdout
    else:
        assert got.rc == 1 and "permitted subtree violation" in got.stdout, got.stdout


def test_the_site_certificate_lives_at_most_90_days() -> None:
    # Mozilla's intermediate profile allows 366 days; the testbed issues 90 and renews.
    with tls_socket() as sock:
        cert = sock.getpeercert()
    life = ssl.cert_time_to_seconds(cert["notAfter"]) - ssl.cert_time_to_seconds(cert["notBefore"])
    assert life <= 90 * 86400 + 300, f"{life / 86400:.1f} days"


def test_the_certificate_is_not_trusted_without_the_testbed_ca() -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_socket(ssl.create_default_context()).close()


def test_a_name_the_certificate_does_not_carry_fails_verification() -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_socket(name="www.example.org").close()


def _legacy(version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = context()
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer the old protocol
    ctx.minimum_version = version
    ctx.maximum_version = version
    return ctx


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["TLSv1.0", "TLSv1.1"]
)
def test_tls_1_0_and_1_1_are_refused_by_the_server(version: ssl.TLSVersion) -> None:
    with pytest.raises(ssl.SSLError) as refused:
        tls_socket(_legacy(version)).close()
    # The server's alert, not a client-side refusal to offer the protocol.
    assert "TLSV1_ALERT_PROTOCOL_VERSION" in str(refused.value)


@pytest.mark.parametrize(
    "version,name",
    [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")],
    ids=["TLSv1.2", "TLSv1.3"],
)
def test_tls_1_2_and_1_3_are_accepted(version: ssl.TLSVersion, name: str) -> None:
    ctx = context(minimum_version=version, maximum_version=version)
    with tls_socket(ctx) as sock:
        assert sock.version() == name


@pytest.mark.parametrize(
    "cipher", ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "AES128-GCM-SHA256"]
)
def test_a_weak_or_non_forward_secret_cipher_is_refused(cipher: str) -> None:
    ctx = context(maximum_version=ssl.TLSVersion.TLSv1_2)
    ctx.set_ciphers(cipher)
    with pytest.raises(ssl.SSLError, match="SSLV3_ALERT_HANDSHAKE_FAILURE"):
        tls_socket(ctx).close()


def test_a_strong_tls_1_2_cipher_is_accepted() -> None:
    ctx = context(maximum_version=ssl.TLSVersion.TLSv1_2)
    ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    with tls_socket(ctx) as sock:
        assert sock.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"


def test_hsts_is_sent_for_two_years() -> None:
    assert request("GET", "/").header("strict-transport-security") == "max-age=63072000"


@pytest.mark.parametrize(
    "path,host,status",
    [
        ("/", "evil.example", 421),
        ("/nope", None, 404),
        ("/api/notes?limit=1", None, 200),
        ("/", None, 200),
    ],  # fmt: skip
    ids=["haproxy-421", "app-404", "api", "page"],
)
def test_every_https_answer_carries_the_security_headers(
    path: str, host: str | None, status: int
) -> None:
    reply = SITE_CLIENT.request("GET", path, host=host)
    assert reply.status == status
    assert reply.header("strict-transport-security") == "max-age=63072000"
    assert reply.header("x-content-type-options") == "nosniff"
    assert reply.header("x-frame-options") == "DENY"
    policy = reply.header("content-security-policy")
    assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy, policy


# Mozilla intermediate's groups are X25519, prime256v1 and secp384r1; OpenSSL's default
# would add X448 and secp521r1. The client lists the group first, then P-256 (the site's
# ECDSA certificate needs P-256 in TLS 1.2), and the server follows the client's order:
# the key exchange uses the group exactly when the server accepts it.
GROUPS = {"X25519": ("X25519", True), "P-384": ("secp384r1", True)}
GROUPS |= {"X448": ("X448", False), "P-521": ("secp521r1", False)}


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_only_the_profiles_key_exchange_groups_are_accepted(group: str, version: str) -> None:
    name, accepted = GROUPS[group]
    entry = SITE_CLIENT.entry
    target = f"{entry.address}:{entry.https}"
    res = subprocess.run(
        ["openssl", "s_client", "-connect", target, "-servername", SITE]
        + ["-groups", f"{group}:P-256", version, "-brief"],
        input="",
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    said = res.stdout + res.stderr
    key = [line for line in said.splitlines() if "Temp Key:" in line]
    assert res.returncode == 0 and key, said[-400:]
    assert (name in key[0]) == accepted, key[0]


PATHS = ["/", "/api/notes?limit=5", "/does/not/exist", "/a%20b?q=%22x%22"]


@pytest.mark.parametrize("path", PATHS)
def test_http_answers_exactly_301_to_the_same_path_over_https(path: str) -> None:
    entry = SITE_CLIENT.entry
    reply = plain_request(path, host=f"{SITE}:{entry.http}")
    assert reply.status == 301
    if SITE_CLIENT.via_forward:  # the redirect names the https port forwarded here
        assert reply.header("location") == f"https://{SITE}:{entry.https}{path}"
    else:
        https = TOPOLOGY.port("site-https")
        suffix = "" if https == 443 else f":{https}"
        assert reply.header("location") == f"https://{SITE}{suffix}{path}"


@pytest.mark.parametrize("path", PATHS)
def test_http_on_the_public_network_redirects_to_the_site(
    machines: dict[str, testinfra.host.Host], path: str
) -> None:
    out = machines[CLIENT].check_output(
        f"curl -s -o /dev/null -w '%{{http_code}} %{{redirect_url}}' "
        f"http://{SITE}{shlex.quote(path)}"
    )
    assert out == f"301 https://{SITE}{path}"


def test_http_with_a_foreign_host_is_sent_to_the_site_not_to_that_host() -> None:
    reply = plain_request("/x", host="evil.example")
    assert reply.status == 301
    assert reply.header("location") == f"https://{SITE}/x"


@pytest.mark.usefixtures("synthetic_checks_paused")
def test_twenty_requests_alternate_between_the_web_servers() -> None:
    served = [request("GET", "/health").header("x-served-by") for _ in range(20)]
    webs = sorted(h.name for h in TOPOLOGY.with_role("web"))
    assert sorted(set(served)) == webs
    assert all(a != b for a, b in zip(served, served[1:], strict=False)), served


def test_the_client_reaches_the_site_over_the_public_network_with_the_ca(
    machines: dict[str, testinfra.host.Host],
) -> None:
    client = machines[CLIENT]
    pem = secrets.site_ca_cert_path().read_text()
    client.check_output(f"printf %s {shlex.quote(pem)} > /tmp/testbed-ca.crt")
    out = client.check_output(f"curl -s --cacert /tmp/testbed-ca.crt https://{SITE}/")
    assert "Served by" in out


def _hammer(stop: threading.Event, failures: list[str], count: list[int]) -> None:
    while not stop.is_set():
        try:
            status = request("GET", "/health").status
            if status != 200:
                failures.append(str(status))
        except Exception as exc:  # a dropped connection is exactly what must not happen
            failures.append(repr(exc))
        count[0] += 1


def _serial() -> int:
    with tls_socket() as sock:
        der = sock.getpeercert(binary_form=True)
    from cryptography import x509

    return int(x509.load_der_x509_certificate(der).serial_number)


def test_renewing_the_certificate_drops_no_request() -> None:
    before = _serial()
    stop, failures, count = threading.Event(), [], [0]
    worker = threading.Thread(target=_hammer, args=(stop, failures, count))
    worker.start()
    try:
        time.sleep(1)
        fab("tls.renew")
        time.sleep(2)
    finally:
        stop.set()
        worker.join()
    assert _serial() != before
    assert count[0] > 10
    assert failures == []
