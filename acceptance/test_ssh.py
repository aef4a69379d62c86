"""sshd is hardened on every machine: keys only, one account, no root login, no forwarding,
as sshd itself reports and as a login attempt proves."""

from __future__ import annotations

import dataclasses
import io
import socket
from pathlib import Path

import paramiko
import pytest
import testinfra

from acceptance.conftest import HOST_NAMES, TOPOLOGY
from provision.engine import Remote
from provision.engine.remote import StepError
from provision.inventory import Endpoint

EFFECTIVE = {
    "passwordauthentication": "no",
    "kbdinteractiveauthentication": "no",
    "permitrootlogin": "no",
    "permitemptypasswords": "no",
    "pubkeyauthentication": "yes",
    "x11forwarding": "no",
    "allowagentforwarding": "no",
    "allowtcpforwarding": "no",
    "allowstreamlocalforwarding": "no",
    "permittunnel": "no",
    # lynis's SSH-7408 profile, where it costs nothing (docs/security.md, "Hosts")
    "clientalivecountmax": "2",
    "tcpkeepalive": "no",
    "compression": "no",
    "loglevel": "VERBOSE",
}
_EFFECTIVE_CACHE: dict[str, dict[str, str]] = {}


@pytest.mark.parametrize("name", HOST_NAMES)
@pytest.mark.parametrize("keyword,value", sorted(EFFECTIVE.items()))
def test_sshd_effective_setting(
    machines: dict[str, testinfra.host.Host], name: str, keyword: str, value: str
) -> None:
    if name not in _EFFECTIVE_CACHE:  # one `sshd -T` per host, not one per keyword
        out = machines[name].check_output("sshd -T")
        _EFFECTIVE_CACHE[name] = dict(line.split(" ", 1) for line in out.splitlines())
    assert _EFFECTIVE_CACHE[name][keyword] == value


@pytest.mark.parametrize("name", HOST_NAMES)
def test_sshd_lets_in_only_the_account_the_deploy_uses(
    machines: dict[str, testinfra.host.Host], endpoints: dict[str, Endpoint], name: str
) -> None:
    effective = [
        line.split(" ", 1)[1]
        for line in machines[name].check_output("sshd -T").splitlines()
        if line.startswith("allowusers ")
    ]
    assert effective == [endpoints[name].user]
    # No drop-in sorts before the project's own, so none can win a keyword over it.
    first = machines[name].check_output("ls /etc/ssh/sshd_config.d/ | sort | head -1")
    assert first == "00-webinfra-testbed.conf"


def _transport(ep: Endpoint) -> paramiko.Transport:
    # Only a testbed machine's own sshd is dialled: Vagrant's ssh-config, or the inventory.
    sock = socket.create_connection((ep.hostname, ep.port), timeout=10)
    transport = paramiko.Transport(sock)
    transport.start_client(timeout=10)
    return transport


@pytest.mark.parametrize("name", HOST_NAMES)
def test_sshd_offers_public_key_authentication_only(
    endpoints: dict[str, Endpoint], name: str
) -> None:
    transport = _transport(endpoints[name])
    try:
        with pytest.raises(paramiko.BadAuthenticationType) as refused:
            transport.auth_none(endpoints[name].user)
        assert refused.value.allowed_types == ["publickey"]
    finally:
        transport.close()


@pytest.mark.parametrize("name", HOST_NAMES)
def test_root_cannot_log_in_even_with_a_valid_key(
    machines: dict[str, testinfra.host.Host], endpoints: dict[str, Endpoint], name: str
) -> None:
    ep = endpoints[name]
    assert ep.key_file
    key = paramiko.RSAKey.from_private_key_file(ep.key_file)
    transport = _transport(ep)
    try:
        # The key logs in as the deploy's user...
        assert transport.auth_publickey(ep.user, key) == []
    finally:
        transport.close()
    # ...and, for this test only, root is given the same key: only PermitRootLogin (and
    # AllowUsers) can refuse it now.
    auth = "/root/.ssh/authorized_keys"
    saved = "/root/.ssh/authorized_keys.testbed-saved"
    machine = machines[name]
    public = f"{key.get_name()} {key.get_base64()} root-login-test"
    machine.check_output(
        f"install -d -m 700 /root/.ssh && {{ [ ! -e {auth} ] || cp -p {auth} {saved}; }} && "
        f"echo '{public}' >> {auth} && chmod 600 {auth}"
    )
    try:
        transport = _transport(ep)
        try:
            with pytest.raises(paramiko.AuthenticationException):
                transport.auth_publickey("root", key)
        finally:
            transport.close()
    finally:
        machine.check_output(f"if [ -e {saved} ]; then mv {saved} {auth}; else rm -f {auth}; fi")


def test_fabric_records_a_machines_host_key_then_refuses_any_other(
    endpoints: dict[str, Endpoint], tmp_path: Path
) -> None:
    """The deploy's SSH verifies host keys: a testbed machine's key is recorded at first
    contact and required after; an inventory's server must be known beforehand."""
    host = TOPOLOGY.with_role("lb")[0]
    known = tmp_path / "known_hosts"
    first = dataclasses.replace(endpoints[host.name], known_hosts=str(known), record_new_key=True)
    with Remote(host, first) as r:
        assert r.run("true").ok
    recorded = known.read_text().split()
    assert len(recorded) == 3 and recorded[1] in ("ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa")
    assert oct(known.stat().st_mode & 0o777) == "0o600"
    # Known now: connected and verified without a new record.
    strict = dataclasses.replace(first, record_new_key=False)
    with Remote(host, strict) as r:
        assert r.run("true").ok
    assert known.read_text().split() == recorded
    # Another key under the same name (a machine in the middle): refused, naming the host.
    other = paramiko.Ed25519Key.from_private_key(io.StringIO(_new_ed25519_pem()))
    known.write_text(f"{recorded[0]} ssh-ed25519 {other.get_base64()}\n")
    with pytest.raises(StepError, match=rf"^{host.name} .*presented the SSH host key"):
        Remote(host, strict).connect()
    # Not known at all, and not a testbed machine: refused, with how to check and add it.
    known.write_text("")
    with pytest.raises(StepError, match=rf"^{host.name} .*is not in {known}"):
        Remote(host, strict).connect()


def _new_ed25519_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return (
        ed25519.Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        .decode()
    )
